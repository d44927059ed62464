//! The README's "A three-VM install", performed as written: its commands are
//! read from the README and run unchanged (but for what the README tells the
//! user to adapt per VM), with `deploy/config/lbmesh.toml` and
//! `deploy/systemd/lbmesh.service` as shipped. Each VM is a network
//! namespace with its own `/etc`, `/var/lib` and `/run`; a "machine you
//! trust" makes the CA; a Kubernetes node runs the original client's curl
//! and a server on NodePort 30443. Then the VM that holds the VIP crashes.
//! Runs as root; the VMs' logs are printed when it fails.

mod common;
#[path = "netns/lab.rs"]
mod lab;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{bin, eventually_ok};
use lab::Lab;

/// How often the test looks again while it waits.
const POLL: Duration = Duration::from_millis(100);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `cmd`; its standard output, or everything it said when it failed.
fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{cmd:?}: {}\n{stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The README's section "A three-VM install".
fn install_section() -> String {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let start = readme
        .find("\n## A three-VM install\n")
        .expect("README has \"A three-VM install\"");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |e| e + 3);
    rest[..end].to_owned()
}

/// The shell code blocks of `text`, in order, without their indentation.
fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        let t = line.trim();
        match &mut current {
            None if t == "```sh" => current = Some(Vec::new()),
            Some(_) if t == "```" => blocks.push(current.take().unwrap().join("\n")),
            Some(lines) => lines.push(t),
            None => {}
        }
    }
    blocks
}

/// `text` with `from` replaced by `to`, which must occur exactly `times` times.
fn adapt(text: &str, from: &str, to: &str, times: usize) -> String {
    assert_eq!(
        text.matches(from).count(),
        times,
        "expected {from:?} {times} time(s) in:\n{text}"
    );
    text.replace(from, to)
}

/// What systemd does for a unit: the `ExecStart` command line and the
/// directories it makes before running it.
struct Unit {
    exec_start: Vec<String>,
    working_directory: Option<String>,
    /// (path, mode) for `StateDirectory=` and `RuntimeDirectory=`.
    directories: Vec<(String, String)>,
}

impl Unit {
    fn read(path: &Path) -> Unit {
        let text = std::fs::read_to_string(path).unwrap();
        let key = |k: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .map(str::trim)
                .map(str::to_owned)
        };
        let mut directories = Vec::new();
        for (kind, root) in [("State", "/var/lib"), ("Runtime", "/run")] {
            if let Some(d) = key(&format!("{kind}Directory")) {
                let mode = key(&format!("{kind}DirectoryMode")).unwrap_or("0755".into());
                directories.push((format!("{root}/{d}"), mode));
            }
        }
        Unit {
            exec_start: key("ExecStart")
                .expect("ExecStart")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            working_directory: key("WorkingDirectory"),
            directories,
        }
    }
}

/// The three-VM lab, each VM with its own root, and everything the README
/// has the user do up to step 5 done: lbmesh running on every VM.
struct Install {
    lab: Lab,
    /// The machine the CA was made on (`lbmesh-ca/`, `token`).
    trusted: PathBuf,
    /// What the README's code blocks say: the CA, keepalived, the curl.
    blocks: Vec<String>,
}

const PRIORITIES: [u32; 3] = [150, 140, 130];

impl Install {
    fn begin() -> Install {
        let section = install_section();
        let blocks = sh_blocks(&section);
        assert_eq!(
            blocks.len(),
            3,
            "the install section's code blocks changed: {blocks:#?}"
        );
        // Step 1: haproxy and keepalived are installed on this machine (and
        // not running in the VMs: nothing runs there yet); lbmesh is
        // /usr/local/bin/lbmesh on each VM.
        let mut lab = Lab::network(bin(), 3, 1);
        for i in 0..3 {
            lab.give_own_root(i);
            lab.vm_sh(
                i,
                "test -x /usr/local/bin/lbmesh && command -v haproxy keepalived",
            );
        }
        let trusted = lab.dir.path().join("trusted");
        std::fs::create_dir_all(&trusted).unwrap();
        let mut install = Install {
            lab,
            trusted,
            blocks,
        };
        install.step2_ca_and_token();
        for i in 0..3 {
            install.step3_files(i);
            install.step4_config(i);
        }
        for i in 0..3 {
            install.step5_start_lbmesh(i);
        }
        install
    }

