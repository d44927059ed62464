//! `lbmesh phone-home`: the drop-in for the original phone-home container.
//! Registers a NodePort with the mesh every interval, fails over between
//! peers, follows a changing node IP, and withdraws on shutdown.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rand::Rng;
use serde_json::json;

use crate::client::causes;
use crate::registry::ServiceName;
use crate::registry::types::{parse_port, parse_server_ip};
use crate::secret::Token;

/// The original container's environment, plus peers to fail over between.
#[derive(Debug, Args)]
pub struct PhoneHomeArgs {
    /// What to do: `add` (register and keep renewing) or `delete` (withdraw once),
    /// as the original script's first argument.
    #[arg(default_value = "add", value_parser = ["add", "delete"])]
    pub action: String,
    /// The hook URL; several peers separated by commas.
    #[arg(long, env = "WEBHOOK", value_delimiter = ',', required = true)]
    pub webhook: Vec<String>,
    /// The API token.
    #[arg(long, env = "WEBHOOK_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the API token (e.g. a mounted Secret).
    #[arg(long, env = "WEBHOOK_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    #[arg(long, env = "FRONTEND_PORT")]
    pub frontend_port: String,
    /// The NodePort.
    #[arg(long, env = "BACKEND_PORT")]
    pub backend_port: String,
    #[arg(long, env = "NAME")]
    pub name: String,
    /// Seconds between registrations, or `once`.
    #[arg(long, env = "REPEAT_INTERVAL", default_value = "600")]
    pub repeat_interval: String,
    /// `send-proxy` to ask for the PROXY protocol.
    #[arg(long, env = "SEND_PROXY", default_value = "")]
    pub send_proxy: String,
    /// The node IP to announce.
    #[arg(long = "ip", env = "DST_IP")]
    pub ip: Option<String>,
    /// The name of an environment variable holding the node IP (e.g. filled
    /// by the Downward API from status.hostIP).
    #[arg(long = "ip-env", env = "DST_IP_ENV")]
    pub ip_env: Option<String>,
    /// A file holding the node IP, read again at every interval.
    #[arg(long = "ip-file", env = "DST_IP_FILE")]
    pub ip_file: Option<PathBuf>,
    /// A CA or certificate (PEM) to pin for HTTPS peers instead of the system roots.
    #[arg(long, env = "WEBHOOK_CA")]
    pub ca: Option<PathBuf>,
    /// The lease to ask for, in seconds [default: three intervals and a minute].
    #[arg(long, env = "LEASE")]
    pub lease: Option<u64>,
    /// Per-request timeout in seconds.
    #[arg(long, env = "WEBHOOK_TIMEOUT", default_value_t = 10)]
    pub timeout: u64,
}

/// Where the node IP comes from; evaluated at every interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpSource {
    Fixed(IpAddr),
    Env(String),
    File(PathBuf),
    /// Ask the peer which address the call comes from (`GET /v1/whoami`).
    Peer,
}

/// A validated phone-home configuration.
#[derive(Debug, Clone)]
pub struct PhoneHome {
    pub delete: bool,
    pub peers: Vec<reqwest::Url>,
    pub token: Token,
    pub frontend_port: u16,
    pub backend_port: u16,
    pub name: ServiceName,
    /// None: once.
    pub interval: Option<Duration>,
    pub send_proxy: bool,
    pub ip: IpSource,
    pub ca: Option<PathBuf>,
    pub lease: Option<Duration>,
    pub timeout: Duration,
}

