//! Every kind of bad request gets a 4xx with a JSON error that says what is
//! wrong, and changes nothing: not the registry, not the HAProxy config.

mod common;

use common::*;
use serde_json::{Value, json};

struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    token: Option<String>,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    /// A word the error message must contain.
    says: &'static str,
}

/// Sends `request` as is and reads the answer's status and JSON body.
fn raw_http(addr: std::net::SocketAddr, request: &[u8]) -> (u16, Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    // The server may answer and close before it has read everything.
    let _ = s.write_all(request);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (code, body)
}

fn hook_body(d: &Daemon, overrides: &[(&str, Value)], base_port: u16) -> Vec<u8> {
    let _ = d;
    let mut body = json!({
        "name": "fresh", "frontend-port": base_port.to_string(), "backend-port": "30443",
        "dst-ip": "127.0.0.1", "action": "add", "send-proxy": ""
    });
    for (k, v) in overrides {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(*k);
        } else {
            body[*k] = v.clone();
        }
    }
    body.to_string().into_bytes()
}

#[test]
fn bad_requests_are_refused_with_a_reason_and_change_nothing() {
    let toml = fast_toml("max-servers = 2", "");
    let d = Daemon::start(DaemonOpts {
        toml,
        ..DaemonOpts::default()
    });
    let owned = free_port("127.0.0.1");
    let fresh = free_port("127.0.0.1");
    let a = Backend::start("a");
    let b = Backend::start("b");
    d.add("traefik", owned, a.addr);
    d.add("traefik", owned, b.addr);
    let config_before = d.haproxy_config();
    let (_, list_before) = d.get("/v1/frontends");
    assert_eq!(list_before["frontends"].as_array().unwrap().len(), 1);

    let hook = "/hooks/update-haproxy".to_string();
    let tok = Some(d.token.clone());
    let j = Some("application/json");
    let api_port = d.api.port();
    let gossip_port = d.gossip.port();
    let c = |what, overrides: &[(&str, Value)], status, says| Case {
        what,
        method: "POST",
        path: hook.clone(),
        token: tok.clone(),
        content_type: j,
        body: hook_body(&d, overrides, fresh),
        status,
        says,
    };
    let mut cases = vec![
        Case {
            token: None,
            ..c("no token", &[], 401, "missing token")
        },
        Case {
            token: Some("not-the-token-at-all".into()),
            ..c("wrong token", &[], 401, "wrong token")
        },
        Case {
            token: Some(format!("{}x", d.token)),
            ..c("token with a suffix", &[], 401, "wrong token")
        },
        c(
            "frontend port 0",
            &[("frontend-port", json!("0"))],
            400,
            "frontend-port",
        ),
        c(
            "frontend port 65536",
            &[("frontend-port", json!("65536"))],
            400,
            "frontend-port",
        ),
        c(
            "frontend port 22",
            &[("frontend-port", json!("22"))],
            403,
            "reserved",
        ),
        c(
            "the API port",
            &[("frontend-port", json!(api_port.to_string()))],
            403,
            "reserved",
        ),
        c(
            "the gossip port",
            &[("frontend-port", json!(gossip_port.to_string()))],
            403,
            "reserved",
        ),
        c(
            "frontend port with a space",
            &[("frontend-port", json!("443 "))],
            400,
            "frontend-port",
        ),
        c(
            "backend port 0",
            &[("backend-port", json!("0"))],
            400,
            "backend-port",
        ),
        c(
            "backend port with #",
            &[("backend-port", json!("30443#"))],
            400,
            "backend-port",
        ),
        c("bad IP", &[("dst-ip", json!("999.1.1.1"))], 400, "dst-ip"),
        c(
            "host name for IP",
            &[("dst-ip", json!("example.com"))],
            400,
            "dst-ip",
        ),
        c(
            "unspecified IP",
            &[("dst-ip", json!("0.0.0.0"))],
            400,
            "dst-ip",
        ),
        c(
            "IP with ;",
            &[("dst-ip", json!("127.0.0.1;"))],
            400,
            "dst-ip",
        ),
        c(
            "IP with newline",
            &[("dst-ip", json!("127.0.0.1\nserver x 1.2.3.4:5"))],
            400,
            "dst-ip",
        ),
        c(
            "IPv6 zone id",
            &[("dst-ip", json!("fe80::1%eth0"))],
            400,
            "dst-ip",
        ),
        c(
            "cloud metadata address",
            &[("dst-ip", json!("169.254.169.254"))],
            403,
            "link-local",
        ),
        c("IPv6 link-local", &[("dst-ip", json!("fe80::1"))], 403, "link-local"),
        c(
            "NAT64 form of the metadata address",
            &[("dst-ip", json!("64:ff9b::a9fe:a9fe"))],
            403,
            "link-local",
        ),
        c(
            "mapped unspecified",
            &[("dst-ip", json!("::ffff:0.0.0.0"))],
            400,
            "dst-ip",
        ),
        c(
            "mapped broadcast",
            &[("dst-ip", json!("::ffff:255.255.255.255"))],
            400,
            "broadcast",
        ),
        c(
            "mapped multicast",
            &[("dst-ip", json!("::ffff:224.0.0.1"))],
            400,
            "multicast",
        ),
        c("reserved 240/4", &[("dst-ip", json!("240.0.0.1"))], 400, "reserved"),
        c(
            "backend on the API port of this LB",
            &[("backend-port", json!(api_port.to_string()))],
            403,
            "loop",
        ),
        c(
            "backend on a frontend port of this LB",
            &[("backend-port", json!(owned.to_string()))],
            403,
            "loop",
        ),
        c("name with ;", &[("name", json!("a;b"))], 400, "name"),
        c(
            "name with newline",
            &[("name", json!("a\nbackend evil"))],
            400,
            "name",
        ),
        c("name with space", &[("name", json!("a b"))], 400, "name"),
        c("name with #", &[("name", json!("a#b"))], 400, "name"),
        c(
            "name too long",
            &[("name", json!("x".repeat(64)))],
            400,
            "name",
        ),
        c("empty name", &[("name", json!(""))], 400, "name"),
        c(
            "unknown action",
            &[("action", json!("remove"))],
            400,
            "action",
        ),
        c("missing action", &[("action", Value::Null)], 400, "action"),
        c("missing dst-ip", &[("dst-ip", Value::Null)], 400, "dst-ip"),
        c(
            "send-proxy nonsense",
            &[("send-proxy", json!("maybe"))],
            400,
            "send-proxy",
        ),
        c(
            "lease too long",
            &[("ttl", json!("99999999"))],
            400,
            "lease",
        ),
        c(
            "unknown field",
            &[("frontend_port", json!("443"))],
            400,
            "unknown field",
        ),
        c("nested value", &[("name", json!({"a": 1}))], 400, "string"),
        c(
            "name conflict",
            &[
                ("frontend-port", json!(owned.to_string())),
                ("name", json!("intruder")),
            ],
            409,
            "traefik",
        ),
        c(
            "delete by another name",
            &[
                ("frontend-port", json!(owned.to_string())),
                ("name", json!("intruder")),
                ("backend-port", json!(a.addr.port().to_string())),
                ("action", json!("delete")),
            ],
            409,
            "traefik",
        ),
        c("registry full", &[], 409, "max-servers"),
        Case {
            body: vec![b'x'; 20_000],
            ..c("oversize body", &[], 413, "larger than")
        },
        Case {
            content_type: Some("text/plain"),
            ..c("wrong content type", &[], 415, "content type")
        },
        Case {
            content_type: None,
            ..c("no content type", &[], 415, "content type")
        },
        Case {
            body: b"{".to_vec(),
            ..c("truncated JSON", &[], 400, "JSON")
        },
        Case {
            body: b"[1,2]".to_vec(),
            ..c("JSON array", &[], 400, "object")
        },
        Case {
            body: Vec::new(),
            ..c("empty body", &[], 400, "JSON")
        },
        Case {
            path: format!("{hook}?wait=forever"),
            ..c("bad wait", &[], 400, "wait")
        },
        Case {
            path: format!("{hook}?debug=1"),
            ..c("unknown query", &[], 400, "query")
        },
        Case {
            content_type: Some("application/x-www-form-urlencoded"),
            body: b"name=a%3Bb&frontend-port=1&backend-port=1&dst-ip=127.0.0.1&action=add".to_vec(),
            ..c("form with ; in name", &[], 400, "name")
        },
        Case {
            method: "PUT",
            path: format!("/v1/frontends/{fresh}/servers/not-an-ip/30443"),
            body: br#"{"name":"fresh"}"#.to_vec(),
            ..c("typed API bad IP in path", &[], 400, "ip")
        },
        Case {
            method: "PUT",
            path: format!("/v1/frontends/{fresh}/servers/127.0.0.1/30443"),
            body: br#"{"name":"fresh","weight":3}"#.to_vec(),
            ..c("typed API unknown field", &[], 400, "weight")
        },
        Case {
            method: "DELETE",
            path: format!("/v1/frontends/{owned}/servers/127.0.0.1/{}", a.addr.port()),
            body: Vec::new(),
            ..c("typed delete without name", &[], 400, "name")
        },
        Case {
            method: "GET",
            path: "/v1/frontends".into(),
            token: None,
            body: Vec::new(),
            ..c("list without token", &[], 401, "token")
        },
        Case {
            method: "GET",
            path: "/nope".into(),
            body: Vec::new(),
            ..c("unknown path", &[], 404, "endpoint")
        },
        Case {
            method: "GET",
            body: Vec::new(),
            ..c("wrong method", &[], 405, "not allowed")
        },
        Case {
            method: "PATCH",
            path: format!("/v1/frontends/{fresh}/servers/127.0.0.1/30443"),
            body: br#"{"name":"fresh"}"#.to_vec(),
            ..c("wrong method on the typed API", &[], 405, "PATCH")
        },
        Case {
            method: "GET",
            path: "/v1/frontends/%FF%FE".into(),
            body: Vec::new(),
            ..c("path that decodes to bad UTF-8", &[], 400, "path")
        },
        Case {
            method: "PUT",
            path: format!("/v1/frontends/{fresh}/servers/127.0.0.1%2F8/30443"),
            body: br#"{"name":"fresh"}"#.to_vec(),
            ..c("encoded slash in the IP", &[], 400, "ip")
        },
        Case {
            method: "GET",
            path: "/v1/front ends".into(),
            body: Vec::new(),
            ..c("space in the request line", &[], 400, "not valid HTTP")
        },
        Case {
            body: format!(
                r#"{{"name":"fresh","frontend-port":"{fresh}","backend-port":"30443","dst-ip":"127.0.0.1","action":"add","action":"delete"}}"#
            )
            .into_bytes(),
            ..c("duplicate JSON key", &[], 400, "given twice")
        },
        Case {
            method: "PUT",
            path: format!("/v1/frontends/{fresh}/servers/127.0.0.1/30443"),
            body: br#"{"name":"fresh","name":"other"}"#.to_vec(),
            ..c("duplicate key in the typed API", &[], 400, "duplicate field")
        },
    ];
    assert!(cases.len() >= 25);
    let mut failures = Vec::new();
    for case in cases.drain(..) {
        let (code, body) = http(
            case.method,
            &d.url(&case.path),
            case.token.as_deref(),
            case.content_type,
            Some(case.body),
        );
        let message = body["message"].as_str().unwrap_or("");
        let ok = code == case.status
            && body["error"].is_string()
            && message.to_lowercase().contains(&case.says.to_lowercase());
        if !ok {
            failures.push(format!(
                "{}: got {code} {body}, want {} saying {:?}",
                case.what, case.status, case.says
            ));
        }
        assert_eq!(
            d.haproxy_config(),
            config_before,
            "{} changed the HAProxy config",
            case.what
        );
    }
    assert!(
        failures.is_empty(),
        "{} cases wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // Requests hyper itself refuses before the router sees them.
    let api = d.api;
    for (what, request, status, says) in [
        (
            "headers too large",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
                "a".repeat(40_000)
            ),
            431,
            "too large",
        ),
        (
            "too many headers",
            format!(
                "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
                (0..150)
                    .map(|i| format!("X-{i}: 1\r\n"))
                    .collect::<String>()
            ),
            431,
            "too large or too many",
        ),
        (
            "not HTTP at all",
            "\x16\x03\x01 hello\r\n\r\n".to_string(),
            400,
            "not valid HTTP",
        ),
    ] {
        let (code, body) = raw_http(api, request.as_bytes());
        let message = body["message"].as_str().unwrap_or("");
        if code != status || !body["error"].is_string() || !message.contains(says) {
            failures.push(format!(
                "{what}: got {code} {body}, want {status} saying {says:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let (_, list_after) = d.get("/v1/frontends");
    assert_eq!(
        list_after["digest"], list_before["digest"],
        "the registry changed"
    );
    assert_eq!(
        list_after["changes"], list_before["changes"],
        "the registry changed"
    );
    // Still serving what it served.
    assert!(greeting(d.frontend(owned)).is_some());
}