    /// Step 2, on the machine you trust, as written.
    fn step2_ca_and_token(&self) {
        let path = format!(
            "{}:{}",
            self.lab.installed_bin_dir().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        output(
            Command::new("sh")
                .args(["-ec", &self.blocks[0]])
                .current_dir(&self.trusted)
                .env("PATH", path),
        )
        .unwrap();
        let token = std::fs::read_to_string(self.trusted.join("token")).unwrap();
        assert_eq!(token.trim().len(), 64, "a 32-byte hex token: {token:?}");
    }

    /// Step 3: the CA certificate, the VM's own certificate and key, and the
    /// token into `/etc/lbmesh/`, the key and the token private.
    fn step3_files(&self, i: usize) {
        let n = i + 1;
        let t = self.trusted.display();
        self.lab.vm_sh(
            i,
            &format!(
                "set -e
                 mkdir -p /etc/lbmesh
                 cp {t}/lbmesh-ca/ca.crt {t}/lbmesh-ca/lb{n}.crt {t}/lbmesh-ca/lb{n}.key {t}/token /etc/lbmesh/
                 chmod 0600 /etc/lbmesh/lb{n}.key /etc/lbmesh/token"
            ),
        );
    }

    /// Step 4: the shipped config, adapted on lb2 and lb3 as the README says.
    fn step4_config(&self, i: usize) {
        let shipped = std::fs::read_to_string(repo("deploy/config/lbmesh.toml")).unwrap();
        let config = if i == 0 {
            shipped
        } else {
            let n = i + 1;
            let c = adapt(
                &shipped,
                "node-id = \"lb1\"",
                &format!("node-id = \"lb{n}\""),
                1,
            );
            let c = adapt(
                &c,
                "gossip-listen = \"198.18.0.11:7946\"",
                &format!("gossip-listen = \"198.18.0.1{n}:7946\""),
                1,
            );
            let c = adapt(
                &c,
                "/etc/lbmesh/lb1.crt",
                &format!("/etc/lbmesh/lb{n}.crt"),
                2,
            );
            adapt(
                &c,
                "/etc/lbmesh/lb1.key",
                &format!("/etc/lbmesh/lb{n}.key"),
                2,
            )
        };
        let staged = self.lab.lbs[i].dir.join("lbmesh.toml.new");
        std::fs::write(&staged, config).unwrap();
        self.lab.vm_sh(
            i,
            &format!("cp {} /etc/lbmesh/lbmesh.toml", staged.display()),
        );
    }

    /// Step 5: `systemctl enable --now lbmesh`, done as systemd would with
    /// the shipped unit: its directories, its working directory, its
    /// `ExecStart`.
    fn step5_start_lbmesh(&mut self, i: usize) {
        let unit = Unit::read(&repo("deploy/systemd/lbmesh.service"));
        for (dir, mode) in &unit.directories {
            self.lab
                .vm_sh(i, &format!("mkdir -p {dir} && chmod {mode} {dir}"));
        }
        let log = self.log_file(i, "lbmesh.log");
        let wd = unit.working_directory.as_deref().unwrap_or("/");
        let mut cmd = self.lab.on_vm_in(i, wd, &unit.exec_start[0]);
        cmd.args(&unit.exec_start[1..])
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.lab.lbs[i].lbmesh = Some(cmd.spawn().unwrap());
    }

    /// `systemctl enable --now keepalived` with Debian's unit: `keepalived
    /// --dont-fork`, its log on the console instead of the journal.
    fn start_keepalived(&mut self, i: usize) {
        let log = self.log_file(i, "keepalived.log");
        let child = self
            .lab
            .on_vm(i, "/usr/sbin/keepalived")
            .args(["--dont-fork", "--log-console", "--log-detail"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.lab.lbs[i].keepalived = Some(child);
    }

    fn log_file(&self, i: usize, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.lab.lbs[i].dir.join(name))
            .unwrap()
    }

    /// `lbmesh status ARGS` on VM `i`, from `/`.
    fn status(&self, i: usize, args: &[&str]) -> Result<String, String> {
        output(self.lab.on_vm(i, "lbmesh").arg("status").args(args))
    }

    /// Step 6 on VM `i`: the README's command with this VM's priority and
    /// address, then keepalived started.
    fn step6_keepalived(&mut self, i: usize) {
        let command = adapt(
            &self.blocks[1],
            "--priority 150",
            &format!("--priority {}", PRIORITIES[i]),
            1,
        );
        let command = adapt(
            &command,
            "--unicast-src 198.18.0.11",
            &format!("--unicast-src {}", self.lab.lbs[i].ip),
            1,
        );
        // `systemctl enable --now keepalived` is done as systemd would.
        let (generate, systemctl) = command
            .rsplit_once('\n')
            .expect("the keepalived block: generate, then systemctl");
        assert_eq!(systemctl.trim(), "systemctl enable --now keepalived");
        self.lab.vm_sh(i, generate);
        let conf = self.lab.vm_sh(i, "cat /etc/keepalived/keepalived.conf");
        for peer in &self.lab.lbs {
            if peer.ip != self.lab.lbs[i].ip {
                assert!(
                    conf.contains(&peer.ip),
                    "no unicast peer {}:\n{conf}",
                    peer.ip
                );
            }
        }
        assert!(
            conf.contains("--config /etc/lbmesh/lbmesh.toml"),
            "keepalived's commands find the daemon through its config:\n{conf}"
        );
        self.start_keepalived(i);
    }

    /// Step 7: the original client's curl, as written, from the node at
    /// 198.18.0.21 that holds `ca.crt`, with the mesh's token.
    fn step7_curl(&self) -> serde_json::Value {
        let node = self.lab.dir.path().join("node");
        std::fs::create_dir_all(&node).unwrap();
        std::fs::copy(self.trusted.join("lbmesh-ca/ca.crt"), node.join("ca.crt")).unwrap();
        let token = std::fs::read_to_string(self.trusted.join("token")).unwrap();
        let (ns, addr) = &self.lab.nodes[0];
        assert_eq!(addr, "198.18.0.21");
        let out = output(
            Command::new("ip")
                .args(["netns", "exec", ns, "sh", "-ec", &self.blocks[2]])
                .current_dir(&node)
                .env("WEBHOOK_TOKEN", token.trim())
                .stdin(Stdio::null()),
        )
        .unwrap();
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("not JSON: {out}"))
    }
}

/// What `lbmesh status` says: (live peers, converged, the VIP holder).
fn read_status(text: &str) -> (usize, bool, Option<String>) {
    let live = text
        .lines()
        .filter(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.len() > 2 && w[0].starts_with("lb") && w[1] == "yes"
        })
        .count();
    let converged = text.lines().any(|l| l.starts_with("mesh converged"));
    let holder = text
        .lines()
        .find_map(|l| l.strip_prefix("floating IP on "))
        .map(|h| h.trim().to_owned());
    (live, converged, holder)
}