impl PhoneHomeArgs {
    pub fn validate(self) -> anyhow::Result<PhoneHome> {
        let mut peers = Vec::new();
        for w in self
            .webhook
            .iter()
            .map(|w| w.trim())
            .filter(|w| !w.is_empty())
        {
            let url =
                reqwest::Url::parse(w).with_context(|| format!("WEBHOOK: {w:?} is not a URL"))?;
            anyhow::ensure!(
                matches!(url.scheme(), "http" | "https") && url.host().is_some(),
                "WEBHOOK: {w:?} must be an http:// or https:// URL"
            );
            peers.push(url);
        }
        anyhow::ensure!(!peers.is_empty(), "WEBHOOK: give at least one peer URL");
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) if !t.trim().is_empty() => {
                Token::parse(t).map_err(|e| anyhow::anyhow!("WEBHOOK_TOKEN: {e}"))?
            }
            (_, Some(f)) => Token::load(f)?,
            _ => anyhow::bail!("give the token in WEBHOOK_TOKEN or WEBHOOK_TOKEN_FILE"),
        };
        let frontend_port = parse_port("FRONTEND_PORT", &self.frontend_port)?;
        let backend_port = parse_port("BACKEND_PORT", &self.backend_port)?;
        let name = ServiceName::parse_field("NAME", &self.name)?;
        let interval = match self.repeat_interval.trim() {
            "once" => None,
            s => {
                let secs: u64 = s
                    .parse()
                    .ok()
                    .filter(|n| (1..=86_400).contains(n))
                    .with_context(|| {
                        format!("REPEAT_INTERVAL: {s:?} must be seconds from 1 to 86400, or once")
                    })?;
                Some(Duration::from_secs(secs))
            }
        };
        let send_proxy = crate::api::input::parse_send_proxy("SEND_PROXY", &self.send_proxy)?;
        let ip = match (
            self.ip.as_deref().map(str::trim).filter(|s| !s.is_empty()),
            self.ip_env,
            self.ip_file,
        ) {
            (Some(ip), _, _) => IpSource::Fixed(parse_server_ip("DST_IP", ip)?),
            (None, Some(var), _) if !var.is_empty() => IpSource::Env(var),
            (None, _, Some(file)) => IpSource::File(file),
            _ => IpSource::Peer,
        };
        let lease = match (self.lease, interval) {
            (Some(s), _) => Some(Duration::from_secs(s)),
            // A few intervals: one lost call must not drop the server.
            (None, Some(i)) => Some(i * 3 + Duration::from_secs(60)),
            (None, None) => None,
        };
        anyhow::ensure!(
            (1..=300).contains(&self.timeout),
            "WEBHOOK_TIMEOUT must be from 1 to 300 seconds"
        );
        Ok(PhoneHome {
            delete: self.action == "delete",
            peers,
            token,
            frontend_port,
            backend_port,
            name,
            interval,
            send_proxy,
            ip,
            ca: self.ca,
            lease,
            timeout: Duration::from_secs(self.timeout),
        })
    }
}

/// Why one call to one peer failed, and whether another peer could do better.
#[derive(Debug)]
enum CallError {
    /// Connection refused, timeout, 5xx: try the next peer.
    Peer(String),
    /// 4xx: the request itself is wrong; every peer would say the same.
    Request(String),
}

/// The peer's base URL (scheme, host, port) for `/v1/whoami`.
fn base(url: &reqwest::Url) -> String {
    let mut b = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(p) = url.port() {
        b.push_str(&format!(":{p}"));
    }
    b
}

pub struct Client {
    cfg: PhoneHome,
    http: reqwest::Client,
    /// The peer that answered last; tried first next time.
    preferred: usize,
}

impl Client {
    pub fn new(cfg: PhoneHome) -> anyhow::Result<Client> {
        let b = crate::client::http(cfg.ca.as_deref(), cfg.timeout)
            .map_err(|e| anyhow::anyhow!("WEBHOOK_CA: {e}"))?;
        Ok(Client {
            cfg,
            http: b.build().context("HTTP client")?,
            preferred: 0,
        })
    }

    async fn resolve_ip(&self, peer: &reqwest::Url) -> Result<IpAddr, CallError> {
        let raw = match &self.cfg.ip {
            IpSource::Fixed(ip) => return Ok(*ip),
            IpSource::Env(var) => std::env::var(var)
                .map_err(|_| CallError::Request(format!("{var} (DST_IP_ENV) is not set")))?,
            IpSource::File(f) => std::fs::read_to_string(f)
                .map_err(|e| CallError::Request(format!("DST_IP_FILE {}: {e}", f.display())))?,
            IpSource::Peer => {
                let url = format!("{}/v1/whoami", base(peer));
                let resp = self
                    .http
                    .get(&url)
                    .send()
                    .await
                    .map_err(|e| CallError::Peer(format!("{url}: {}", causes(&e))))?;
                if !resp.status().is_success() {
                    return Err(CallError::Peer(format!("{url}: {}", resp.status())));
                }
                let v: serde_json::Value = resp
                    .json()
                    .await
                    .map_err(|e| CallError::Peer(format!("{url}: {}", causes(&e))))?;
                v["ip"].as_str().unwrap_or("").to_owned()
            }
        };
        parse_server_ip("node IP", raw.trim()).map_err(|e| CallError::Request(e.to_string()))
    }

