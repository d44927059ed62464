//! The CLI reaches its daemon the way the daemon was set up: `lbmesh status`,
//! `drain` and `keepalived check|notify|config` read the daemon's config for
//! the API URL and scheme, the token file and the certificate to trust;
//! certificates are always verified; http against https is reported as that.
//! Usage errors and tokens carried over from the original setup.

mod common;

use std::process::Command;

use common::*;

fn lbmesh(args: &[&str]) -> (bool, String) {
    lbmesh_env(args, &[])
}

fn lbmesh_env(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("LBMESH_CONFIG")
        .envs(env.iter().copied())
        .current_dir("/")
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

fn https_daemon() -> Daemon {
    Daemon::start(DaemonOpts {
        toml: format!("{}\n[api]\ntls-self-signed = true\n", fast_toml("", "")),
        scheme: "https",
        ..DaemonOpts::default()
    })
}

#[test]
fn status_check_and_notify_find_an_https_daemon_from_its_config() {
    let d = https_daemon();
    let cfg = path_str(&d.config_path());
    // Run from /, as keepalived does: nothing relative to lean on.
    let (ok, out) = lbmesh(&["status", "--config", &cfg]);
    assert!(ok, "{out}");
    assert!(out.contains("peer lb1"), "{out}");
    let (ok, out) = lbmesh(&["keepalived", "check", "--config", &cfg]);
    assert!(ok, "{out}");
    // LBMESH_CONFIG says the same as --config.
    let (ok, out) = lbmesh_env(&["status"], &[("LBMESH_CONFIG", &cfg)]);
    assert!(ok && out.contains("peer lb1"), "{out}");
    let (ok, out) = lbmesh_env(&["keepalived", "check"], &[("LBMESH_CONFIG", &cfg)]);
    assert!(ok, "{out}");
    // drain (its timeout in the query) and undrain reach it the same way.
    let (ok, out) = lbmesh(&["drain", "--config", &cfg, "--timeout", "2s"]);
    assert!(
        ok && out.contains("drained: this VM no longer holds the VIP"),
        "{out}"
    );
    let (ok, out) = lbmesh(&["undrain", "--config", &cfg]);
    assert!(ok && out.contains("undrained"), "{out}");
    let (ok, out) = lbmesh(&[
        "keepalived",
        "notify",
        "--config",
        &cfg,
        "INSTANCE",
        "VI_LBMESH",
        "MASTER",
        "150",
    ]);
    assert!(ok, "{out}");
    assert_eq!(
        d.status()["vrrp"]["state"]
            .as_str()
            .map(|s| s.starts_with("MASTER")),
        Some(true),
        "{}",
        d.status()
    );
}

#[test]
fn an_untrusted_certificate_is_refused_and_http_against_https_is_named() {
    let d = https_daemon();
    let token = path_str(&d.token_file);
    // The self-signed certificate is not in the system roots: no token goes out.
    let (ok, out) = lbmesh(&["status", "--api", &d.url(""), "--token-file", &token]);
    assert!(!ok);
    assert!(out.contains("not trusted") && out.contains("--ca"), "{out}");
    // Pinned, it works.
    let ca = path_str(&d.data_dir.join("tls/api.crt"));
    let (ok, out) = lbmesh(&[
        "status",
        "--api",
        &d.url(""),
        "--token-file",
        &token,
        "--ca",
        &ca,
    ]);
    assert!(ok, "{out}");
    // SSL_CERT_FILE replaces the system roots, as for curl.
    let (ok, out) = lbmesh_env(
        &["status", "--api", &d.url(""), "--token-file", &token],
        &[("SSL_CERT_FILE", &ca)],
    );
    assert!(ok, "{out}");
    // Plain HTTP to an HTTPS API: said as such.
    let http = d.url("").replacen("https://", "http://", 1);
    let (ok, out) = lbmesh(&["keepalived", "check", "--api", &http]);
    assert!(!ok);
    assert!(
        out.contains("answers over HTTPS there, not plain HTTP"),
        "{out}"
    );

    // And the other way round.
    let plain = Daemon::start(DaemonOpts::default());
    let https = plain.url("").replacen("http://", "https://", 1);
    let (ok, out) = lbmesh(&["keepalived", "check", "--api", &https]);
    assert!(!ok);
    assert!(out.contains("answers plain HTTP there, not HTTPS"), "{out}");
}

#[test]
fn keepalived_config_writes_absolute_paths_and_needs_a_token_for_notify() {
    let d = Daemon::start(DaemonOpts::default());
    let dir = d.dir.path();
    // Relative paths, as a user in the config's directory would type them.
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("LBMESH_CONFIG")
            .current_dir(dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let base = [
        "keepalived",
        "config",
        "--vip",
        "198.18.0.100/24",
        "--interface",
        "eth0",
        "--priority",
        "150",
    ];
    let (ok, conf, err) = run(&[&base[..], &["--config", "lbmesh.toml"]].concat());
    assert!(ok, "{err}");
    let cfg = path_str(&d.config_path());
    assert!(
        conf.contains(&format!("keepalived check --alive --config {cfg}\""))
            && conf.contains(&format!("keepalived notify --config {cfg}\"")),
        "{conf}"
    );
    // A token file that is not there: the notify command could not authenticate.
    let (ok, _, err) = run(&[
        &base[..],
        &["--api", &d.url(""), "--token-file", "nothing-here"],
    ]
    .concat());
    assert!(!ok);
    assert!(err.contains("could not authenticate"), "{err}");
    // With the FIFO instead, no token is needed.
    let (ok, conf, err) = run(&[
        &base[..],
        &[
            "--api",
            &d.url(""),
            "--token-file",
            "nothing-here",
            "--notify-fifo",
            "vrrp.fifo",
            "--track-file",
            "keepalived.track",
        ],
    ]
    .concat());
    assert!(ok, "{err}");
    assert!(
        conf.contains(&format!(
            "vrrp_notify_fifo {}",
            path_str(&dir.join("vrrp.fifo"))
        )),
        "{conf}"
    );
    assert!(!conf.contains("notify \""), "{conf}");
}

#[test]
fn usage_errors_exit_2_and_a_bad_variable_is_named_as_such() {
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(BIN)
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, _, err) = run(&["serve"], &[("LBMESH_API_LISTEN", "nowhere")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("LBMESH_API_LISTEN") && !err.contains("--api-listen"),
        "{err}"
    );
    let (code, _, err) = run(&["serve", "--api-listen", "nowhere"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--api-listen"), "{err}");
    let (code, _, err) = run(&["status", "--no-such-flag"], &[]);
    assert_eq!(code, Some(2), "{err}");
    // Help is no error: on standard output, status 0.
    let (code, out, _) = run(&["status", "--help"], &[]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--config"), "{out}");
}

#[test]
fn a_short_token_from_the_original_setup_works_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "sekrit\n").unwrap();
    let d = Daemon::start(DaemonOpts {
        token_file: Some(token_file),
        ..DaemonOpts::default()
    });
    let backend = Backend::start("short-token");
    let r = d.add("traefik", free_port(&d.ip), backend.addr);
    assert_eq!(r["result"], "registered", "{r}");
    assert!(
        d.log().contains("shorter than 16 characters"),
        "{}",
        d.log()
    );
    assert!(!d.log().contains("sekrit"), "the token reached the log");
    let (ok, out) = lbmesh(&["status", "--config", &path_str(&d.config_path())]);
    assert!(ok, "{out}");
}
