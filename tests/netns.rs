//! The floating IP on real VRRP: three load-balancer namespaces running
//! lbmesh + HAProxy + keepalived on one bridge, two Kubernetes-node
//! namespaces with a NodePort server, and a client. Runs as root.

mod common;
#[path = "netns/lab.rs"]
mod lab;

use std::time::Duration;

use common::{bin, eventually};
use lab::{Lab, NODEPORT};

#[test]
fn the_vip_serves_a_registration_made_elsewhere_and_survives_a_hard_crash_of_its_holder() {
    let mut lab = Lab::start(bin(), 3, 2);
    let holder = lab.wait_vip_holder(Duration::from_secs(15));
    let other = (holder + 1) % 3;
    // The original curl, from a Kubernetes node, to a peer that is not the VIP holder.
    let r = lab.phone_home(0, other, 443, &lab.nodes[0].1.clone());
    assert_eq!(r["result"], "registered", "{r}");
    assert_eq!(r["applied"], true, "{r}");
    let got = eventually(
        Duration::from_secs(10),
        "the client through VIP:443",
        || lab.client_greeting(443),
    );
    assert_eq!(got, "node-k1");
    // Every peer knows who holds the VIP.
    let (_, st) = lab.api_get(other, "/v1/status");
    assert_eq!(
        st["vrrp"]["masters"],
        serde_json::json!([lab.lbs[holder].name.clone()]),
        "{st}"
    );

    // Hard crash of the holder: every process killed, link down.
    let mut prober = lab.prober(443);
    let t = lab.crash(holder);
    let back = prober
        .first_success_after(t, Duration::from_secs(20))
        .expect("connections succeed again");
    eprintln!(
        "failover: first successful connection {:.2} s after the crash",
        back - t
    );
    let new_holder = lab.wait_vip_holder(Duration::from_secs(10));
    assert_ne!(new_holder, holder);
    assert_eq!(lab.client_greeting(443).as_deref(), Some("node-k1"));
    // Nothing registered is lost.
    let (_, list) = lab.api_get(new_holder, "/v1/frontends");
    assert_eq!(list["frontends"][0]["port"], 443, "{list}");
}

#[test]
fn a_broken_haproxy_on_the_holder_fails_the_check_and_the_vip_moves() {
    let lab = Lab::start(bin(), 3, 1);
    let holder = lab.wait_vip_holder(Duration::from_secs(15));
    lab.phone_home(0, holder, 443, &lab.nodes[0].1.clone());
    eventually(Duration::from_secs(10), "traffic", || {
        lab.client_greeting(443)
    });
    // HAProxy dies and cannot start again on this VM.
    let lb = &lab.lbs[holder];
    std::fs::write(lb.dir.join("haproxy-broken"), "").unwrap();
    for p in lab.pids_matching(&lb.ns, "haproxy.cfg") {
        let _ = std::process::Command::new("kill")
            .args(["-9", &p.to_string()])
            .status();
    }
    let new_holder = eventually(
        Duration::from_secs(20),
        "the VIP to leave the broken peer",
        || lab.vip_holder().filter(|h| *h != holder),
    );
    assert_eq!(
        eventually(
            Duration::from_secs(10),
            "traffic through the new holder",
            || lab.client_greeting(443)
        ),
        "node-k1"
    );
    // The broken peer says why, and the mesh sees it in FAULT.
    let (code, health) = lab.api_get(holder, "/healthz");
    assert_eq!(code, 503, "{health}");
    assert!(
        health["problems"].to_string().contains("HAProxy"),
        "{health}"
    );
    eventually(
        Duration::from_secs(10),
        "the broken peer's FAULT state in the mesh",
        || {
            let (_, st) = lab.api_get(new_holder, "/v1/status");
            st["peers"]
                .as_array()?
                .iter()
                .any(|p| {
                    p["node_id"] == lab.lbs[holder].name.as_str()
                        && p["vrrp_state"]
                            .as_str()
                            .is_some_and(|s| s.starts_with("FAULT"))
                })
                .then_some(())
        },
    );
}

#[test]
fn a_node_that_changes_ip_moves_the_traffic_with_its_next_phone_home() {
    let lab = Lab::start(bin(), 2, 1);
    let holder = lab.wait_vip_holder(Duration::from_secs(15));
    let (ns, old_ip) = lab.nodes[0].clone();
    lab.phone_home(0, holder, 8443, &old_ip);
    assert_eq!(
        eventually(Duration::from_secs(10), "traffic", || lab
            .client_greeting(8443)),
        "node-k1"
    );
    // The cloud gives the node a new address.
    let new_ip = "198.18.0.29";
    for args in [
        vec![
            "-n",
            ns.as_str(),
            "addr",
            "del",
            &format!("{old_ip}/24"),
            "dev",
            "eth0",
        ],
        vec![
            "-n",
            ns.as_str(),
            "addr",
            "add",
            &format!("{new_ip}/24"),
            "dev",
            "eth0",
        ],
    ] {
        assert!(
            std::process::Command::new("ip")
                .args(&args)
                .status()
                .unwrap()
                .success()
        );
    }
    let r = lab.phone_home(0, (holder + 1) % 2, 8443, new_ip);
    assert_eq!(r["result"], "registered", "{r}");
    // Health checks take the old address out; every client lands on the new one.
    eventually(
        Duration::from_secs(15),
        "traffic to the new address",
        || {
            (0..5)
                .all(|_| lab.client_greeting(8443).as_deref() == Some("node-k1"))
                .then_some(())
        },
    );
    let (_, f) = lab.api_get(holder, "/v1/frontends/8443");
    assert!(
        f["servers"]
            .to_string()
            .contains(&format!("{new_ip}:{NODEPORT}")),
        "{f}"
    );
}