    async fn call(
        &self,
        peer: &reqwest::Url,
        action: &str,
        ip: IpAddr,
    ) -> Result<serde_json::Value, CallError> {
        let mut body = json!({
            "name": self.cfg.name.as_str(),
            "frontend-port": self.cfg.frontend_port.to_string(),
            "backend-port": self.cfg.backend_port.to_string(),
            "dst-ip": ip.to_string(),
            "action": action,
            "send-proxy": if self.cfg.send_proxy { "send-proxy" } else { "" },
        });
        if action == "add" {
            if let Some(l) = self.cfg.lease {
                body["ttl"] = json!(l.as_secs().to_string());
            }
        }
        let resp = self
            .http
            .post(peer.clone())
            .header("X-Funkypenguin-Token", self.cfg.token.expose())
            .json(&body)
            .send()
            .await
            .map_err(|e| CallError::Peer(format!("{peer}: {}", causes(&e))))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|_| {
                CallError::Peer(format!(
                    "{peer}: answered {status} but not lbmesh's JSON: {text:.200}"
                ))
            });
        }
        let msg = format!("{peer}: {status}: {}", text.trim());
        if status.is_client_error()
            && status != reqwest::StatusCode::REQUEST_TIMEOUT
            && status != reqwest::StatusCode::TOO_MANY_REQUESTS
        {
            Err(CallError::Request(msg))
        } else {
            Err(CallError::Peer(msg))
        }
    }

    /// One action at the first peer that can take it. Returns the IP used.
    async fn at_any_peer(&mut self, action: &str, ip: Option<IpAddr>) -> anyhow::Result<IpAddr> {
        let n = self.cfg.peers.len();
        let mut failures = Vec::new();
        for k in 0..n {
            let i = (self.preferred + k) % n;
            let peer = self.cfg.peers[i].clone();
            let ip = match ip {
                Some(ip) => ip,
                None => match self.resolve_ip(&peer).await {
                    Ok(ip) => ip,
                    Err(CallError::Request(e)) => anyhow::bail!("{e}"),
                    Err(CallError::Peer(e)) => {
                        tracing::warn!(error = %e, "peer failed; trying the next");
                        failures.push(e);
                        continue;
                    }
                },
            };
            match self.call(&peer, action, ip).await {
                Ok(v) => {
                    self.preferred = i;
                    tracing::info!(
                        peer = %base(&peer),
                        result = %v["result"].as_str().unwrap_or("?"),
                        frontend = self.cfg.frontend_port,
                        server = %format!("{ip}:{}", self.cfg.backend_port),
                        lease_seconds = v["lease_seconds"].as_u64(),
                        "{action}"
                    );
                    return Ok(ip);
                }
                Err(CallError::Request(e)) => anyhow::bail!("{e}"),
                Err(CallError::Peer(e)) => {
                    tracing::warn!(error = %e, "peer failed; trying the next");
                    failures.push(e);
                }
            }
        }
        anyhow::bail!("no peer took the call: {}", failures.join("; "))
    }

    /// Runs until `stop` resolves (or once). Exit status: Ok when the last
    /// action succeeded.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        if self.cfg.delete {
            let ip = self.fixed_ip().await?;
            self.at_any_peer("delete", ip).await?;
            return Ok(());
        }
        tokio::pin!(stop);
        let mut registered: Option<IpAddr> = None;
        let mut failures = 0u32;
        loop {
            let wait = match self.at_any_peer("add", None).await {
                Ok(ip) => {
                    failures = 0;
                    if let Some(old) = registered.filter(|old| *old != ip) {
                        tracing::info!(%old, new = %ip, "node IP changed; withdrawing the old server");
                        if let Err(e) = self.at_any_peer("delete", Some(old)).await {
                            tracing::warn!(error = %e, "could not withdraw the old server; its lease will end it");
                        }
                    }
                    registered = Some(ip);
                    let Some(interval) = self.cfg.interval else {
                        return Ok(());
                    };
                    interval
                }
                Err(e) => {
                    tracing::error!(error = %e, "registration failed");
                    let Some(interval) = self.cfg.interval else {
                        return Err(e);
                    };
                    failures += 1;
                    backoff(failures, interval)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => break,
            }
        }
        if let Some(ip) = registered {
            tracing::info!("shutting down; withdrawing the registration");
            self.at_any_peer("delete", Some(ip)).await?;
        }
        Ok(())
    }

    async fn fixed_ip(&self) -> anyhow::Result<Option<IpAddr>> {
        Ok(match self.cfg.ip {
            IpSource::Peer => None,
            _ => Some(
                self.resolve_ip(&self.cfg.peers[0])
                    .await
                    .map_err(|e| match e {
                        CallError::Peer(s) | CallError::Request(s) => anyhow::anyhow!(s),
                    })?,
            ),
        })
    }
}

