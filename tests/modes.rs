//! HTTPS for the phone-home API, and HAProxy run as an external service.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn the_original_curl_works_over_https_with_a_given_certificate() {
    let ip = test_ip();
    let certs = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".into(), ip.clone()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (
        certs.path().join("fullchain.pem"),
        certs.path().join("privkey.pem"),
    );
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let toml = format!(
        "{}\n[api]\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
        fast_toml("", ""),
        cert_path.display(),
        key_path.display()
    );
    let d = Daemon::start(DaemonOpts {
        toml,
        scheme: "https",
        ip: ip.clone(),
        ..DaemonOpts::default()
    });
    let backend = Backend::start("secure");
    let port = free_port("127.0.0.1");
    // Exactly the original client, trusting the certificate like a real CA.
    let out = sh(
        r#"curl -H "Content-Type:application/json" -H "X-Funkypenguin-Token:$WEBHOOK_TOKEN" -X POST -d "{\"dst-ip\":\"127.0.0.1\",\"frontend-port\":\"$FRONTEND_PORT\",\"backend-port\":\"$BACKEND_PORT\",\"action\":\"add\",\"name\":\"traefik\"}" $WEBHOOK"#,
        &[
            ("WEBHOOK", &d.url("/hooks/update-haproxy")),
            ("WEBHOOK_TOKEN", &d.token),
            ("FRONTEND_PORT", &port.to_string()),
            ("BACKEND_PORT", &backend.addr.port().to_string()),
            ("CURL_CA_BUNDLE", &cert_path.to_string_lossy()),
        ],
    );
    assert!(out.contains("\"registered\""), "{out}");
    assert_eq!(
        eventually(Duration::from_secs(10), "traffic", || greeting(
            d.frontend(port)
        )),
        "secure"
    );
    // Plain HTTP to the TLS port is not served.
    let plain = http(
        "GET",
        &format!("http://{}/healthz", d.api),
        None,
        None,
        None,
    );
    assert_ne!(plain.0, 200);
}

#[test]
fn external_mode_reloads_an_haproxy_it_does_not_own() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("haproxy.cfg");
    let runtime = dir.path().join("admin.sock");
    std::fs::write(
        &cfg,
        format!(
            "global\n    stats socket \"{}\" mode 600 level admin expose-fd listeners\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\nlisten placeholder\n    bind 127.0.0.1:{}\n    server s 127.0.0.1:1 disabled\n",
            runtime.display(),
            free_port("127.0.0.1")
        ),
    )
    .unwrap();
    let service = service_haproxy(&cfg, &runtime);
    let pid = service.id();
    let toml = fast_toml(
        "",
        &format!(
            "mode = \"external\"\nconfig-path = \"{}\"\nruntime-socket = \"{}\"\nreload-command = [\"sh\", \"-c\", \"kill -USR2 {pid}\"]",
            cfg.display(),
            runtime.display()
        ),
    );
    let d = Daemon::start(DaemonOpts {
        toml,
        ..DaemonOpts::default()
    });
    let backend = Backend::start("external");
    let port = free_port("127.0.0.1");
    d.add("traefik", port, backend.addr);
    assert_eq!(greeting(d.frontend(port)).as_deref(), Some("external"));
    let st = d.status();
    assert_eq!(st["haproxy"]["mode"], "external");
    assert!(
        st["haproxy"]["master_pid"].is_null(),
        "lbmesh does not own this HAProxy"
    );
    assert!(
        std::fs::read_to_string(&cfg)
            .unwrap()
            .contains(&format!("{port}_frontend"))
    );
    // A server-only change uses the service's Runtime API, no reload.
    let reloads = d.in_step()["haproxy"]["reloads"].as_u64().unwrap();
    let second = Backend::start("external-2");
    d.add("traefik", port, second.addr);
    assert_eq!(d.in_step()["haproxy"]["reloads"].as_u64().unwrap(), reloads);
    // The service's own log reaches lbmesh's, at its level, although its
    // standard error goes elsewhere: through lbmesh's log socket.
    second.stop();
    eventually(
        Duration::from_secs(10),
        "HAProxy's alert in lbmesh's log",
        || {
            d.log()
                .lines()
                .any(|l| l.contains("ERROR haproxy:") && l.contains("is DOWN"))
                .then_some(())
        },
    );
    // lbmesh stopping leaves the service running.
    let frontend = d.frontend(port);
    drop(d);
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(greeting(frontend).is_some());
}

