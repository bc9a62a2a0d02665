//! The servers under test: how to reach one (its [`Endpoint`]: where to publish, where to
//! subscribe, which credentials) and, for a server this tool started, its processes, whose CPU
//! time and resident memory the scenarios read from `/proc`.
//!
//! Two kinds: our broker (the release `cpod-events` next to this binary, on a fresh SQLite
//! database) and nchan (nginx with `libnginx-mod-nchan`, run by hand from the configuration
//! committed in `bench/peers/nchan.conf`). Nothing is installed here: a missing piece is named,
//! with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};

use super::{BrokerArgs, SpawnedBroker, create_key, spawn_broker};

/// The nchan configuration the comparison runs, as committed (its port is replaced by a free one).
const NCHAN_CONF: &str = include_str!("../peers/nchan.conf");
const NCHAN_PORT_IN_CONF: &str = "127.0.0.1:8090";
const NCHAN_INSTALL: &str = "apt-get install -y nginx-light libnginx-mod-nchan";

/// How a subscriber's WebSocket frames carry an event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum WsFraming {
    /// cPod: `{"op":"event","subscription":…,"event":{…}}`, after a `subscribe` frame.
    CpodEnvelope,
    /// nchan: the published body as it was posted.
    Raw,
}

/// Where and how to publish and subscribe on one server.
#[derive(Clone)]
pub struct Endpoint {
    pub name: &'static str,
    /// `host:port` on loopback.
    pub authority: String,
    pub publish_path: String,
    /// The `Authorization` header value for publishing, if the server wants one.
    pub publish_auth: Option<String>,
    pub sse_path: String,
    /// The type of the events published here (cPod's subscribers filter on it; nchan ignores it).
    pub event_type: String,
    pub ws_path: String,
    pub subscribe_auth: Option<String>,
    pub ws_framing: WsFraming,
}

impl Endpoint {
    /// Our broker at `base`: publishing with a service key, subscribing with a reader key.
    pub fn cpod(base: &str, service_key: &str, reader_key: &str) -> Endpoint {
        Endpoint {
            name: "cpod",
            authority: base.trim_start_matches("http://").to_owned(),
            publish_path: "/v1/events".into(),
            publish_auth: Some(format!("Bearer {service_key}")),
            sse_path: "/v1/events/stream?types=custom.bench".into(),
            event_type: "custom.bench".into(),
            ws_path: "/v1/events/ws".into(),
            subscribe_auth: Some(format!("Bearer {reader_key}")),
            ws_framing: WsFraming::CpodEnvelope,
        }
    }

    /// The same server with subscriptions on a channel of their own (nchan) or on one event
    /// type (cPod), so that scenarios run one after another never see each other's messages.
    pub fn channel(&self, channel: &str) -> Endpoint {
        let mut endpoint = self.clone();
        endpoint.event_type = format!("custom.{channel}");
        match self.ws_framing {
            WsFraming::CpodEnvelope => {
                endpoint.sse_path = format!("/v1/events/stream?types={}", endpoint.event_type);
            }
            WsFraming::Raw => {
                endpoint.publish_path = format!("/pub/{channel}");
                endpoint.sse_path = format!("/sub/{channel}");
                endpoint.ws_path = format!("/sub/{channel}");
            }
        }
        endpoint
    }

    /// The first WebSocket frame a subscriber sends, if the server needs one.
    pub fn ws_subscribe_frame(&self) -> Option<String> {
        match self.ws_framing {
            WsFraming::CpodEnvelope => Some(
                serde_json::json!({"op": "subscribe", "id": "b", "filter": {"types": [self.event_type]}})
                    .to_string(),
            ),
            WsFraming::Raw => None,
        }
    }
}

/// A server under test that this tool started; stopped when dropped.
pub struct Peer {
    pub endpoint: Endpoint,
    /// cPod only: a service key.
    pub service_key: Option<String>,
    /// The process whose descendants (nginx workers) are counted with it.
    root_pid: u32,
    _running: Running,
}

/// Held for its `Drop`, which stops the server.
enum Running {
    Cpod { _broker: SpawnedBroker },
    Nchan { _nginx: NginxGuard },
}

impl Peer {
    /// A fresh cPod broker with a service key (publisher) and a reader key (subscribers).
    pub async fn start_cpod(args: &BrokerArgs) -> anyhow::Result<Peer> {
        let (broker, base) = spawn_broker(args)?;
        let admin = super::ADMIN_KEY.to_owned();
        let service = create_key(&base, &admin, "service").await?;
        let reader = create_key(&base, &admin, "reader").await?;
        let root_pid = broker.child.id();
        Ok(Peer {
            endpoint: Endpoint::cpod(&base, &service, &reader),
            service_key: Some(service),
            root_pid,
            _running: Running::Cpod { _broker: broker },
        })
    }