/// Exponential backoff with ±20 % jitter, never longer than the interval.
fn backoff(failures: u32, interval: Duration) -> Duration {
    let base = Duration::from_secs(1 << failures.min(8)).min(interval);
    let jitter = rand::rng().random_range(0.8..1.2);
    base.mul_f64(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: PhoneHomeArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<PhoneHome> {
        T::try_parse_from(std::iter::once("x").chain(args.iter().copied()))?
            .a
            .validate()
    }

    #[test]
    fn validation() {
        let ok = parse(&[
            "--webhook", "http://198.18.0.11:9000/hooks/update-haproxy,https://lb2.example.com:9000/hooks/update-haproxy",
            "--token", "0123456789abcdef0123", "--frontend-port", "443", "--backend-port", "30443",
            "--name", "traefik", "--repeat-interval", "600", "--send-proxy", "send-proxy",
        ])
        .unwrap();
        assert_eq!(ok.peers.len(), 2);
        assert_eq!(ok.lease, Some(Duration::from_secs(1860)));
        assert!(ok.send_proxy);
        assert_eq!(ok.ip, IpSource::Peer);
        let once = parse(&[
            "--webhook",
            "http://x/hooks/update-haproxy",
            "--token",
            "0123456789abcdef0123",
            "--frontend-port",
            "443",
            "--backend-port",
            "30443",
            "--name",
            "t",
            "--repeat-interval",
            "once",
            "--ip-env",
            "NODE_IP",
        ])
        .unwrap();
        assert_eq!(once.interval, None);
        assert_eq!(once.ip, IpSource::Env("NODE_IP".into()));
        for (bad, needle) in [
            (
                vec![
                    "--webhook",
                    "ftp://x",
                    "--token",
                    "0123456789abcdef0123",
                    "--frontend-port",
                    "1",
                    "--backend-port",
                    "1",
                    "--name",
                    "n",
                ],
                "WEBHOOK",
            ),
            (
                vec![
                    "--webhook",
                    "http://x",
                    "--frontend-port",
                    "1",
                    "--backend-port",
                    "1",
                    "--name",
                    "n",
                ],
                "token",
            ),
            (
                vec![
                    "--webhook",
                    "http://x",
                    "--token",
                    "0123456789abcdef0123",
                    "--frontend-port",
                    "0",
                    "--backend-port",
                    "1",
                    "--name",
                    "n",
                ],
                "FRONTEND_PORT",
            ),
            (
                vec![
                    "--webhook",
                    "http://x",
                    "--token",
                    "0123456789abcdef0123",
                    "--frontend-port",
                    "1",
                    "--backend-port",
                    "1",
                    "--name",
                    "n;x",
                ],
                "NAME",
            ),
            (
                vec![
                    "--webhook",
                    "http://x",
                    "--token",
                    "0123456789abcdef0123",
                    "--frontend-port",
                    "1",
                    "--backend-port",
                    "1",
                    "--name",
                    "n",
                    "--repeat-interval",
                    "soon",
                ],
                "REPEAT_INTERVAL",
            ),
            (
                vec![
                    "--webhook",
                    "http://x",
                    "--token",
                    "0123456789abcdef0123",
                    "--frontend-port",
                    "1",
                    "--backend-port",
                    "1",
                    "--name",
                    "n",
                    "--ip",
                    "999.1.1.1",
                ],
                "DST_IP",
            ),
        ] {
            let err = parse(&bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

    #[test]
    fn backoff_grows_but_never_past_the_interval() {
        let i = Duration::from_secs(30);
        assert!(backoff(1, i) <= Duration::from_millis(2_400));
        assert!(backoff(10, i) <= Duration::from_secs(36));
        assert!(backoff(10, i) >= Duration::from_secs(24));
    }
}
