//! The status page at `/`, loaded in headless Chromium (Debian's `chromium`)
//! from a real two-peer mesh with real HAProxy, read as a person would:
//! only what is visible. A screenshot is kept in `target/artifacts/`
//! (or `$LBMESH_ARTIFACTS`) for CI to publish.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;

/// Where the screenshot goes.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("LBMESH_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs headless Chromium on `url` with a fresh profile, plus `args`;
/// returns its standard output.
fn chromium(url: &str, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args(["60", "chromium"])
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            // Runs the page's scripts and its fetches to completion, then stops.
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(url)
        .output()
        .expect("chromium (Debian's `chromium` package; scripts/test installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The text a person sees: the DOM after the scripts ran, without what is
/// `hidden`, scripts and styles; one space between words.
fn visible_text(dom: &str) -> String {
    fn walk(e: scraper::ElementRef, out: &mut String) {
        let name = e.value().name();
        if e.value().attr("hidden").is_some() || ["script", "style", "head"].contains(&name) {
            return;
        }
        for child in e.children() {
            if let Some(el) = scraper::ElementRef::wrap(child) {
                walk(el, out);
            } else if let Some(t) = child.value().as_text() {
                out.push_str(t);
                out.push(' ');
            }
        }
        out.push(' ');
    }
    let html = scraper::Html::parse_document(dom);
    let mut out = String::new();
    walk(html.root_element(), &mut out);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn has(text: &str, needle: &str) {
    assert!(
        text.contains(needle),
        "the page does not show {needle:?}:\n{text}"
    );
}

#[test]
fn the_status_page_shows_the_mesh_frontends_health_conflicts_and_events() {
    // lb1 and lb2 start apart and accept different names for one port; then
    // lb2 joins lb1: the younger claim is a conflict on both.
    let udp = || "transport = \"udp\"".to_string();
    let lb1 = Daemon::start(DaemonOpts {
        mesh: udp(),
        ..DaemonOpts::default()
    });
    let mut lb2 = Daemon::start(DaemonOpts {
        node_id: "lb2".into(),
        mesh: udp(),
        ..DaemonOpts::default()
    });
    let up = Backend::start_on(&lb1.ip, "up");
    let down = format!("{}:{}", lb1.ip, free_port(&lb1.ip))
        .parse()
        .unwrap();
    let port = free_port(&lb1.ip);
    lb1.add("web", port, up.addr);
    lb1.add("web", port, down);
    let other: std::net::SocketAddr = format!("{}:{}", lb2.ip, free_port(&lb2.ip))
        .parse()
        .unwrap();
    let (code, v) = lb2.hook(
        &json!({"name": "other", "frontend-port": port.to_string(),
            "backend-port": other.port().to_string(), "dst-ip": other.ip().to_string(), "action": "add"}),
        "",
    );
    assert_eq!(code, 200, "{v}");
    lb2.crash();
    let seeds = format!("seeds = [\"{}\"]", lb1.gossip);
    std::fs::write(lb2.config_path(), lb2.config.replace("seeds = []", &seeds)).unwrap();
    lb2.spawn();

    // A frontend whose port is taken on lb1: quarantined there, so lb1 serves
    // another config than lb2 and the mesh is not converged.
    let busy = free_port(&lb1.ip);
    let squatter = TcpListener::bind((lb1.ip.as_str(), busy)).unwrap();
    let (code, v) = lb1.hook(
        &json!({"name": "mqtt", "frontend-port": busy.to_string(),
            "backend-port": up.addr.port().to_string(), "dst-ip": up.addr.ip().to_string(), "action": "add"}),
        "",
    );
    assert_eq!(code, 200, "{v}");
    // keepalived made lb1 MASTER.
    let (code, v) = http(
        "POST",
        &lb1.url("/v1/vrrp"),
        Some(&lb1.token),
        Some("application/json"),
        Some(br#"{"name":"VI_LBMESH","state":"MASTER"}"#.to_vec()),
    );
    assert_eq!(code, 200, "{v}");
    eventually(Duration::from_secs(20), "lb1 to see it all", || {
        let s = lb1.status();
        let (_, f) = lb1.get("/v1/frontends");
        let health = f["frontends"]
            .as_array()?
            .iter()
            .find(|x| x["port"] == port)?["servers"]
            .as_array()?
            .iter()
            .filter(|s| s["health"] == "up" || s["health"] == "down")
            .count();
        (s["converged"] == false
            && s["peers"]
                .as_array()?
                .iter()
                .filter(|p| p["live"] == true)
                .count()
                == 2
            && s["registry"]["conflicts"] == 1
            && s["vrrp"]["masters"] == json!(["lb1"])
            && s["haproxy"]["quarantined"][busy.to_string()].is_string()
            && health == 2)
            .then_some(())
    });

    // The text status lists the conflict.
    let text = sh(
        &format!(
            "{BIN} status --api {} --token-file {}",
            lb1.url(""),
            lb1.token_file.display()
        ),
        &[],
    );
    has(
        &text,
        &format!("frontend {port}  server {other}  name other  (owner web)"),
    );
    has(&text, "floating IP on lb1");

    // With the token (given in the fragment, which never reaches the server).
    let url = format!("http://{}/#token={}", lb1.api, lb1.token);
    let page = visible_text(&chromium(&url, &["--dump-dom"]));
    for needle in [
        "healthy",
        "lb1 · lbmesh",
        "2 peers, 2 live",
        "floating IP on lb1",
        "NOT converged",
        "MASTER VI_LBMESH",
        &format!("Frontend {port} — web"),
        &format!("{} up", up.addr),
        &format!("{down} down"),
        "(in 29m",
        &format!("Frontend {busy} — mqtt"),
        "Quarantined: cannot listen on",
        &format!("{port} {other} other web"),
        "write accepted action=registered",
        "frontend quarantined",
        "peer joined",
    ] {
        has(&page, needle);
    }
    assert!(
        !page.contains("Token"),
        "the token prompt is shown:\n{page}"
    );
    chromium(
        &url,
        &[
            "--window-size=1280,1400",
            &format!(
                "--screenshot={}",
                artifacts().join("status-page.png").display()
            ),
        ],
    );

    // The port comes free: the quarantine lifts and the mesh converges.
    drop(squatter);
    eventually(Duration::from_secs(20), "the mesh to converge", || {
        (lb1.status()["converged"] == true).then_some(())
    });
    let page = visible_text(&chromium(&url, &["--dump-dom"]));
    has(&page, "2 live · floating IP on lb1 · converged since 20");
    assert!(!page.contains("Quarantined"), "{page}");

    // Without a token: whether this peer is healthy, and a place for the token.
    let page = visible_text(&chromium(&format!("http://{}/", lb1.api), &["--dump-dom"]));
    has(&page, "healthy");
    has(
        &page,
        "Without the API token this page shows only whether this peer is healthy",
    );
    for secret in ["lb2", &up.addr.to_string(), "web", "write accepted"] {
        assert!(
            !page.contains(secret),
            "{secret:?} shown without a token:\n{page}"
        );
    }

    // The page and its assets come with a policy that allows no foreign script.
    let head = sh(&format!("curl -sI {}", lb1.url("/")), &[]);
    has(
        &head,
        "content-security-policy: default-src 'none'; script-src 'self'",
    );
    has(&head, "content-type: text/html");
}
