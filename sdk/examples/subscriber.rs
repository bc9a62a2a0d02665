//! A service that reacts to failures: `CPOD_BASE_URL=… CPOD_API_KEY=… cargo run -p cpod-sdk --example subscriber`
use cpod_sdk::{CpodClient, Filter, StreamItem};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> Result<(), cpod_sdk::Error> {
    let client = CpodClient::from_env()?;
    // Reconnects by itself and resumes after the last event: no gap, no duplicate.
    let mut stream = client
        .events()
        .stream(Filter::new().types(["pod.failed", "job.failed"]));
    while let Some(item) = stream.next().await {
        match item? {
            StreamItem::Event(event) => println!(
                "{} {} {}",
                event.event_type,
                event.resource_id,
                serde_json::Value::Object(event.payload)
            ),
            StreamItem::Reset { .. } => eprintln!("resume point expired: re-read history"),
            _ => {}
        }
    }
    Ok(())
}
