//! Helpers for tests that run the real `lbmesh` binary with a real HAProxy:
//! daemons in temp dirs on free loopback ports, TCP backends, the original curl.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_lbmesh");

/// The `lbmesh` binary under test.
pub fn bin() -> &'static Path {
    Path::new(BIN)
}

/// A loopback address of this test's own: tests run in parallel, and a
/// port picked as free on a shared address can be taken by another test
/// before its daemon binds it. The test process id and a counter make the
/// address unique (127.64.0.0/10 is loopback too).
pub fn test_ip() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "127.{}.{}.{}",
        64 + ((pid >> 8) % 64),
        pid % 256,
        1 + n % 250
    )
}

/// TCP ports this test process has handed out: a port found free is closed
/// again before it is used, so the kernel may pick it for the next socket
/// bound to port 0 (a frontend port and a backend's port that coincide make
/// a forwarding loop, which lbmesh rightly refuses).
fn handed_out() -> std::sync::MutexGuard<'static, std::collections::HashSet<u16>> {
    static PORTS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u16>>> =
        std::sync::OnceLock::new();
    PORTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Binds `addr` (port 0: any port this process has not handed out yet,
/// over TCP or UDP: lbmesh's loop guard counts its gossip port too).
fn bind_unique(addr: SocketAddr) -> TcpListener {
    // Ports turned down stay bound until one is found, so each try differs.
    let mut turned_down = Vec::new();
    loop {
        let listener = TcpListener::bind(addr).unwrap();
        let port = listener.local_addr().unwrap().port();
        if addr.port() != 0 || handed_out().insert(port) {
            return listener;
        }
        turned_down.push(listener);
    }
}

/// A port nobody listens on right now, and not handed out before by this
/// process.
pub fn free_port(ip: &str) -> u16 {
    bind_unique(SocketAddr::new(ip.parse().unwrap(), 0))
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port nobody uses right now (for gossip).
pub fn free_udp_port(ip: &str) -> u16 {
    let mut turned_down = Vec::new();
    loop {
        let socket = std::net::UdpSocket::bind((ip, 0)).unwrap();
        let port = socket.local_addr().unwrap().port();
        if handed_out().insert(port) {
            return port;
        }
        turned_down.push(socket);
    }
}

/// Calls `f` every `every` until it returns `Ok`; after `within`, its last
/// `Err`.
pub fn poll<T, E>(
    within: Duration,
    every: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    let start = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(last) if start.elapsed() >= within => return Err(last),
            Err(_) => std::thread::sleep(every),
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
#[track_caller]
pub fn eventually<T>(timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_every(timeout, Duration::from_millis(50), what, f)
}

/// [`eventually`], polling every `every`.
#[track_caller]
pub fn eventually_every<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    match poll(timeout, every, || f().ok_or(())) {
        Ok(v) => v,
        Err(()) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `f` every `every` until it returns `Ok`, or panics with `what` and
/// the last error after `timeout`.
#[track_caller]
pub fn eventually_ok<T>(
    timeout: Duration,
    every: Duration,
    what: &str,
    f: impl FnMut() -> Result<T, String>,
) -> T {
    match poll(timeout, every, f) {
        Ok(v) => v,
        Err(last) => panic!("timed out after {timeout:?} waiting for {what}; last:\n{last}"),
    }
}

/// Polls `f` every `every` on tokio's clock (paused or not) until it holds,
/// or panics with `what` after `within`.
pub async fn until(within: Duration, every: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(every).await;
    }
}

/// The registry key of `server` ("ip:port") on `frontend`.
pub fn key(frontend: u16, server: &str) -> lbmesh::registry::Key {
    lbmesh::registry::Key {
        frontend,
        server: server.parse().unwrap(),
    }
}

/// Whether in-process peer `i` serves `server` ("ip:port") on `frontend`.
pub fn serves(c: &lbmesh::mesh::cluster::Cluster, i: usize, frontend: u16, server: &str) -> bool {
    c.nodes[i]
        .view()
        .frontends
        .get(&frontend)
        .is_some_and(|f| f.servers.contains_key(&key(frontend, server).server))
}

/// A child process of a test, killed and reaped when dropped, also when the
/// test fails.
pub struct Reaped(pub Child);

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An HAProxy we start ourselves with `cfg`, standing in for a systemd
/// service; returned once its runtime socket `runtime` exists.
pub fn service_haproxy(cfg: &Path, runtime: &Path) -> Reaped {
    let service = Reaped(
        Command::new("haproxy")
            .args(["-W", "-db", "-f"])
            .arg(cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    eventually(
        Duration::from_secs(5),
        "the service's runtime socket",
        || runtime.exists().then_some(()),
    );
    service
}

/// One `lbmesh serve` process with its own data dir, killed (with its
/// HAProxy) when dropped, even if the test fails.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub token_file: PathBuf,
    pub data_dir: PathBuf,
    pub api: SocketAddr,
    pub gossip: SocketAddr,
    pub ip: String,
    pub token: String,
    pub config: String,
    pub extra_args: Vec<String>,
    /// Extra environment of the process (e.g. `LBMESH_LOG_FORMAT`).
    pub env: Vec<(String, String)>,
    /// "http" or "https".
    pub scheme: String,
    child: Option<Child>,
}

pub struct DaemonOpts {
    /// The loopback address this peer uses for API, gossip and frontends.
    pub ip: String,
    /// Extra TOML appended to the config file.
    pub toml: String,
    pub node_id: String,
    pub extra_args: Vec<String>,
    pub scheme: &'static str,
    /// Gossip port (a free one if None).
    pub gossip_port: Option<u16>,
    /// Peers to join.
    pub seeds: Vec<SocketAddr>,
    /// A token file shared with other peers (each peer generates its own if None).
    pub token_file: Option<PathBuf>,
    /// Keys of the `[mesh]` table.
    pub mesh: String,
    /// Extra environment of the process; `LBMESH_LOG` here replaces the default.
    pub env: Vec<(String, String)>,
    /// The data directory (a fresh one in the test's temp dir if None).
    pub data_dir: Option<PathBuf>,
}

impl Default for DaemonOpts {
    fn default() -> Self {
        Self {
            ip: test_ip(),
            toml: String::new(),
            node_id: "lb1".into(),
            extra_args: Vec::new(),
            scheme: "http",
            gossip_port: None,
            seeds: Vec::new(),
            token_file: None,
            mesh: String::new(),
            env: Vec::new(),
            data_dir: None,
        }
    }
}

/// A cluster CA made with `lbmesh ca init` in `dir`, and a certificate for
/// `node` from `lbmesh ca issue`; returns the `[mesh]` keys that use them.
pub fn issue_peer_cert(dir: &Path, node: &str) -> String {
    let ca = dir.join("ca");
    if !ca.join("ca.crt").exists() {
        sh(&format!("{BIN} ca init --dir {}", ca.display()), &[]);
    }
    sh(
        &format!("{BIN} ca issue --dir {} --node-id {node}", ca.display()),
        &[],
    );
    format!(
        "ca-cert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"",
        ca.join("ca.crt").display(),
        ca.join(format!("{node}.crt")).display(),
        ca.join(format!("{node}.key")).display()
    )
}

/// Fast health checks and short minimum leases, so tests finish quickly;
/// `registry` and `haproxy` are extra keys for those tables.
pub fn fast_toml(registry: &str, haproxy: &str) -> String {
    format!(
        "[registry]\nmin-ttl = \"1s\"\n\
         allowed-backends = [\"0.0.0.0/0\", \"::/0\", \"127.0.0.0/8\"]\n{registry}\n\
         [haproxy]\ncheck-interval = \"300ms\"\ncheck-fall = 2\ncheck-rise = 1\n\
         min-reload-interval = \"100ms\"\nhard-stop-after = \"5s\"\n{haproxy}\n"
    )
}

impl Daemon {
    /// The ports of the frontends this peer serves (`GET /v1/frontends`).
    pub fn frontend_ports(&self) -> Vec<u64> {
        self.get("/v1/frontends").1["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["port"].as_u64().unwrap())
            .collect()
    }

    /// Starts a daemon and waits until it is healthy.
    pub fn start(opts: DaemonOpts) -> Daemon {
        let d = Self::launch(opts);
        d.wait_healthy();
        d
    }

    /// Starts a daemon without waiting for its health: peers of a mesh
    /// start together, since a peer with seeds is healthy only once it has
    /// caught up with them.
    pub fn launch(opts: DaemonOpts) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let api: SocketAddr = format!("{}:{}", opts.ip, free_port(&opts.ip))
            .parse()
            .unwrap();
        let gossip_port = opts.gossip_port.unwrap_or_else(|| free_udp_port(&opts.ip));
        let gossip: SocketAddr = format!("{}:{gossip_port}", opts.ip).parse().unwrap();
        let seeds: Vec<String> = opts.seeds.iter().map(|s| format!("\"{s}\"")).collect();
        let token_file = opts
            .token_file
            .clone()
            .unwrap_or_else(|| data_dir.join("token"));
        let config = format!(
            "node-id = \"{}\"\napi-listen = \"{api}\"\ngossip-listen = \"{gossip}\"\nbind-address = \"{}\"\ndata-dir = \"{}\"\ntoken-file = \"{}\"\nseeds = [{}]\n{}",
            opts.node_id,
            opts.ip,
            data_dir.display(),
            token_file.display(),
            seeds.join(", "),
            if opts.toml.is_empty() {
                fast_toml("", "")
            } else {
                opts.toml
            }
        );
        let config = if opts.mesh.is_empty() {
            config
        } else {
            format!("{config}\n[mesh]\n{}\n", opts.mesh)
        };
        std::fs::write(dir.path().join("lbmesh.toml"), &config).unwrap();
        let mut d = Daemon {
            dir,
            token_file,
            data_dir,
            api,
            gossip,
            ip: opts.ip,
            token: String::new(),
            config,
            extra_args: opts.extra_args,
            env: opts.env,
            scheme: opts.scheme.into(),
            child: None,
        };
        d.spawn_process();
        d
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("lbmesh.toml")
    }

    /// Starts the process (again) and waits until it is healthy.
    pub fn spawn(&mut self) {
        self.spawn_process();
        self.wait_healthy();
    }

    /// Starts the process (again) and waits only for its token file.
    pub fn spawn_process(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("lbmesh.log"))
            .unwrap();
        let child = Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .args(&self.extra_args)
            .env("LBMESH_LOG", "info,lbmesh=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn lbmesh");
        self.child = Some(child);
        let token_file = self.token_file.clone();
        self.token = eventually(Duration::from_secs(10), "the token file", || {
            std::fs::read_to_string(&token_file)
                .ok()
                .map(|t| t.trim().to_owned())
        });
    }

    pub fn wait_healthy(&self) {
        eventually(Duration::from_secs(20), "lbmesh to be healthy", || {
            if let Some(code) = self.exit_code() {
                panic!("lbmesh exited with {code:?}; log:\n{}", self.log());
            }
            (self.get("/healthz").0 == 200).then_some(())
        });
    }

    pub fn exit_code(&self) -> Option<std::process::ExitStatus> {
        // try_wait needs &mut; a clone of the pid check is enough here.
        let pid = self.child.as_ref()?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok();
        match stat {
            None => Some(std::process::ExitStatus::default()),
            Some(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                Some(std::process::ExitStatus::default())
            }
            Some(_) => None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lbmesh.log")).unwrap_or_default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.api, path)
    }

    /// GET with the token; returns (status, JSON or Null).
    pub fn get(&self, path: &str) -> (u16, Value) {
        http("GET", &self.url(path), Some(&self.token), None, None)
    }

    /// Waits until HAProxy runs what the registry asks for, with no change
    /// waiting for its turn to reload, and returns the status.
    pub fn in_step(&self) -> Value {
        eventually(
            Duration::from_secs(20),
            "HAProxy in step with the registry",
            || {
                let s = self.status();
                let waiting = s["haproxy"]["deferred"]
                    .as_object()
                    .is_some_and(|d| !d.is_empty());
                (s["haproxy"]["in_step"] == true && !waiting).then_some(s)
            },
        )
    }

    /// The Prometheus text of `/metrics`.
    pub fn metrics(&self) -> String {
        let out = std::process::Command::new("curl")
            .args(["-sk", "-m", "10", &self.url("/metrics")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self) -> Value {
        let (code, v) = self.get("/v1/status");
        assert_eq!(code, 200, "{v}");
        v
    }

    /// Registers through the original hook with a JSON body.
    pub fn hook(&self, body: &Value, query: &str) -> (u16, Value) {
        http(
            "POST",
            &self.url(&format!("/hooks/update-haproxy{query}")),
            Some(&self.token),
            Some("application/json"),
            Some(body.to_string().into_bytes()),
        )
    }

    pub fn add(&self, name: &str, frontend: u16, backend: SocketAddr) -> Value {
        let (code, v) = self.hook(
            &serde_json::json!({
                "name": name, "frontend-port": frontend.to_string(),
                "backend-port": backend.port().to_string(), "dst-ip": backend.ip().to_string(),
                "action": "add", "send-proxy": ""
            }),
            "?wait=applied",
        );
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["applied"], true, "{v}");
        v
    }

    pub fn delete(&self, name: &str, frontend: u16, backend: SocketAddr) -> Value {
        let (code, v) = self.hook(
            &serde_json::json!({
                "name": name, "frontend-port": frontend.to_string(),
                "backend-port": backend.port().to_string(), "dst-ip": backend.ip().to_string(),
                "action": "delete"
            }),
            "?wait=applied",
        );
        assert_eq!(code, 200, "{v}");
        v
    }

    pub fn haproxy_config(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("haproxy.cfg")).unwrap_or_default()
    }

    pub fn haproxy_master_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir.join("haproxy.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn frontend(&self, port: u16) -> SocketAddr {
        format!("{}:{port}", self.ip).parse().unwrap()
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "lbmesh did not stop within 20 s after SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `within` for the process to exit on its own.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGKILL, like a crash; HAProxy is left running (as it would be).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // Whatever happened, no HAProxy of this test outlives it.
        if let Some(pid) = self.haproxy_master_pid() {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&*self.data_dir.to_string_lossy()) {
                signal(pid, "KILL");
            }
        }
        if std::thread::panicking() || std::env::var_os("LBMESH_TEST_LOGS").is_some() {
            eprintln!("---- lbmesh log ({}) ----\n{}", self.api, self.log());
        }
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

/// A minimal HTTP/1.1 client over a plain socket, so tests see exactly what
/// is on the wire. Returns (status, JSON body or Null).
pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    if url.starts_with("https://") {
        return https_via_curl(method, url, token, content_type, body);
    }
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut s = match TcpStream::connect(host) {
        Ok(s) => s,
        Err(_) => return (0, Value::Null),
    };
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let body = body.unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        req.push_str(&format!("X-Funkypenguin-Token: {t}\r\n"));
    }
    if let Some(ct) = content_type {
        req.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&body);
    if s.write_all(&bytes).is_err() {
        return (0, Value::Null);
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n");
    let (head, body) = match split {
        Some(i) => (String::from_utf8_lossy(&resp[..i]), &resp[i + 4..]),
        None => (text, &resp[resp.len()..]),
    };
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    let body = if chunked {
        dechunk(body).expect("a well-formed chunked body")
    } else {
        body.to_vec()
    };
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (code, json)
}

/// The payload of an HTTP/1.1 chunked body (a large `/v1/frontends` is
/// streamed); `None` if it is cut short or malformed.
pub fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        let rest = &body[eol + 2..];
        out.extend_from_slice(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

/// HTTPS through curl (certificate checks off: tests pin certificates
/// explicitly where that is what they test).
fn https_via_curl(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sk", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("X-Funkypenguin-Token: {t}")]);
    }
    if let Some(ct) = content_type {
        cmd.args(["-H", &format!("Content-Type: {ct}")]);
    }
    if let Some(b) = body {
        cmd.args(["--data-binary", &String::from_utf8_lossy(&b)]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// A TCP backend that greets every connection with its name and counts them:
/// a stand-in for a Kubernetes NodePort.
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub hits: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    pub fn start(name: &str) -> Backend {
        Self::start_on("127.0.0.1", name)
    }

    pub fn start_on(ip: &str, name: &str) -> Backend {
        Self::start_at(format!("{ip}:0").parse().unwrap(), name)
    }

    /// A backend at exactly `addr` (port 0 picks one).
    pub fn start_at(addr: SocketAddr, name: &str) -> Backend {
        let listener = bind_unique(addr);
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st, n) = (hits.clone(), stop.clone(), name.to_owned());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        h.fetch_add(1, Ordering::Relaxed);
                        let _ = conn.write_all(format!("{n}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            hits,
            stop,
        }
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Connects to `frontend` from source address `from` and returns the
/// backend's greeting, or None if nothing answered.
pub fn greeting_from(from: &str, frontend: SocketAddr) -> Option<String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    socket
        .bind(&SocketAddr::new(from.parse().ok()?, 0).into())
        .ok()?;
    socket
        .connect_timeout(&frontend.into(), Duration::from_secs(2))
        .ok()?;
    let mut s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let line = buf.lines().next()?.to_owned();
    (!line.is_empty()).then_some(line)
}

pub fn greeting(frontend: SocketAddr) -> Option<String> {
    greeting_from("127.0.0.1", frontend)
}

/// Runs a shell command line, returning stdout; panics with stderr on failure.
pub fn sh(script: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Peers on 127.0.0.1, .2 … sharing a token, seeded with each other; with
/// `transport` "quic" each gets a certificate from one cluster CA.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub peers: Vec<Daemon>,
}

pub fn mesh_of(n: usize, transport: &str) -> Mesh {
    mesh_with(n, transport, "")
}

/// [`mesh_of`] with `toml` appended to every peer's config (after the fast
/// defaults of [`fast_toml`]).
pub fn mesh_with(n: usize, transport: &str, toml: &str) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let token: PathBuf = dir.path().join("token");
    std::fs::write(&token, "mesh-test-token-0123456789abcdef\n").unwrap();
    let ips: Vec<String> = (1..=n).map(|_| test_ip()).collect();
    let ports: Vec<u16> = ips.iter().map(|ip| free_udp_port(ip)).collect();
    let seeds: Vec<SocketAddr> = ips
        .iter()
        .zip(&ports)
        .map(|(ip, p)| format!("{ip}:{p}").parse().unwrap())
        .collect();
    let peers: Vec<Daemon> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            Daemon::launch(DaemonOpts {
                ip: ip.to_string(),
                node_id: format!("lb{}", i + 1),
                gossip_port: Some(ports[i]),
                seeds: seeds.clone(),
                token_file: Some(token.clone()),
                toml: format!("{}{toml}", fast_toml("", "")),
                mesh: if transport == "quic" {
                    issue_peer_cert(dir.path(), &format!("lb{}", i + 1))
                } else {
                    "transport = \"udp\"".into()
                },
                ..DaemonOpts::default()
            })
        })
        .collect();
    for p in &peers {
        p.wait_healthy();
    }
    Mesh { dir, peers }
}

impl Mesh {
    /// Waits until every running peer sees the others it should and reports
    /// a converged mesh: same registry and config digests on all live peers.
    pub fn converged(&self, live: &[usize]) {
        for &i in live {
            let p = &self.peers[i];
            eventually(Duration::from_secs(20), "the mesh to converge", || {
                let s = p.status();
                let peers = s["peers"].as_array()?;
                let live_ids: Vec<&str> = peers
                    .iter()
                    .filter(|x| x["live"] == true)
                    .filter_map(|x| x["node_id"].as_str())
                    .collect();
                let want: Vec<String> = live.iter().map(|j| format!("lb{}", j + 1)).collect();
                (s["converged"] == true
                    && s["haproxy"]["in_step"] == true
                    && want.iter().all(|w| live_ids.contains(&w.as_str())))
                .then_some(())
            });
        }
        let digests: Vec<serde_json::Value> = live
            .iter()
            .map(|&i| self.peers[i].status()["registry"]["digest"].clone())
            .collect();
        assert!(
            digests.windows(2).all(|w| w[0] == w[1]),
            "registry digests differ: {digests:?}"
        );
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The gossip key and value a rogue peer publishes to sneak a server in: an
/// hour's lease of 127.0.0.1:30999 on `frontend`, named "rogue".
pub fn rogue_entry(frontend: u16) -> (String, String) {
    use lbmesh::clock::Stamp;
    use lbmesh::mesh::codec::{encode_key, encode_value};
    use lbmesh::registry::{Entry, Key, Op};
    let now = now_ms();
    let key = Key {
        frontend,
        server: "127.0.0.1:30999".parse().unwrap(),
    };
    let entry = Entry {
        stamp: Stamp::from_wall_ms(now),
        observed: Stamp::default(),
        op: Op::Add {
            name: "rogue".parse().unwrap(),
            send_proxy: false,
            since_ms: now,
            expires_ms: now + 3_600_000,
        },
    };
    (encode_key(&key), encode_value(&entry))
}
