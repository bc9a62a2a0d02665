//! Reacts to failures: `CPOD_BASE_URL=… CPOD_API_KEY=… cargo run -p cpod-sdk --example subscriber`
use cpod_sdk::{CpodClient, Filter, StreamItem};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), cpod_sdk::Error> {
    let client = CpodClient::from_env()?; // CPOD_BASE_URL, CPOD_API_KEY
    // Reconnects by itself and resumes after the last event: no gap, no duplicate.
    let failures = Filter::new().types(["pod.failed", "job.failed"]);
    let mut stream = client.events().stream(failures);
    while let Some(item) = stream.next().await {
        match item? {
            StreamItem::Event(e) => println!("{} {} {:?}", e.event_type, e.resource_id, e.payload),
            StreamItem::Reset { .. } => eprintln!("resume point expired: re-read history"),
            _ => {} // reconnection notices
        }
    }
    Ok(())
}
