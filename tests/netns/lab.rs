//! A lab of network namespaces on one bridge: load-balancer VMs running
//! lbmesh, HAProxy and keepalived; "Kubernetes nodes" with a TCP server on a
//! NodePort; a client. Addresses come from 198.18.0.0/15 and no traffic
//! leaves the namespaces. Everything is torn down when the lab is dropped,
//! also when a test fails. A test that uses it declares `mod common;` too.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::common::Reaped;

pub const VIP: &str = "198.18.0.100";
pub const NODEPORT: u16 = 30443;
pub const TOKEN: &str = "lab-token-0123456789abcdef0123456789";

static LABS: AtomicU32 = AtomicU32::new(0);

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) -> String {
    run(Command::new("ip").args(args))
}

pub fn require_root() {
    let uid = run(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "network-namespace tests need root (scripts/test runs them as root)"
    );
}

pub struct LbVm {
    pub name: String,
    pub ns: String,
    pub ip: String,
    pub dir: PathBuf,
    pub lbmesh: Option<Child>,
    pub keepalived: Option<Child>,
}

impl LbVm {
    /// Kills and waits for this VM's lbmesh and keepalived, if running.
    fn reap(&mut self) {
        for mut c in [self.lbmesh.take(), self.keepalived.take()]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn api(&self) -> String {
        format!("http://{}:9000", self.ip)
    }
}

/// What a lab is started with beyond its size.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// Connection handoff on every VM (`keepalived.vip` and `.interface`).
    pub handoff: bool,
}

pub struct Lab {
    pub prefix: String,
    pub options: LabOptions,
    pub dir: tempfile::TempDir,
    pub bin: PathBuf,
    pub lbs: Vec<LbVm>,
    pub nodes: Vec<(String, String)>,
    pub client: String,
    switch: String,
    namespaces: Vec<String>,
    node_servers: Vec<Reaped>,
    /// Mounts to undo on drop (the VMs' own filesystems), innermost first.
    mounts: Vec<PathBuf>,
}

impl Lab {
    /// `lbs` load-balancer VMs and `nodes` Kubernetes nodes, all running.
    pub fn start(bin: &Path, lbs: usize, nodes: usize) -> Lab {
        Self::start_with(bin, lbs, nodes, LabOptions::default())
    }