#[test]
fn the_three_vm_install_works_as_written() {
    let started = Instant::now();
    let mut install = Install::begin();

    // Step 5: "`lbmesh status` on any VM shows three live peers and `mesh
    // converged`", with no flag at all (it reads /etc/lbmesh/lbmesh.toml).
    for i in 0..3 {
        eventually_ok(Duration::from_secs(30), POLL, "three live peers", || {
            let text = install.status(i, &[])?;
            match read_status(&text) {
                (3, true, _) => Ok(()),
                _ => Err(text),
            }
        });
    }

    // Step 6, VM by VM: lb1 (the highest priority) takes the VIP first.
    install.step6_keepalived(0);
    let holder = install.lab.wait_vip_holder(Duration::from_secs(15));
    assert_eq!(holder, 0, "lb1 took the VIP");
    install.step6_keepalived(1);
    install.step6_keepalived(2);
    for i in 0..3 {
        eventually_ok(
            Duration::from_secs(15),
            POLL,
            "the holder in lbmesh status",
            || {
                let text = install.status(i, &["--config", "/etc/lbmesh/lbmesh.toml"])?;
                match read_status(&text) {
                    (3, true, Some(h)) if h == "lb1" => Ok(()),
                    _ => Err(text),
                }
            },
        );
    }

    // Step 7: the curl goes to lb2, which does not hold the VIP.
    assert_eq!(install.lab.vip_holder(), Some(0));
    let answer = install.step7_curl();
    assert_eq!(answer["result"], "registered", "{answer}");
    assert_eq!(answer["peer"], "lb2", "{answer}");
    let greeting = eventually_ok(
        Duration::from_secs(15),
        POLL,
        "traffic through VIP:443",
        || {
            install
                .lab
                .client_greeting(443)
                .ok_or_else(|| "no answer".to_owned())
        },
    );
    assert_eq!(greeting, "node-k1");

    // A hard crash of the holder: frozen, link down, every process killed.
    // Only a connection started once all that is done proves that traffic
    // came back through another VM.
    let mut prober = install.lab.prober(443);
    std::thread::sleep(Duration::from_millis(300));
    let frozen = install.lab.hard_crash(0);
    let dead = lab::now();
    let back = prober
        .first_success_after(dead, Duration::from_secs(10))
        .expect("traffic through VIP:443 came back after the holder crashed");
    drop(prober);
    // How fast is measured by tests/failover.rs and the benchmark (the
    // README's "within a second"); here, on a machine as loaded as CI's,
    // that it comes back at all, within the 10 s above.
    let new_holder = install.lab.wait_vip_holder(Duration::from_secs(5));
    assert_ne!(new_holder, 0);
    eprintln!(
        "lb1 crashed; lb{} holds the VIP, traffic back after {:.3} s",
        new_holder + 1,
        back - frozen
    );
    assert_eq!(install.lab.client_greeting(443).as_deref(), Some("node-k1"));
    let name = format!("lb{}", new_holder + 1);
    for i in 1..3 {
        eventually_ok(
            Duration::from_secs(15),
            POLL,
            "the new holder in lbmesh status",
            || {
                let text = install.status(i, &["--config", "/etc/lbmesh/lbmesh.toml"])?;
                match read_status(&text) {
                    (_, _, Some(h)) if h == name => Ok(()),
                    _ => Err(text),
                }
            },
        );
    }
    eprintln!("the install took {:.1} s", started.elapsed().as_secs_f64());
}
