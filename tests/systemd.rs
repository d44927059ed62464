//! The systemd units in deploy/systemd pass `systemd-analyze verify`, alone
//! and with the external-mode drop-in, and keep the directories the
//! documented modes need.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_lbmesh");

fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/systemd")
}

/// Copies `unit` (with `drop_ins`) into a temp dir, the installed binary's
/// path replaced by this build's, and verifies it; returns the warnings.
fn verify(unit: &str, drop_ins: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(deploy().join(unit))
        .unwrap()
        .replace("/usr/local/bin/lbmesh", BIN);
    std::fs::write(dir.path().join(unit), text).unwrap();
    if !drop_ins.is_empty() {
        let d = dir.path().join(format!("{unit}.d"));
        std::fs::create_dir(&d).unwrap();
        for f in drop_ins {
            std::fs::copy(deploy().join(format!("{unit}.d")).join(f), d.join(f)).unwrap();
        }
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join(unit))
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{unit}: {text}");
    text
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    for (unit, drop_ins) in [
        ("lbmesh.service", &[][..]),
        ("lbmesh.service", &["external-haproxy.conf"][..]),
    ] {
        let text = verify(unit, drop_ins);
        let warnings: Vec<&str> = text
            .lines()
            // The host may lack haproxy.service, which the drop-in wants.
            .filter(|l| !l.contains("haproxy.service"))
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert!(warnings.is_empty(), "{unit} {drop_ins:?}: {warnings:?}");
    }
}

#[test]
fn the_units_give_each_documented_mode_the_directories_it_writes() {
    let unit = std::fs::read_to_string(deploy().join("lbmesh.service")).unwrap();
    for line in [
        "ExecStart=/usr/local/bin/lbmesh serve --config /etc/lbmesh/lbmesh.toml",
        "StateDirectory=lbmesh",
        "RuntimeDirectory=lbmesh",
        "RuntimeDirectoryPreserve=yes",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l == line),
            "lbmesh.service lacks {line}"
        );
    }
    // The notify FIFO of the keepalived example lives in RuntimeDirectory.
    let multicast = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/keepalived/keepalived-multicast.conf"),
    )
    .unwrap();
    assert!(
        multicast.contains("vrrp_notify_fifo /run/lbmesh/"),
        "{multicast}"
    );
    // External mode writes /etc/haproxy/haproxy.cfg under ProtectSystem=full.
    let external =
        std::fs::read_to_string(deploy().join("lbmesh.service.d/external-haproxy.conf")).unwrap();
    let config = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/config/lbmesh-external.toml"),
    )
    .unwrap();
    assert!(config.contains("config-path = \"/etc/haproxy/haproxy.cfg\""));
    assert!(
        external.lines().any(|l| l == "ReadWritePaths=/etc/haproxy"),
        "{external}"
    );
}