    /// nginx + nchan on a free loopback port, from a temporary prefix directory.
    pub async fn start_nchan() -> anyhow::Result<Peer> {
        let (nginx, module) = nchan_installation()?;
        let prefix = tempfile::Builder::new()
            .prefix("cpod-bench-nchan-")
            .tempdir()?;
        for dir in ["conf", "logs", "temp", "modules"] {
            std::fs::create_dir_all(prefix.path().join(dir))?;
        }
        let port = free_port()?;
        let authority = format!("127.0.0.1:{port}");
        std::fs::write(
            prefix.path().join("conf/nginx.conf"),
            NCHAN_CONF.replace(NCHAN_PORT_IN_CONF, &authority),
        )?;
        std::os::unix::fs::symlink(&module, prefix.path().join("modules/ngx_nchan_module.so"))?;
        let prefix_arg = format!("{}/", prefix.path().display());
        let status = Command::new(&nginx)
            .args([
                "-p",
                &prefix_arg,
                "-c",
                "conf/nginx.conf",
                "-e",
                "logs/error.log",
            ])
            .status()
            .with_context(|| format!("cannot run {}", nginx.display()))?;
        if !status.success() {
            let log =
                std::fs::read_to_string(prefix.path().join("logs/error.log")).unwrap_or_default();
            bail!("nginx did not start ({status}): {log}");
        }
        let pid_file = prefix.path().join("logs/nginx.pid");
        let mut master = None;
        for _ in 0..100 {
            if let Ok(text) = std::fs::read_to_string(&pid_file)
                && let Ok(pid) = text.trim().parse::<u32>()
            {
                master = Some(pid);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let master = master.context("nginx wrote no pid file")?;
        let guard = NginxGuard {
            master,
            _prefix: prefix,
        };
        // Ready once a publish-side GET (channel info) answers.
        let url = format!("http://{authority}/nchan_status");
        let mut answered = false;
        for _ in 0..100 {
            if reqwest::get(&url)
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !answered {
            bail!("nginx started but {url} does not answer");
        }
        Ok(Peer {
            endpoint: Endpoint {
                name: "nchan",
                authority,
                publish_path: "/pub/bench".into(),
                publish_auth: None,
                sse_path: "/sub/bench".into(),
                event_type: "custom.bench".into(),
                ws_path: "/sub/bench".into(),
                subscribe_auth: None,
                ws_framing: WsFraming::Raw,
            },
            service_key: None,
            root_pid: master,
            _running: Running::Nchan { _nginx: guard },
        })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.endpoint.authority)
    }

    /// CPU seconds (user + system) used so far by the server's processes.
    pub fn cpu_seconds(&self) -> f64 {
        self.processes()
            .into_iter()
            .filter_map(super::cpu_seconds)
            .sum()
    }

    /// Resident memory of the server's processes, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.processes()
            .into_iter()
            .filter_map(super::rss_kib)
            .sum()
    }

    /// Descriptors open in the root process (all of our broker; nginx's master only) and its
    /// soft open-file limit, from `/proc`.
    pub fn open_files(&self) -> Option<(u64, u64)> {
        let open = std::fs::read_dir(format!("/proc/{}/fd", self.root_pid))
            .ok()?
            .count() as u64;
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.root_pid)).ok()?;
        Some((open, soft_open_file_limit(&limits)?))
    }

    /// The root process and, for nginx, its workers.
    fn processes(&self) -> Vec<u32> {
        let mut pids = vec![self.root_pid];
        if let Running::Nchan { .. } = self._running {
            pids.extend(children_of(self.root_pid));
        }
        pids
    }
}

struct NginxGuard {
    master: u32,
    _prefix: tempfile::TempDir,
}

impl Drop for NginxGuard {
    fn drop(&mut self) {
        // SIGTERM: fast shutdown of the master and its workers.
        unsafe { libc::kill(self.master as i32, libc::SIGTERM) };
        for _ in 0..100 {
            if !Path::new(&format!("/proc/{}", self.master)).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        unsafe { libc::kill(self.master as i32, libc::SIGKILL) };
    }
}

/// The nginx binary and the nchan module, or an error naming what to install.
pub fn nchan_installation() -> anyhow::Result<(PathBuf, PathBuf)> {
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let module = Command::new("dpkg")
        .args(["-L", "libnginx-mod-nchan"])
        .output()
        .ok()
        .and_then(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.ends_with("ngx_nchan_module.so"))
                .map(PathBuf::from)
        })
        .or_else(|| {
            let usual = PathBuf::from("/usr/lib/nginx/modules/ngx_nchan_module.so");
            usual.exists().then_some(usual)
        });
    match (nginx, module) {
        (Some(nginx), Some(module)) => Ok((nginx, module)),
        (None, _) => bail!("nginx is not installed; install the peer with: {NCHAN_INSTALL}"),
        (_, None) => bail!("the nchan module is not installed; install it with: {NCHAN_INSTALL}"),
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// The soft limit of `Max open files` in a `/proc/<pid>/limits`.
fn soft_open_file_limit(limits: &str) -> Option<u64> {
    limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Direct children of a process, from `/proc/*/stat`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                    fields.get(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_open_file_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             unlimited            unlimited            processes \n\
                      Max open files            20000                40000                files     \n";
        assert_eq!(soft_open_file_limit(limits), Some(20000));
        assert_eq!(
            soft_open_file_limit("Max open files  unlimited  unlimited  files"),
            None
        );
        let own = std::fs::read_to_string("/proc/self/limits").unwrap();
        assert!(soft_open_file_limit(&own).is_some_and(|l| l > 0));
    }
}
