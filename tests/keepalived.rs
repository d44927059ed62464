//! lbmesh's keepalived commands against real daemons and keepalived's own
//! config check. (Real VRRP failover runs in tests/netns.rs.)

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

fn lbmesh(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().unwrap()
}

#[test]
fn the_check_answers_keepalived_with_its_exit_code_and_one_line() {
    let d = Daemon::start(DaemonOpts::default());
    let out = lbmesh(&["keepalived", "check", "--api", &d.url("")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // HAProxy down for good (its binary gone): the check fails and says why.
    let mut d = d;
    d.stop();
    let out = lbmesh(&["keepalived", "check", "--api", &d.url("")]);
    assert_eq!(out.status.code(), Some(1));
    let line = String::from_utf8_lossy(&out.stdout);
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains("does not answer"), "{line}");
}

#[test]
fn notify_reports_vrrp_state_and_two_masters_are_a_split_brain() {
    let m = mesh_of(2, "quic");
    m.converged(&[0, 1]);
    for (i, state) in [(0, "MASTER"), (1, "BACKUP")] {
        let p = &m.peers[i];
        let out = lbmesh(&[
            "keepalived",
            "notify",
            "--api",
            &p.url(""),
            "--token-file",
            &p.token_file.to_string_lossy(),
            "INSTANCE",
            "VI_LBMESH",
            state,
            "150",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    eventually(
        Duration::from_secs(10),
        "the mesh to know who holds the VIP",
        || {
            let s = m.peers[1].status();
            (s["vrrp"]["masters"] == serde_json::json!(["lb1"])
                && s["vrrp"]["split_brain"] == false)
                .then_some(())
        },
    );
    assert_eq!(m.peers[1].status()["vrrp"]["state"], "BACKUP VI_LBMESH");
    let table = sh(
        &format!(
            "{BIN} status --api {} --token-file {}",
            m.peers[1].url(""),
            m.peers[1].token_file.display()
        ),
        &[],
    );
    assert!(table.contains("MASTER VI_LBMESH"), "{table}");

    // The second peer becomes MASTER too: reported in status, metrics and the log.
    let p = &m.peers[1];
    let out = lbmesh(&[
        "keepalived",
        "notify",
        "--api",
        &p.url(""),
        "--token-file",
        &p.token_file.to_string_lossy(),
        "INSTANCE",
        "VI_LBMESH",
        "MASTER",
    ]);
    assert!(out.status.success());
    eventually(
        Duration::from_secs(10),
        "the split brain to be reported",
        || {
            let s = m.peers[0].status();
            (s["vrrp"]["split_brain"] == true).then_some(())
        },
    );
    let metrics = sh(&format!("curl -s {}", m.peers[0].url("/metrics")), &[]);
    assert!(metrics.contains("lbmesh_vrrp_masters 2"), "{metrics}");
    eventually(Duration::from_secs(5), "a log line", || {
        m.peers[0].log().contains("split brain").then_some(())
    });

    // Bad notifications change nothing.
    let out = lbmesh(&[
        "keepalived",
        "notify",
        "--api",
        &p.url(""),
        "--token-file",
        &p.token_file.to_string_lossy(),
        "INSTANCE",
        "VI_LBMESH",
        "KING",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown VRRP state"));
}

#[test]
fn the_generated_config_passes_keepalived_check() {
    let d = Daemon::start(DaemonOpts::default());
    let dir = tempfile::tempdir().unwrap();
    let api = d.url("");
    for extra in [
        vec![],
        vec![
            "--unicast-src",
            "198.18.0.11",
            "--peer",
            "198.18.0.12",
            "--peer",
            "198.18.0.13",
        ],
    ] {
        let mut args = vec![
            "keepalived",
            "config",
            "--vip",
            "198.18.0.100/24",
            "--interface",
            "eth0",
            "--priority",
            "150",
            "--api",
            &api,
        ];
        let tf = d.token_file.to_string_lossy().into_owned();
        args.extend(["--token-file", &tf]);
        args.extend(extra.iter().copied());
        let out = lbmesh(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = dir.path().join("keepalived.conf");
        std::fs::write(&conf, &out.stdout).unwrap();
        let check = Command::new("keepalived")
            .arg("-t")
            .arg("-f")
            .arg(&conf)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "keepalived -t: {}\n{}",
            String::from_utf8_lossy(&check.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // Unicast peers can come from the mesh itself.
    let out = lbmesh(&[
        "keepalived",
        "config",
        "--vip",
        "198.18.0.100/24",
        "--interface",
        "eth0",
        "--priority",
        "100",
        "--unicast-src",
        "127.0.0.9",
        "--api",
        &d.url(""),
        "--token-file",
        &d.token_file.to_string_lossy(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("        {}\n", d.gossip.ip())));
    let bad = lbmesh(&[
        "keepalived",
        "config",
        "--vip",
        "198.18.0.100",
        "--interface",
        "eth0",
        "--priority",
        "150",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--vip"));
}

#[test]
fn the_keepalived_templates_in_deploy_pass_keepalived_check() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/keepalived"),
    )
    .unwrap()
    {
        let path = e.unwrap().path();
        if path.extension().is_some_and(|x| x == "conf") {
            // The templates name the installed binary; check them with this one.
            let text = std::fs::read_to_string(&path)
                .unwrap()
                .replace("/usr/local/bin/lbmesh", BIN);
            let conf = dir.path().join("k.conf");
            std::fs::write(&conf, text).unwrap();
            let out = Command::new("keepalived")
                .arg("-t")
                .arg("-f")
                .arg(&conf)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 2);
}

#[test]
fn hooks_run_on_vrrp_transitions_and_the_notify_fifo_is_read_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("transitions");
    let fifo = dir.path().join("vrrp.fifo");
    let hook = |state: &str| {
        format!(
            "[\"sh\", \"-c\", \"echo {state} $LBMESH_VRRP_INSTANCE >> {}\"]",
            marks.display()
        )
    };
    let toml = format!(
        "{}\n[keepalived]\nnotify-fifo = \"{}\"\non-master = {}\non-backup = {}\n",
        fast_toml("", ""),
        fifo.display(),
        hook("master"),
        hook("backup")
    );
    let d = Daemon::start(DaemonOpts {
        toml,
        ..DaemonOpts::default()
    });
    eventually(Duration::from_secs(5), "the FIFO", || {
        fifo.exists().then_some(())
    });
    // keepalived writes lines like these; several at once keep their order.
    let mut w = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    use std::io::Write;
    w.write_all(b"INSTANCE \"VI_1\" BACKUP 100\nINSTANCE \"VI_1\" MASTER 100\nINSTANCE \"VI_1\" MASTER 100\ngarbage line\n").unwrap();
    drop(w);
    eventually(Duration::from_secs(10), "both hooks to run", || {
        let text = std::fs::read_to_string(&marks).ok()?;
        (text.lines().count() == 2).then_some(text)
    });
    std::thread::sleep(Duration::from_millis(500));
    // One run per transition (the repeated MASTER runs nothing), in order.
    assert_eq!(
        std::fs::read_to_string(&marks).unwrap(),
        "backup VI_1\nmaster VI_1\n"
    );
    assert_eq!(d.status()["vrrp"]["state"], "MASTER VI_1");
    assert!(d.log().contains("ignoring a notify FIFO line"));
}
