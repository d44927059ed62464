//! Start-up as an operator meets it: a generated token goes to its file and
//! nowhere else when standard output is not a terminal (under systemd it
//! would stay in the journal), the data directory and what lbmesh writes
//! there are private whatever the directory's mode was, and a start that
//! fails leaves nothing behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

/// Every file and directory under `dir` that group or others may read.
fn not_private(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        // HAProxy's sockets are its own; everything else is lbmesh's.
        if meta.file_type().is_dir() {
            found.extend(not_private(&e.path()));
        } else if !meta.file_type().is_file() {
            continue;
        }
        if meta.permissions().mode() & 0o077 != 0 {
            found.push(format!(
                "{} {:o}",
                e.path().display(),
                meta.permissions().mode()
            ));
        }
    }
    found
}

#[test]
fn a_generated_token_reaches_only_its_file_and_the_data_directory_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();

    let mut d = Daemon::start(DaemonOpts {
        data_dir: Some(data.clone()),
        ..DaemonOpts::default()
    });
    let v = d.add(
        "traefik",
        free_port("127.0.0.1"),
        "127.0.0.1:30443".parse().unwrap(),
    );
    assert_eq!(v["result"], "registered", "{v}");
    assert_eq!(d.stop().code(), Some(0));

    // The daemon's standard output and error (a file here, not a terminal)
    // name the token's file, never the token.
    let token = std::fs::read_to_string(d.data_dir.join("token")).unwrap();
    let token = token.trim();
    assert!(token.len() >= 16, "{token:?}");
    let log = d.log();
    assert!(!log.contains(token), "the token reached the log:\n{log}");
    assert!(
        log.contains("token"),
        "the log says where the token is:\n{log}"
    );

    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data directory mode {mode:o}");
    let open = not_private(&data);
    assert!(open.is_empty(), "readable by others: {open:?}");
}

#[test]
fn a_start_that_fails_leaves_no_token_ca_or_directory_behind() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let ip = test_ip();
    let config = dir.path().join("lbmesh.toml");
    std::fs::write(
        &config,
        format!(
            "node-id = \"lb1\"\napi-listen = \"{ip}:{}\"\ngossip-listen = \"{ip}:{}\"\n\
             bind-address = \"{ip}\"\ndata-dir = \"{}\"\n\n[haproxy]\nbinary = \"haproxy-that-is-not-installed\"\n",
            free_port(&ip),
            free_udp_port(&ip),
            data.display()
        ),
    )
    .unwrap();
    let out = Command::new("timeout")
        .args(["20", BIN, "serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("apt-get install haproxy"),
        "no hint how to install HAProxy: {stderr}"
    );
    assert!(
        !data.exists(),
        "a failed start left {}: {:?}",
        data.display(),
        std::fs::read_dir(&data).map(|r| r.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        left,
        vec![std::ffi::OsString::from("lbmesh.toml")],
        "{stderr}"
    );
}
