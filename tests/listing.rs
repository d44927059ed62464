//! `GET /v1/frontends` of a registry too large for one piece: streamed
//! (chunked) by the real daemon, and equal to what each frontend's own
//! answer says.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

const FRONTENDS: u16 = 150;
const SERVERS: u16 = 4;

/// `GET path` with the token, as raw bytes: (head, body as sent).
fn raw_get(d: &Daemon, path: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(d.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nX-Funkypenguin-Token: {}\r\n\r\n",
        d.api, d.token
    )
    .unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8_lossy(&resp[..end]).into_owned(),
        resp[end + 4..].to_vec(),
    )
}

/// A frontend without what moves between two reads: the seconds left of
/// each lease, and health (HAProxy's checks run meanwhile).
fn settled(mut f: Value) -> Value {
    for s in f["servers"].as_array_mut().unwrap() {
        let s = s.as_object_mut().unwrap();
        s.remove("expires_in_seconds");
        s.remove("health");
    }
    f
}

#[test]
fn a_large_listing_is_streamed_and_equals_each_frontends_own_answer() {
    let toml = "[registry]\nmin-ttl = \"1s\"\nallowed-backends = [\"127.0.0.0/8\"]\n\
                [haproxy]\ncheck-interval = \"30s\"\nmin-reload-interval = \"100ms\"\n\
                hard-stop-after = \"5s\"\n";
    let d = Daemon::start(DaemonOpts {
        toml: toml.into(),
        ..DaemonOpts::default()
    });
    let ports: Vec<u16> = (0..FRONTENDS).map(|f| 21_000 + f).collect();
    // Registered over a few connections at once, without waiting for HAProxy.
    std::thread::scope(|scope| {
        for chunk in ports.chunks(ports.len().div_ceil(6)) {
            let d = &d;
            scope.spawn(move || {
                for &port in chunk {
                    for s in 0..SERVERS {
                        let url = d.url(&format!(
                            "/v1/frontends/{port}/servers/127.0.{}.{}/30443",
                            port % 200,
                            s + 1
                        ));
                        let body = json!({"name": format!("svc{port}"), "send_proxy": s == 1, "ttl_seconds": 600});
                        let (code, v) = http(
                            "PUT",
                            &url,
                            Some(&d.token),
                            Some("application/json"),
                            Some(body.to_string().into_bytes()),
                        );
                        assert_eq!(code, 200, "{v}");
                    }
                }
            });
        }
    });
    let status = d.status();
    let (head, body) = raw_get(&d, "/v1/frontends");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let body = dechunk(&body).expect("a complete chunked body");
    assert!(body.len() > 64 * 1024, "{} bytes", body.len());
    let listed: Value = serde_json::from_slice(&body).unwrap();
    // Nothing changed since the status was read: the same registry.
    assert_eq!(listed["changes"], status["registry"]["changes"], "{status}");
    assert_eq!(listed["digest"], status["registry"]["digest"], "{status}");
    assert_eq!(listed["conflicts"], json!([]));
    let frontends = listed["frontends"].as_array().unwrap();
    let listed_ports: Vec<u64> = frontends
        .iter()
        .map(|f| f["port"].as_u64().unwrap())
        .collect();
    let wanted: Vec<u64> = ports.iter().map(|&p| u64::from(p)).collect();
    assert_eq!(listed_ports, wanted);
    for f in frontends {
        let port = f["port"].as_u64().unwrap();
        assert_eq!(f["owner"], format!("svc{port}"));
        assert_eq!(f["servers"].as_array().unwrap().len(), usize::from(SERVERS));
        let (code, alone) = d.get(&format!("/v1/frontends/{port}"));
        assert_eq!(code, 200, "{alone}");
        assert_eq!(settled(f.clone()), settled(alone), "frontend {port}");
    }
    // The test client reads the same answer through its chunked decoding.
    let (code, again) = d.get("/v1/frontends");
    assert_eq!(code, 200);
    assert_eq!(again["digest"], listed["digest"]);
}