    /// [`Lab::start`] with `options`.
    pub fn start_with(bin: &Path, lbs: usize, nodes: usize, options: LabOptions) -> Lab {
        let mut lab = Lab::network_with(bin, lbs, nodes, options);
        std::fs::write(lab.dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        let ca = lab.dir.path().join("ca");
        run(Command::new(&lab.bin)
            .args(["ca", "init", "--dir"])
            .arg(&ca));
        for lb in &lab.lbs {
            run(Command::new(&lab.bin)
                .args(["ca", "issue", "--node-id", &lb.name, "--dir"])
                .arg(&ca));
        }
        for i in 0..lbs {
            lab.start_lbmesh(i);
        }
        for i in 0..lbs {
            lab.wait_healthy(i, Duration::from_secs(30));
        }
        for i in 0..lbs {
            lab.wait_mesh(i, Duration::from_secs(30));
        }
        for i in 0..lbs {
            lab.start_keepalived(i);
        }
        lab
    }

    /// The network alone: `lbs` load-balancer VMs (lb1 at 198.18.0.11, …)
    /// with nothing running, and `nodes` Kubernetes nodes (198.18.0.21, …)
    /// with their NodePort servers.
    pub fn network(bin: &Path, lbs: usize, nodes: usize) -> Lab {
        Self::network_with(bin, lbs, nodes, LabOptions::default())
    }

    /// [`Lab::network`] with `options`.
    pub fn network_with(bin: &Path, lbs: usize, nodes: usize, options: LabOptions) -> Lab {
        require_root();
        let n = LABS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("lm{}x{n}", std::process::id() % 100_000);
        let mut lab = Lab {
            options,
            switch: format!("{prefix}sw"),
            client: format!("{prefix}cl"),
            prefix,
            dir: tempfile::tempdir().unwrap(),
            bin: bin.to_owned(),
            lbs: Vec::new(),
            nodes: Vec::new(),
            namespaces: Vec::new(),
            node_servers: Vec::new(),
            mounts: Vec::new(),
        };
        lab.add_ns(&lab.switch.clone());
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"]);
        lab.host(&lab.client.clone(), "198.18.0.31", 99);
        for i in 1..=nodes {
            let ns = format!("{}k{i}", lab.prefix);
            let addr = format!("198.18.0.{}", 20 + i);
            lab.host(&ns, &addr, 50 + i);
            lab.nodes.push((ns, addr));
        }
        for i in 1..=lbs {
            let ns = format!("{}lb{i}", lab.prefix);
            let addr = format!("198.18.0.{}", 10 + i);
            lab.host(&ns, &addr, i);
            let name = format!("lb{i}");
            let dir = lab.dir.path().join(&name);
            std::fs::create_dir_all(&dir).unwrap();
            lab.lbs.push(LbVm {
                name,
                ns,
                ip: addr,
                dir,
                lbmesh: None,
                keepalived: None,
            });
        }
        for i in 0..nodes {
            lab.start_node_server(i);
        }
        lab
    }

    fn add_ns(&mut self, ns: &str) {
        ip(&["netns", "add", ns]);
        self.namespaces.push(ns.to_owned());
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }

    /// A namespace with eth0 on the bridge at `addr`/24.
    fn host(&mut self, ns: &str, addr: &str, idx: usize) {
        self.add_ns(ns);
        let (a, b) = (
            format!("{}{idx}a", self.prefix),
            format!("{}{idx}b", self.prefix),
        );
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b]);
        ip(&["link", "set", &a, "netns", &self.switch]);
        ip(&["link", "set", &b, "netns", ns]);
        ip(&["-n", &self.switch, "link", "set", &a, "master", "br0", "up"]);
        ip(&["-n", ns, "link", "set", &b, "name", "eth0"]);
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
    }

    /// A TCP server on the NodePort that greets with the node's name.
    pub fn start_node_server(&mut self, i: usize) {
        let script = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',{NODEPORT}))\ns.listen(128)\n\
             while True:\n  c,_=s.accept()\n  c.sendall(b'node-k{}\\n')\n  c.close()\n",
            i + 1
        );
        self.node_python(i, &script);
    }

    /// A TCP echo server on node `i`, port `port`: the far end of
    /// long-lived connections.
    pub fn start_node_echo(&mut self, i: usize, port: u16) {
        let script = format!(
            "import socket,threading\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',{port}))\ns.listen(128)\n\
             def echo(c):\n  while True:\n    d=c.recv(4096)\n    if not d: break\n    c.sendall(d)\n\
             while True:\n  c,_=s.accept()\n  threading.Thread(target=echo,args=(c,),daemon=True).start()\n"
        );
        self.node_python(i, &script);
    }

    /// Runs the Python `script` on node `i` until the lab is dropped.
    fn node_python(&mut self, i: usize, script: &str) {
        let child = in_ns(&self.nodes[i].0, "python3")
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.node_servers.push(Reaped(child));
    }

    /// Runs `lbmesh ARGS` inside VM `i` against its own API (drain, undrain
    /// …); (success, stdout and stderr).
    pub fn lbmesh_cli(&self, i: usize, bin: &Path, args: &[&str]) -> (bool, String) {
        let lb = &self.lbs[i];
        let out = Command::new("ip")
            .args(["netns", "exec", &lb.ns])
            .arg(bin)
            .args(args)
            .arg("--api")
            .arg(lb.api())
            .arg("--token-file")
            .arg(self.dir.path().join("token"))
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// SIGTERM to VM `i`'s lbmesh (as a service manager stops it) and waits
    /// for its exit; its status.
    pub fn stop_lbmesh(&mut self, i: usize, within: Duration) -> std::process::ExitStatus {
        let lb = &mut self.lbs[i];
        let mut child = lb.lbmesh.take().expect("lbmesh runs");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if start.elapsed() > within {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not stop within {within:?} of SIGTERM", lb.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn lbmesh_config(&self, i: usize) -> PathBuf {
        let lb = &self.lbs[i];
        let ca = self.dir.path().join("ca");
        let seeds: Vec<String> = self
            .lbs
            .iter()
            .map(|l| format!("\"{}:7946\"", l.ip))
            .collect();
        // HAProxy through a wrapper, so a test can make it fail for good.
        let wrapper = lb.dir.join("haproxy");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\n[ -e {} ] && exit 1\nexec haproxy \"$@\"\n",
                lb.dir.join("haproxy-broken").display()
            ),
        )
        .unwrap();
        run(Command::new("chmod").arg("755").arg(&wrapper));
        let cfg = lb.dir.join("lbmesh.toml");
        std::fs::write(
            &cfg,
            format!(
                "node-id = \"{name}\"\napi-listen = \"{ip}:9000\"\ngossip-listen = \"{ip}:7946\"\n\
                 seeds = [{seeds}]\ndata-dir = \"{data}\"\ntoken-file = \"{token}\"\nbind-address = \"0.0.0.0\"\n\
                 [haproxy]\nbinary = \"{wrapper}\"\ncheck-interval = \"300ms\"\ncheck-fall = 2\ncheck-rise = 1\n\
                 min-reload-interval = \"100ms\"\nhard-stop-after = \"5s\"\n\
                 [mesh]\nca-cert = \"{ca}/ca.crt\"\ncert = \"{ca}/{name}.crt\"\nkey = \"{ca}/{name}.key\"\n\
                 gossip-interval = \"100ms\"\n\
                 [keepalived]\nmax-lag = \"5s\"\n{handoff}",
                name = lb.name,
                ip = lb.ip,
                seeds = seeds.join(", "),
                data = lb.dir.join("data").display(),
                token = self.dir.path().join("token").display(),
                wrapper = wrapper.display(),
                ca = ca.display(),
                handoff = if self.options.handoff {
                    format!("vip = \"{VIP}\"\ninterface = \"eth0\"\n")
                } else {
                    String::new()
                },
            ),
        )
        .unwrap();
        cfg
    }

    pub fn start_lbmesh(&mut self, i: usize) {
        let bin = self.bin.clone();
        self.start_lbmesh_with(i, &bin);
    }

    /// Starts VM `i`'s lbmesh from `bin` (an upgrade: another binary).
    pub fn start_lbmesh_with(&mut self, i: usize, bin: &Path) {
        let cfg = self.lbmesh_config(i);
        let lb = &mut self.lbs[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lb.dir.join("lbmesh.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &lb.ns])
            .arg(bin)
            .args(["serve", "--config"])
            .arg(&cfg)
            .env("LBMESH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        lb.lbmesh = Some(child);
    }

    pub fn start_keepalived(&mut self, i: usize) {
        let lb = &self.lbs[i];
        // Unicast VRRP, the peers taken from the running mesh.
        let conf = run(Command::new("ip")
            .args(["netns", "exec", &lb.ns])
            .arg(&self.bin)
            .args([
                "keepalived",
                "config",
                "--vip",
                &format!("{VIP}/24"),
                "--interface",
                "eth0",
                "--priority",
                &(200 - 10 * i).to_string(),
                "--unicast-src",
                &lb.ip,
                "--api",
                &lb.api(),
                "--token-file",
                &self.dir.path().join("token").to_string_lossy(),
            ])
            // Benchmarks compare timer settings: extra `keepalived config` flags.
            .args(
                std::env::var("LBMESH_LAB_KEEPALIVED_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            ));
        assert!(conf.contains("unicast_peer"), "{conf}");
        let path = lb.dir.join("keepalived.conf");
        std::fs::write(&path, conf).unwrap();
        self.spawn_keepalived(i);
    }

    /// Runs keepalived with the config [`Lab::start_keepalived`] wrote.
    pub fn spawn_keepalived(&mut self, i: usize) {
        let lb = &self.lbs[i];
        let path = lb.dir.join("keepalived.conf");
        let pid = |n: &str| lb.dir.join(format!("keepalived-{n}.pid"));
        // A crashed keepalived's children may not be reaped yet: keepalived
        // would take their pid files for a daemon still running and exit.
        for n in ["main", "vrrp", "checkers"] {
            let _ = std::fs::remove_file(pid(n));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(lb.dir.join("keepalived.log"))
            .unwrap();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lb.ns,
                "keepalived",
                "-n",
                "-l",
                "-D",
                "-G",
                "-P",
                "-f",
            ])
            .arg(&path)
            .arg("-p")
            .arg(pid("main"))
            .arg("-r")
            .arg(pid("vrrp"))
            .arg("-c")
            .arg(pid("checkers"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.lbs[i].keepalived = Some(child);
    }

    /// GET on a peer's API from inside its namespace; (status, body).
    pub fn api_get(&self, i: usize, path: &str) -> (u16, serde_json::Value) {
        self.api_call(i, &[], path, 3)
    }

    /// POST on a peer's API from inside its namespace; (status, body).
    pub fn api_post(&self, i: usize, path: &str, max_secs: u64) -> (u16, serde_json::Value) {
        self.api_call(i, &["-X", "POST"], path, max_secs)
    }

    /// curl with the token and `curl_args` on a peer's API from inside its
    /// namespace, for at most `max_secs`; (status, body).
    fn api_call(
        &self,
        i: usize,
        curl_args: &[&str],
        path: &str,
        max_secs: u64,
    ) -> (u16, serde_json::Value) {
        let lb = &self.lbs[i];
        let out = in_ns(&lb.ns, "curl")
            .arg("-s")
            .args(curl_args)
            .arg("-m")
            .arg(max_secs.to_string())
            .args(["-w", "\n%{http_code}", "-H"])
            .arg(format!("X-Funkypenguin-Token: {TOKEN}"))
            .arg(format!("{}{path}", lb.api()))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (
            code.trim().parse().unwrap_or(0),
            serde_json::from_str(body).unwrap_or_default(),
        )
    }

    pub fn wait_healthy(&self, i: usize, within: Duration) {
        let start = Instant::now();
        while self.api_get(i, "/healthz").0 != 200 {
            assert!(
                start.elapsed() < within,
                "{} not healthy; log:\n{}",
                self.lbs[i].name,
                self.log(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self, i: usize) -> String {
        let lb = &self.lbs[i];
        format!(
            "{}\n--- keepalived ---\n{}",
            std::fs::read_to_string(lb.dir.join("lbmesh.log")).unwrap_or_default(),
            std::fs::read_to_string(lb.dir.join("keepalived.log")).unwrap_or_default()
        )
    }

    /// Which load balancer holds the VIP now, if exactly one does (with its
    /// link up).
    pub fn vip_holder(&self) -> Option<usize> {
        let holders: Vec<usize> = (0..self.lbs.len())
            .filter(|i| {
                let out = Command::new("ip")
                    .args(["-n", &self.lbs[*i].ns, "-br", "addr", "show", "dev", "eth0"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                // A crashed VM (its link down) keeps the address but
                // answers nothing.
                let mut words = out.split_whitespace();
                words.nth(1) != Some("DOWN") && words.any(|w| w == format!("{VIP}/24"))
            })
            .collect();
        (holders.len() == 1).then(|| holders[0])
    }

    pub fn wait_vip_holder(&self, within: Duration) -> usize {
        let start = Instant::now();
        loop {
            if let Some(h) = self.vip_holder() {
                return h;
            }
            assert!(
                start.elapsed() < within,
                "no single VIP holder within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The original phone-home curl, from Kubernetes node `node`, to peer `lb`.
    pub fn phone_home(
        &self,
        node: usize,
        lb: usize,
        frontend: u16,
        dst_ip: &str,
    ) -> serde_json::Value {
        self.phone_home_to(node, lb, frontend, NODEPORT, "traefik", dst_ip)
    }

    /// [`Lab::phone_home`] for another NodePort and service name.
    pub fn phone_home_to(
        &self,
        node: usize,
        lb: usize,
        frontend: u16,
        nodeport: u16,
        name: &str,
        dst_ip: &str,
    ) -> serde_json::Value {
        let (ns, _) = &self.nodes[node];
        let body = format!(
            "{{\"dst-ip\":\"{dst_ip}\",\"frontend-port\":\"{frontend}\",\"backend-port\":\"{nodeport}\",\"action\":\"add\",\"name\":\"{name}\",\"send-proxy\":\"\"}}"
        );
        let out = run(Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "curl",
            "-s",
            "-H",
            "Content-Type:application/json",
            "-H",
            &format!("X-Funkypenguin-Token:{TOKEN}"),
            "-X",
            "POST",
            "-d",
            &body,
            &format!("{}/hooks/update-haproxy?wait=applied", self.lbs[lb].api()),
        ]));
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("not JSON: {out}"))
    }

    /// One client connection to VIP:`port`; the greeting, or None.
    pub fn client_greeting(&self, port: u16) -> Option<String> {
        let script = format!(
            "import socket\ns=socket.create_connection(('{VIP}',{port}),timeout=1)\ns.settimeout(1)\nprint(s.recv(64).decode().strip())\n"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.client, "python3", "-c", &script])
            .output()
            .ok()?;
        let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        (out.status.success() && !s.is_empty()).then_some(s)
    }

    /// Runs the Python `script` in the client namespace, at realtime
    /// priority if `realtime` (on a loaded machine the client then measures
    /// the network, not its own wait for a CPU); read its lines as it prints
    /// them. It is killed when dropped.
    pub fn client_python(&self, script: &str, realtime: bool) -> Running {
        let mut cmd = if realtime {
            let mut c = in_ns(&self.client, "chrt");
            c.args(["-r", "30", "python3"]);
            c
        } else {
            in_ns(&self.client, "python3")
        };
        let mut child = cmd
            .args(["-u", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Running {
            child: Reaped(child),
            lines,
        }
    }

    /// A client that connects to VIP:`port` every 20 ms from now on and
    /// reports each attempt; read it with [`Prober::first_success_after`].
    pub fn prober(&self, port: u16) -> Prober {
        let script = format!(
            "import socket,time,sys\n\
             while True:\n\
             \x20 t=time.time()\n\
             \x20 try:\n\
             \x20   s=socket.create_connection(('{VIP}',{port}),timeout=0.2)\n\
             \x20   s.settimeout(0.2)\n\
             \x20   d=s.recv(64)\n\
             \x20   s.close()\n\
             \x20   ok=len(d)>0\n\
             \x20 except Exception:\n\
             \x20   ok=False\n\
             \x20 print(('ok' if ok else 'fail'), t, flush=True)\n\
             \x20 time.sleep(0.02)\n"
        );
        Prober(self.client_python(&script, true))
    }

    /// A hard crash of a load balancer: its link down, every process in it
    /// killed. Returns the instant (Unix seconds) the link went down.
    pub fn crash(&mut self, i: usize) -> f64 {
        let lb = &mut self.lbs[i];
        // The link first: from this instant the VM is gone for everyone.
        ip(&["-n", &lb.ns, "link", "set", "eth0", "down"]);
        let gone = now();
        kill_namespace(&lb.ns);
        lb.reap();
        gone
    }

    /// A hard crash as a VM dies: every process in it frozen (SIGSTOP), its
    /// link cut, then every process killed. Returns the instant (Unix
    /// seconds) it froze.
    pub fn hard_crash(&mut self, i: usize) -> f64 {
        let lb = &mut self.lbs[i];
        let frozen = now();
        signal_all(&ns_pids(&lb.ns), "STOP");
        ip(&["-n", &lb.ns, "link", "set", "eth0", "down"]);
        kill_namespace(&lb.ns);
        lb.reap();
        frozen
    }

    /// A crashed VM boots: link up, then lbmesh and keepalived (with the
    /// config it had) start together, as systemd starts them.
    pub fn boot(&mut self, i: usize) {
        ip(&["-n", &self.lbs[i].ns, "link", "set", "eth0", "up"]);
        self.start_lbmesh(i);
        self.spawn_keepalived(i);
    }

    /// Brings a crashed load balancer back: link up, lbmesh, keepalived (once
    /// the mesh sees every peer, so its VRRP peers are complete).
    pub fn recover(&mut self, i: usize) {
        ip(&["-n", &self.lbs[i].ns, "link", "set", "eth0", "up"]);
        self.start_lbmesh(i);
        self.wait_healthy(i, Duration::from_secs(30));
        self.wait_mesh(i, Duration::from_secs(30));
        self.start_keepalived(i);
    }

    /// Waits until peer `i` sees every load balancer live.
    pub fn wait_mesh(&self, i: usize, within: Duration) {
        let start = Instant::now();
        loop {
            let (_, st) = self.api_get(i, "/v1/status");
            let live = st["peers"]
                .as_array()
                .map(|p| p.iter().filter(|x| x["live"] == true).count())
                .unwrap_or(0);
            if live == self.lbs.len() {
                return;
            }
            assert!(
                start.elapsed() < within,
                "{} sees {live} live peers",
                self.lbs[i].name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs an nftables script inside load balancer `i`'s namespace.
    pub fn nft(&self, i: usize, script: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.lbs[i].ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(script.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f: {script}");
    }

    /// Drops, in load balancer `i`'s namespace, incoming and outgoing packets
    /// that `rule` matches (an nftables match, e.g. `ip protocol 112`), in a
    /// table named `name`; [`Lab::unblock`] removes it.
    pub fn block(&self, i: usize, name: &str, rule: &str) {
        self.nft(
            i,
            &format!(
                "table inet {name} {{\n chain in {{ type filter hook input priority -10; {rule} drop; }}\n \
                 chain out {{ type filter hook output priority -10; {rule} drop; }}\n}}\n"
            ),
        );
    }

    pub fn unblock(&self, i: usize, name: &str) {
        self.nft(i, &format!("delete table inet {name}\n"));
    }

    /// An observer in the client namespace that asks "who has the VIP?" (ARP)
    /// every `every_ms` and counts the distinct VMs that answer; read it with
    /// [`ArpObserver::next`].
    pub fn arp_observer(&self, every_ms: u64) -> ArpObserver {
        let script = format!(
            "import socket,struct,time,sys\n\
             s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x0806))\n\
             s.bind(('eth0',0))\n\
             mac=s.getsockname()[4]\n\
             me=socket.inet_aton('198.18.0.31')\n\
             vip=socket.inet_aton('{VIP}')\n\
             req=b'\\xff'*6+mac+b'\\x08\\x06'+struct.pack('!HHBBH',1,0x0800,6,4,1)+mac+me+b'\\x00'*6+vip\n\
             s.settimeout(0.005)\n\
             while True:\n\
             \x20 t=time.time()\n\
             \x20 s.send(req)\n\
             \x20 seen=set()\n\
             \x20 end=t+{every}\n\
             \x20 while time.time()<end:\n\
             \x20   try:\n\
             \x20     p=s.recv(64)\n\
             \x20   except socket.timeout:\n\
             \x20     continue\n\
             \x20   if len(p)>=42 and p[12:14]==b'\\x08\\x06' and p[20:22]==b'\\x00\\x02' and p[28:32]==vip:\n\
             \x20     seen.add(p[22:28].hex())\n\
             \x20 print(t,len(seen),','.join(sorted(seen)),flush=True)\n",
            every = every_ms as f64 / 1000.0
        );
        ArpObserver(self.client_python(&script, true))
    }

    /// A client that starts a connection to VIP:`port` every `every_ms`,
    /// each on its own (a slow one does not delay the next), waits up to
    /// `timeout_s` for the greeting, and reports `ok|fail START END` per
    /// attempt (read with [`Prober::first_success_after`] and
    /// [`Prober::stop_and_count`]). Under 1 s of timeout, a success never
    /// owes anything to a retransmitted SYN, so its start is when the path
    /// worked.
    pub fn concurrent_prober(&self, port: u16, every_ms: u64, timeout_s: f64) -> Prober {
        let script = format!(
            "import asyncio,time\n\
             async def one():\n\
             \x20 t=time.time()\n\
             \x20 try:\n\
             \x20   r,w=await asyncio.wait_for(asyncio.open_connection('{VIP}',{port}),{timeout_s})\n\
             \x20   d=await asyncio.wait_for(r.read(64),{timeout_s})\n\
             \x20   w.close()\n\
             \x20   ok=len(d)>0\n\
             \x20 except Exception:\n\
             \x20   ok=False\n\
             \x20 print(('ok' if ok else 'fail'),t,time.time(),flush=True)\n\
             async def main():\n\
             \x20 while True:\n\
             \x20   asyncio.ensure_future(one())\n\
             \x20   await asyncio.sleep({every})\n\
             asyncio.run(main())\n",
            every = every_ms as f64 / 1000.0
        );
        Prober(self.client_python(&script, true))
    }

    /// Freezes (SIGSTOP) the processes of VM `i` whose command line contains
    /// one of `needles` for `stall`, then lets them go on (SIGCONT): a VM, or
    /// one of its daemons, starved of CPU. Returns how long they were frozen.
    pub fn stall(&self, i: usize, needles: &[&str], stall: Duration) -> Duration {
        let start = Instant::now();
        let frozen = self.freeze(i, needles);
        std::thread::sleep(stall);
        thaw(&frozen);
        start.elapsed()
    }

    /// Freezes (SIGSTOP) the processes of VM `i` whose command line contains
    /// one of `needles`; [`thaw`] lets them go on.
    pub fn freeze(&self, i: usize, needles: &[&str]) -> Vec<u32> {
        let pids: Vec<u32> = needles
            .iter()
            .flat_map(|n| self.pids_matching(&self.lbs[i].ns, n))
            .collect();
        assert!(
            !pids.is_empty(),
            "nothing matches {needles:?} in lb{}",
            i + 1
        );
        signal_all(&pids, "STOP");
        pids
    }

    /// VM `i`'s keepalived (its parent and VRRP processes).
    pub const KEEPALIVED: &'static str = "keepalived.conf";
    /// VM `i`'s lbmesh daemon.
    pub const LBMESH: &'static str = "serve --config";

    /// Saturates the machine's CPUs for `secs` seconds with `stress-ng`
    /// inside VM `i` (twice as many workers as CPUs, at the priority of
    /// lbmesh): a VM starved of CPU. Stops when dropped.
    pub fn saturate_cpus(&self, i: usize, secs: u64) -> Stress {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let child = Command::new("ip")
            .args(["netns", "exec", &self.lbs[i].ns, "stress-ng", "--cpu"])
            .arg((2 * cpus).to_string())
            .arg("--timeout")
            .arg(format!("{secs}s"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stress-ng (apt-get install stress-ng)");
        Stress {
            child,
            workers: 2 * cpus,
        }
    }

    /// Processes inside namespace `ns` whose command line contains `needle`.
    pub fn pids_matching(&self, ns: &str, needle: &str) -> Vec<u32> {
        ns_pids(ns)
            .into_iter()
            .filter(|p| {
                // The arguments are NUL-separated: match them space-separated.
                std::fs::read(format!("/proc/{p}/cmdline"))
                    .map(|c| {
                        String::from_utf8_lossy(&c)
                            .replace('\0', " ")
                            .contains(needle)
                    })
                    .unwrap_or(false)
            })
            .collect()
    }
}

/// VMs with a filesystem of their own, for following an install guide as
/// written: each sees its own `/etc`, `/var/lib` and `/run`, and the lbmesh
/// under test as `/usr/local/bin/lbmesh`.
impl Lab {
    /// The directory every VM sees as `/usr/local/bin`.
    pub fn installed_bin_dir(&self) -> PathBuf {
        self.dir.path().join("usr-local-bin")
    }

    /// Gives load balancer `i` its own root: `/etc` and `/var/lib` are the
    /// host's with the VM's changes on top (kept in its directory), `/run`
    /// starts empty, `/sys` shows the VM's network. Commands made with
    /// [`Lab::on_vm`] run there.
    pub fn give_own_root(&mut self, i: usize) {
        let bin_dir = self.installed_bin_dir();
        if !bin_dir.exists() {
            std::fs::create_dir_all(&bin_dir).unwrap();
            let installed = bin_dir.join("lbmesh");
            if std::fs::hard_link(&self.bin, &installed).is_err() {
                std::fs::copy(&self.bin, &installed).unwrap();
            }
        }
        let root = self.lbs[i].dir.join("root");
        for d in ["etc.up", "etc.work", "var-lib.up", "var-lib.work", "ns"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        // The mount namespace is kept by a bind mount of its handle, which
        // must sit on a mount that does not propagate.
        let ns = root.join("ns");
        run(Command::new("mount").arg("--bind").arg(&ns).arg(&ns));
        self.mounts.push(ns.clone());
        run(Command::new("mount").arg("--make-private").arg(&ns));
        let handle = ns.join("mnt");
        std::fs::write(&handle, "").unwrap();
        let r = |d: &str| root.join(d).display().to_string();
        let script = format!(
            "set -e
             mount -t overlay overlay -o lowerdir=/etc,upperdir={},workdir={} /etc
             mount -t overlay overlay -o lowerdir=/var/lib,upperdir={},workdir={} /var/lib
             mount -t tmpfs -o mode=755 tmpfs /run
             mount -t sysfs sysfs /sys
             mount --bind {} /usr/local/bin
             # A fresh VM: nothing of an lbmesh or keepalived set up on this
             # machine (whiteouts in the VM's layers; the host keeps its files).
             [ \"$(findmnt -n -o FSTYPE -M /etc)\" = overlay ]
             [ \"$(findmnt -n -o FSTYPE -M /var/lib)\" = overlay ]
             rm -rf /etc/lbmesh /var/lib/lbmesh /etc/keepalived/keepalived.conf
",
            r("etc.up"),
            r("etc.work"),
            r("var-lib.up"),
            r("var-lib.work"),
            bin_dir.display()
        );
        run(Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.lbs[i].ns))
            .arg("unshare")
            .arg(format!("--mount={}", handle.display()))
            .args(["--propagation", "private", "sh", "-c", &script]));
        self.mounts.push(handle);
    }

    /// `program` to run on VM `i` (given its own root): in its network and
    /// filesystem, from `/`, with a system's PATH.
    pub fn on_vm(&self, i: usize, program: &str) -> Command {
        self.on_vm_in(i, "/", program)
    }

    /// [`Lab::on_vm`] from directory `wd` (on the VM).
    pub fn on_vm_in(&self, i: usize, wd: &str, program: &str) -> Command {
        let lb = &self.lbs[i];
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", lb.ns))
            .arg(format!("--mount={}", lb.dir.join("root/ns/mnt").display()))
            // nsenter opens its --wd before it enters the mount namespace.
            .args([
                "--wd=/",
                "--",
                "sh",
                "-c",
                "cd \"$0\" && exec \"$@\"",
                wd,
                program,
            ])
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(Stdio::null());
        c
    }

    /// Runs a shell command line on VM `i`; its standard output. It must succeed.
    pub fn vm_sh(&self, i: usize, script: &str) -> String {
        run(self.on_vm(i, "sh").arg("-c").arg(script))
    }
}

/// `program` to run inside namespace `ns`.
pub fn in_ns(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// A running program and the lines it prints.
pub struct Running {
    pub child: Reaped,
    pub lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

fn ns_pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Lets processes frozen by [`Lab::freeze`] go on (SIGCONT).
pub fn thaw(pids: &[u32]) {
    signal_all(pids, "CONT");
}

/// Sends `sig` to every process in `pids` with one `kill`.
pub fn signal_all(pids: &[u32], sig: &str) {
    if pids.is_empty() {
        return;
    }
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .args(pids.iter().map(u32::to_string))
        .stderr(Stdio::null())
        .status();
}

fn kill_namespace(ns: &str) {
    for _ in 0..5 {
        let pids = ns_pids(ns);
        if pids.is_empty() {
            return;
        }
        for p in pids {
            // A process may be gone already: that is the point.
            let _ = Command::new("kill")
                .args(["-9", &p.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for i in 0..self.lbs.len() {
                eprintln!("==== {} ====\n{}", self.lbs[i].name, self.log(i));
            }
        }
        for ns in self.namespaces.iter().rev() {
            kill_namespace(ns);
        }
        for lb in &mut self.lbs {
            lb.reap();
        }
        self.node_servers.clear();
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        for m in self.mounts.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(m).status();
        }
    }
}

/// A running client that probes the VIP.
pub struct Prober(Running);

impl Prober {
    /// Waits for the first successful connection that started after `t`
    /// (Unix seconds); returns its start time.
    pub fn first_success_after(&mut self, t: f64, within: Duration) -> Option<f64> {
        let start = Instant::now();
        while start.elapsed() < within {
            let line = self.0.lines.next()?.ok()?;
            let mut w = line.split_whitespace();
            let (ok, at) = (w.next()? == "ok", w.next()?.parse::<f64>().ok()?);
            if ok && at >= t {
                return Some(at);
            }
        }
        None
    }
}

impl Prober {
    /// Stops the client and counts (succeeded, failed) attempts that started
    /// at or after `t`.
    pub fn stop_and_count(mut self, t: f64) -> (usize, usize) {
        let _ = self.0.child.kill();
        let (mut ok, mut failed) = (0, 0);
        for line in self.0.lines.by_ref().map_while(Result::ok) {
            let mut w = line.split_whitespace();
            let (Some(r), Some(at)) = (w.next(), w.next().and_then(|x| x.parse::<f64>().ok()))
            else {
                continue;
            };
            if at >= t {
                if r == "ok" {
                    ok += 1;
                } else {
                    failed += 1;
                }
            }
        }
        (ok, failed)
    }
}

/// CPU saturation started by [`Lab::saturate_cpus`]; stopped when dropped.
pub struct Stress {
    child: Child,
    pub workers: usize,
}

impl Drop for Stress {
    fn drop(&mut self) {
        // `ip netns exec` execs stress-ng, whose workers end with it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// What an [`ArpObserver`] saw over a while.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Watch {
    pub samples: u64,
    /// Samples in which two or more VMs answered for the VIP.
    pub two_or_more: u64,
    /// Samples in which no VM answered.
    pub none: u64,
    /// Times the single VM answering changed.
    pub moves: u64,
}

/// Counts the VMs that answer ARP for the VIP, sample by sample.
pub struct ArpObserver(Running);

impl ArpObserver {
    /// The next sample: (Unix seconds, how many VMs answered).
    pub fn next(&mut self) -> Option<(f64, usize)> {
        self.next_macs().map(|(t, macs)| (t, macs.len()))
    }

    /// The next sample: (Unix seconds, the MAC addresses that answered).
    pub fn next_macs(&mut self) -> Option<(f64, Vec<String>)> {
        let line = self.0.lines.next()?.ok()?;
        let mut w = line.split_whitespace();
        let t = w.next()?.parse().ok()?;
        let n: usize = w.next()?.parse().ok()?;
        let macs: Vec<String> = w
            .next()
            .map(|m| m.split(',').map(str::to_owned).collect())
            .unwrap_or_default();
        (macs.len() == n).then_some((t, macs))
    }

    /// Samples for `d` from now, counting those in which not exactly one VM
    /// answered and the changes of the one that did; `holder` is the MAC
    /// that answered last (updated). Prints every sample that was not one
    /// holder, with `label`.
    pub fn watch(&mut self, d: Duration, holder: &mut Option<String>, label: &str) -> Watch {
        let start = Instant::now();
        let mut w = Watch::default();
        while start.elapsed() < d {
            let (t, macs) = self.next_macs().expect("the ARP observer runs");
            w.samples += 1;
            match macs.len() {
                0 => w.none += 1,
                1 => {
                    if holder.as_ref().is_some_and(|h| *h != macs[0]) {
                        w.moves += 1;
                        eprintln!("{label}: {t:.3}: the VIP moved to {}", macs[0]);
                    }
                    *holder = Some(macs[0].clone());
                }
                _ => {
                    w.two_or_more += 1;
                    eprintln!(
                        "{label}: {t:.3}: {} VMs answer for the VIP: {macs:?}",
                        macs.len()
                    );
                }
            }
        }
        w
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}
