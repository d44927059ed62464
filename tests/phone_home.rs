//! `lbmesh phone-home` against a three-peer mesh on loopback, and the
//! original alpine/curl loop against every peer.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

/// A running `lbmesh phone-home`, killed when dropped.
struct PhoneHome(Child, tempfile::TempDir);

impl PhoneHome {
    fn start(env: &[(&str, String)]) -> PhoneHome {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new(BIN)
            .arg("phone-home")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LBMESH_LOG", "info")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        PhoneHome(child, dir)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.1.path().join("log")).unwrap_or_default()
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        signal(self.0.id(), "TERM");
        for _ in 0..200 {
            if let Some(s) = self.0.try_wait().unwrap() {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("phone-home did not exit on SIGTERM:\n{}", self.log());
    }
}

impl PhoneHome {
    /// For a process that already exited.
    fn terminate_quietly(&mut self) -> Option<std::process::ExitStatus> {
        self.0.try_wait().ok().flatten()
    }
}

impl Drop for PhoneHome {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        if std::thread::panicking() {
            eprintln!("---- phone-home log ----\n{}", self.log());
        }
    }
}

fn hook(d: &Daemon) -> String {
    d.url("/hooks/update-haproxy")
}

#[test]
fn fails_over_past_a_dead_peer_is_served_everywhere_and_withdraws_on_sigterm() {
    let mut m = mesh_of(3, "quic");
    m.converged(&[0, 1, 2]);
    let backend = Backend::start("nodeport");
    let port = free_port("127.0.0.1");
    m.peers[0].crash();
    let webhook = format!(
        "{},{},{}",
        hook(&m.peers[0]),
        hook(&m.peers[1]),
        hook(&m.peers[2])
    );
    let mut client = PhoneHome::start(&[
        ("WEBHOOK", webhook),
        ("WEBHOOK_TOKEN", m.peers[1].token.clone()),
        ("FRONTEND_PORT", port.to_string()),
        ("BACKEND_PORT", backend.addr.port().to_string()),
        ("NAME", "traefik".into()),
        ("REPEAT_INTERVAL", "2".into()),
        // No DST_IP: the peer says which address the call comes from.
    ]);
    for i in [1, 2] {
        let got = eventually(
            Duration::from_secs(15),
            "the registration served by the live peers",
            || greeting(m.peers[i].frontend(port)),
        );
        assert_eq!(got, "nodeport");
    }
    let st = m.peers[2].get("/v1/frontends").1;
    assert_eq!(
        st["frontends"][0]["servers"][0]["address"],
        format!("127.0.0.1:{}", backend.addr.port())
    );
    // Renewals keep coming and the lease asked for is three intervals and a minute.
    let lease = st["frontends"][0]["servers"][0]["expires_in_seconds"]
        .as_u64()
        .unwrap();
    assert!((60..=66).contains(&lease), "lease {lease}");
    assert!(
        client.log().contains("peer failed; trying the next"),
        "{}",
        client.log()
    );

    let status = client.terminate();
    assert!(status.success(), "{status}");
    for i in [1, 2] {
        eventually(
            Duration::from_secs(10),
            "the server withdrawn everywhere",
            || greeting(m.peers[i].frontend(port)).is_none().then_some(()),
        );
    }
    assert!(
        m.peers[1].get("/v1/frontends").1["frontends"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn a_changed_node_ip_moves_the_server() {
    let m = mesh_of(3, "quic");
    m.converged(&[0, 1, 2]);
    let nodeport = free_port("127.0.0.1");
    let old = Backend::start_at(format!("127.0.0.1:{nodeport}").parse().unwrap(), "old-node");
    let new = Backend::start_at(format!("127.0.0.2:{nodeport}").parse().unwrap(), "new-node");
    let port = free_port("127.0.0.1");
    let ip_file = m.dir.path().join("node-ip");
    std::fs::write(&ip_file, "127.0.0.1\n").unwrap();
    let _client = PhoneHome::start(&[
        ("WEBHOOK", hook(&m.peers[0])),
        (
            "WEBHOOK_TOKEN_FILE",
            m.peers[0].token_file.to_string_lossy().into_owned(),
        ),
        ("FRONTEND_PORT", port.to_string()),
        ("BACKEND_PORT", nodeport.to_string()),
        ("NAME", "mqtt".into()),
        ("REPEAT_INTERVAL", "1".into()),
        ("DST_IP_FILE", ip_file.to_string_lossy().into_owned()),
    ]);
    for p in &m.peers {
        assert_eq!(
            eventually(Duration::from_secs(15), "the old node served", || greeting(
                p.frontend(port)
            )),
            "old-node"
        );
    }
    std::fs::write(&ip_file, "127.0.0.2\n").unwrap();
    for p in &m.peers {
        eventually(Duration::from_secs(15), "only the new node served", || {
            let servers = p.get(&format!("/v1/frontends/{port}")).1["servers"].clone();
            let addrs: Vec<&str> = servers
                .as_array()?
                .iter()
                .filter_map(|s| s["address"].as_str())
                .collect();
            (addrs == [format!("127.0.0.2:{nodeport}").as_str()]).then_some(())
        });
        eventually(Duration::from_secs(10), "traffic to the new node", || {
            (greeting(p.frontend(port)).as_deref() == Some("new-node")).then_some(())
        });
    }
    drop(old);
    drop(new);
}

#[test]
fn the_original_alpine_curl_loop_works_against_every_peer() {
    let m = mesh_of(3, "quic");
    m.converged(&[0, 1, 2]);
    let backend = Backend::start("looped");
    let ports: Vec<u16> = (0..3).map(|_| free_port("127.0.0.1")).collect();
    // The original container's loop, with the IP lookup replaced by a fixed one.
    let script = r#"
        DST_IP=127.0.0.1
        i=0
        while [ $i -lt 2 ]; do
            curl -s \
                -H "Content-Type:application/json" \
                -H "X-Funkypenguin-Token:$WEBHOOK_TOKEN" \
                -X POST \
                -d "{\"dst-ip\":\"$DST_IP\",\"frontend-port\":\"$FRONTEND_PORT\",\"backend-port\":\"$BACKEND_PORT\",\"action\":\"$ACTION\",\"name\":\"$NAME\",\"send-proxy\":\"$SEND_PROXY\"}" \
                $WEBHOOK
            sleep $REPEAT_INTERVAL
            i=$((i+1))
        done"#;
    for (i, p) in m.peers.iter().enumerate() {
        let out = sh(
            script,
            &[
                ("WEBHOOK", &hook(p)),
                ("WEBHOOK_TOKEN", &p.token),
                ("FRONTEND_PORT", &ports[i].to_string()),
                ("BACKEND_PORT", &backend.addr.port().to_string()),
                ("ACTION", "add"),
                ("NAME", &format!("svc{i}")),
                ("SEND_PROXY", ""),
                ("REPEAT_INTERVAL", "1"),
            ],
        );
        assert!(
            out.contains("\"registered\"") && out.contains("\"renewed\""),
            "{out}"
        );
    }
    for p in &m.peers {
        for port in &ports {
            let got = eventually(
                Duration::from_secs(15),
                "every registration at every peer",
                || greeting(p.frontend(*port)),
            );
            assert_eq!(got, "looped");
        }
    }
}

#[test]
fn https_peers_are_reached_with_a_pinned_ca_and_refused_without() {
    let d = Daemon::start(DaemonOpts {
        toml: format!("{}\n[api]\ntls-self-signed = true\n", fast_toml("", "")),
        scheme: "https",
        ..DaemonOpts::default()
    });
    let backend = Backend::start("tls");
    let port = free_port("127.0.0.1");
    let env = |ca: Option<&std::path::Path>| {
        let mut e = vec![
            ("WEBHOOK", hook(&d)),
            ("WEBHOOK_TOKEN", d.token.clone()),
            ("FRONTEND_PORT", port.to_string()),
            ("BACKEND_PORT", backend.addr.port().to_string()),
            ("NAME", "pinned".into()),
            ("REPEAT_INTERVAL", "once".into()),
            ("DST_IP", "127.0.0.1".into()),
        ];
        if let Some(ca) = ca {
            e.push(("WEBHOOK_CA", ca.to_string_lossy().into_owned()));
        }
        e
    };
    // Without the pin, the self-signed certificate is not trusted.
    let mut unpinned = PhoneHome::start(&env(None));
    let status = unpinned.0.wait().unwrap();
    assert!(!status.success(), "an unpinned client must not trust it");
    assert!(
        unpinned.log().to_lowercase().contains("certificate"),
        "{}",
        unpinned.log()
    );
    let _ = unpinned.terminate_quietly();
    // Pinned: registered once, and the process exits 0.
    let mut pinned = PhoneHome::start(&env(Some(&d.data_dir.join("tls/api.crt"))));
    let status = pinned.0.wait().unwrap();
    assert!(status.success(), "{}", pinned.log());
    assert_eq!(
        eventually(Duration::from_secs(10), "traffic", || greeting(
            d.frontend(port)
        )),
        "tls"
    );
}
