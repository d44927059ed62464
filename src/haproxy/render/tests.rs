use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::*;
use crate::registry::{Command, Key, Limits, PortPolicy, Registry};

const T0: u64 = 1_700_000_000_000;

fn settings() -> RenderSettings {
    RenderSettings::with_sockets_in(Path::new("/run/lbmesh"))
}

fn registry(servers: &[(u16, &str, &str, bool)]) -> Registry {
    let mut r = Registry::new(
        "lb1".parse().unwrap(),
        Limits::default(),
        PortPolicy::new(vec![], []),
    );
    for (port, addr, name, proxy) in servers {
        r.apply(
            Command::Register {
                key: Key {
                    frontend: *port,
                    server: addr.parse().unwrap(),
                },
                name: name.parse().unwrap(),
                send_proxy: *proxy,
                ttl: None,
            },
            T0,
        )
        .unwrap();
    }
    r
}

/// Compares with `tests/golden/<name>.cfg`; `UPDATE_GOLDEN=1` rewrites it.
fn golden(name: &str, text: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.cfg"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).unwrap();
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(text, want, "render differs from {}", path.display());
}

#[test]
fn golden_empty() {
    let r = registry(&[]);
    golden(
        "empty",
        &render(&r.view(T0), &BTreeSet::new(), &settings()).text,
    );
}

#[test]
fn golden_original_recipe_shape() {
    let r = registry(&[(443, "203.0.113.7:30443", "traefik", false)]);
    golden(
        "one_frontend",
        &render(&r.view(T0), &BTreeSet::new(), &settings()).text,
    );
}

#[test]
fn golden_pools_ipv6_send_proxy_and_exclusion() {
    let r = registry(&[
        (443, "203.0.113.7:30443", "traefik", true),
        (443, "203.0.113.8:30443", "traefik", true),
        (443, "[2001:db8::7]:30443", "traefik", true),
        (8443, "203.0.113.7:30843", "mqtt", false),
        (8080, "203.0.113.9:30808", "unifi-adoption", false),
        (25, "203.0.113.9:30025", "smtp", false),
    ]);
    let mut s = settings();
    s.bind_address = "::".parse().unwrap();
    s.check_interval = Duration::from_millis(1500);
    let excluded = BTreeSet::from([25]);
    golden("pools", &render(&r.view(T0), &excluded, &s).text);
}

#[test]
fn render_is_deterministic_whatever_the_insertion_order() {
    let servers = [
        (443, "203.0.113.7:30443", "traefik", false),
        (443, "203.0.113.8:30443", "traefik", false),
        (80, "203.0.113.9:30080", "web", false),
        (443, "[2001:db8::1]:30443", "traefik", false),
    ];
    let mut reversed = servers;
    reversed.reverse();
    let a = render(&registry(&servers).view(T0), &BTreeSet::new(), &settings());
    let b = render(&registry(&reversed).view(T0), &BTreeSet::new(), &settings());
    assert_eq!(a, b);
    // The digest ignores local settings such as the bind address.
    let mut other = settings();
    other.bind_address = "198.18.0.2".parse().unwrap();
    let c = render(&registry(&servers).view(T0), &BTreeSet::new(), &other);
    assert_ne!(a.text, c.text);
    assert_eq!(a.digest, c.digest);
}

#[test]
fn names_map_back_to_ports() {
    assert_eq!(port_of_name(&frontend_name(8443)), Some(8443));
    assert_eq!(port_of_name(&backend_name(25)), Some(25));
    assert_eq!(port_of_name("lbmesh_health"), None);
    assert_eq!(port_of_name("99999_frontend"), None);
}

#[test]
fn streamed_text_equals_the_string_render() {
    let r = registry(&[
        (443, "203.0.113.7:30443", "traefik", false),
        (443, "[2001:db8::7]:30443", "traefik", true),
    ]);
    let out = render(&r.view(T0), &BTreeSet::new(), &settings());
    let mut streamed = Vec::new();
    write_config(&out.backends, &settings(), &mut streamed).unwrap();
    assert_eq!(String::from_utf8(streamed).unwrap(), out.text);
    assert!(
        out.text
            .contains("server s2 [2001:db8::7]:30443 check send-proxy\n")
    );
    // Old workers are bounded by hard-stop-after, never killed by a reload count.
    assert!(!out.text.contains("mworker-max-reloads"));
}

#[test]
fn ten_thousand_servers_render() {
    let mut r = Registry::new(
        "lb1".parse().unwrap(),
        Limits::default(),
        PortPolicy::new(vec![], []),
    );
    for i in 0..10_000u32 {
        r.apply(
            Command::Register {
                key: Key {
                    frontend: 10_000 + (i % 100) as u16,
                    server: format!("198.18.{}.{}:30000", i / 250, i % 250)
                        .parse()
                        .unwrap(),
                },
                name: format!("svc{}", i % 100).parse().unwrap(),
                send_proxy: false,
                ttl: None,
            },
            T0,
        )
        .unwrap();
    }
    let out = render(&r.view(T0), &BTreeSet::new(), &settings());
    assert_eq!(out.server_count(), 10_000);
    assert_eq!(out.text.matches("\n    server ").count(), 100 * 150);
}