#[test]
fn the_api_serves_https_with_a_self_signed_or_cluster_ca_certificate_clients_pin() {
    // Self-signed, made on first start.
    let d = Daemon::start(DaemonOpts {
        toml: format!("{}\n[api]\ntls-self-signed = true\n", fast_toml("", "")),
        scheme: "https",
        ..DaemonOpts::default()
    });
    let pinned = d.data_dir.join("tls/api.crt");
    let url = d.url("/healthz");
    let ok = sh(
        &format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --cacert {} {url}",
            pinned.display()
        ),
        &[],
    );
    assert_eq!(ok, "200");
    // Without the pin, the certificate is not trusted.
    let refused = std::process::Command::new("curl")
        .args(["-s", &url])
        .status()
        .unwrap();
    assert!(
        !refused.success(),
        "an unpinned client must not trust a self-signed certificate"
    );

    let ip2 = test_ip();
    // Issued from a cluster CA for the API's address.
    let ca = tempfile::tempdir().unwrap();
    sh(&format!("{BIN} ca init --dir {}", ca.path().display()), &[]);
    sh(
        &format!(
            "{BIN} ca issue --dir {} --node-id lb1 --name {ip2} --name localhost",
            ca.path().display()
        ),
        &[],
    );
    let d = Daemon::start(DaemonOpts {
        toml: format!(
            "{}\n[api]\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
            fast_toml("", ""),
            ca.path().join("lb1.crt").display(),
            ca.path().join("lb1.key").display()
        ),
        scheme: "https",
        ip: ip2.clone(),
        ..DaemonOpts::default()
    });
    let ok = sh(
        &format!(
            "curl -s -o /dev/null -w '%{{http_code}}' --cacert {} {}",
            ca.path().join("ca.crt").display(),
            d.url("/healthz")
        ),
        &[],
    );
    assert_eq!(ok, "200");
}

#[test]
fn a_renewed_api_certificate_is_served_without_a_restart() {
    let ip = test_ip();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (
        dir.path().join("fullchain.pem"),
        dir.path().join("privkey.pem"),
    );
    // Like certbot: a certificate from "CA" a, later replaced by one from b.
    let issue = |ca: &str| {
        let ca_dir = dir.path().join(ca);
        sh(&format!("{BIN} ca init --dir {}", ca_dir.display()), &[]);
        sh(
            &format!(
                "{BIN} ca issue --dir {} --node-id api --name {ip}",
                ca_dir.display()
            ),
            &[],
        );
        ca_dir
    };
    let (a, b) = (issue("a"), issue("b"));
    let install = |ca: &std::path::Path| {
        for (from, to) in [("api.crt", &cert), ("api.key", &key)] {
            let tmp = to.with_extension("tmp");
            std::fs::copy(ca.join(from), &tmp).unwrap();
            std::fs::rename(&tmp, to).unwrap();
        }
    };
    install(&a);
    let d = Daemon::start(DaemonOpts {
        toml: format!(
            "{}\n[api]\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
            fast_toml("", ""),
            cert.display(),
            key.display()
        ),
        scheme: "https",
        ip: ip.clone(),
        ..DaemonOpts::default()
    });
    let trusted_by = |ca: &std::path::Path| {
        std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--cacert"])
            .arg(ca.join("ca.crt"))
            .arg(d.url("/healthz"))
            .status()
            .unwrap()
            .success()
    };
    assert!(trusted_by(&a) && !trusted_by(&b));
    install(&b);
    eventually(
        Duration::from_secs(20),
        "the renewed certificate to be served",
        || trusted_by(&b).then_some(()),
    );
    assert!(!trusted_by(&a));
    assert!(d.log().contains("loaded the renewed API certificate"));
}
