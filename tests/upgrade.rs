//! A rolling upgrade of three load-balancer VMs in network namespaces, as
//! the README tells it (drain, restart with a new binary, undrain, one VM
//! after the other), while clients hold long-lived connections through the
//! floating IP with echo traffic flowing and open short ones all along:
//! no connection is reset or fails, and the long-lived ones still echo at
//! the end. Runs as root; the VMs' logs are printed when it fails.

mod common;
#[path = "netns/lab.rs"]
mod lab;

use std::path::PathBuf;
use std::time::Duration;

use common::{bin, eventually_every};
use lab::{Lab, LabOptions, VIP};

/// The frontend of the long-lived connections, and its echo NodePort.
const LONG: u16 = 8000;
const ECHO_NODEPORT: u16 = 30444;
/// How often the test looks again while it waits.
const POLL: Duration = Duration::from_millis(100);

/// `n` connections to VIP:[`LONG`] from the client namespace, each echoing
/// a line every 100 ms; any reset, wrong echo or echo slower than 10 s is
/// an error. Once `stop` exists, each echoes once more and the client
/// exits, having printed `open`, `err` and `final` lines.
struct LongLived {
    out: lab::Running,
    stop: PathBuf,
    tag: String,
}

impl LongLived {
    fn open(lab: &Lab, n: usize, tag: &str) -> LongLived {
        let stop = lab.dir.path().join(format!("stop-{tag}"));
        let script = format!(
            "import asyncio,os,time\n\
             async def one(k):\n\
             \x20 name='{tag}%d'%k\n\
             \x20 try:\n\
             \x20   r,w=await asyncio.wait_for(asyncio.open_connection('{VIP}',{LONG}),5)\n\
             \x20 except Exception as e:\n\
             \x20   print('err',name,'connect',repr(e),flush=True); return\n\
             \x20 print('open',name,flush=True)\n\
             \x20 seq=0; worst=0.0\n\
             \x20 while True:\n\
             \x20   last=os.path.exists('{stop}')\n\
             \x20   msg=('%s:%d\\n'%(name,seq)).encode(); t=time.time()\n\
             \x20   try:\n\
             \x20     w.write(msg); await w.drain()\n\
             \x20     line=await asyncio.wait_for(r.readline(),10)\n\
             \x20   except Exception as e:\n\
             \x20     print('err',name,seq,repr(e),flush=True); return\n\
             \x20   if line!=msg:\n\
             \x20     print('err',name,seq,'echoed',line,flush=True); return\n\
             \x20   worst=max(worst,time.time()-t); seq+=1\n\
             \x20   if last:\n\
             \x20     print('final',name,seq,'%.3f'%worst,flush=True); return\n\
             \x20   await asyncio.sleep(0.1)\n\
             async def main():\n\
             \x20 await asyncio.gather(*(one(k) for k in range({n})))\n\
             asyncio.run(main())\n",
            stop = stop.display()
        );
        LongLived {
            out: lab.client_python(&script, false),
            stop,
            tag: tag.to_owned(),
        }
    }

    /// Asks every connection for a last echo; the client's lines.
    fn finish(mut self) -> Vec<String> {
        std::fs::write(&self.stop, b"").unwrap();
        let lines: Vec<String> = self.out.lines.by_ref().map_while(Result::ok).collect();
        let _ = self.out.child.wait();
        lines
    }
}

fn status(lab: &Lab, i: usize) -> serde_json::Value {
    lab.api_get(i, "/v1/status").1
}

#[test]
fn a_rolling_upgrade_under_load_resets_and_fails_no_connection() {
    let mut lab = Lab::start_with(bin(), 3, 1, LabOptions { handoff: true });
    lab.start_node_echo(0, ECHO_NODEPORT);
    let first = lab.wait_vip_holder(Duration::from_secs(15));
    let node = lab.nodes[0].1.clone();
    lab.phone_home(0, first, 443, &node);
    lab.phone_home_to(0, first, LONG, ECHO_NODEPORT, "echo", &node);
    eventually_every(
        Duration::from_secs(10),
        POLL,
        "traffic through the VIP",
        || lab.client_greeting(443),
    );
    // Every VM passes packets it does not own to both others.
    eventually_every(
        Duration::from_secs(20),
        POLL,
        "the handoff on every VM",
        || {
            (0..3)
                .all(|i| {
                    let h = &status(&lab, i)["vrrp"]["failover"]["handoff"];
                    h["installed"] == true && h["forwarding_to"].as_array().map(Vec::len) == Some(2)
                })
                .then_some(())
        },
    );

    let next = lab.dir.path().join("lbmesh-next");
    std::fs::copy(bin(), &next).unwrap();
    let short = lab.concurrent_prober(443, 20, 3.0);
    let t0 = lab::now();
    let mut long = vec![LongLived::open(&lab, 3, "a")];
    let mut holders = vec![first];
    // The holder first, then the others; each VM in turn as the README says.
    let order: Vec<usize> = std::iter::once(first)
        .chain((0..3).filter(|i| *i != first))
        .collect();
    for (step, &i) in order.iter().enumerate() {
        std::thread::sleep(Duration::from_secs(2));
        let was_holder = lab.vip_holder() == Some(i);
        let (ok, out) = lab.lbmesh_cli(i, bin(), &["drain", "--timeout", "2s"]);
        assert!(ok, "drain of {}: {out}", lab.lbs[i].name);
        eprintln!("step {step}: {}: {}", lab.lbs[i].name, out.trim());
        if was_holder {
            let h = lab.wait_vip_holder(Duration::from_secs(2));
            assert_ne!(h, i, "the drained VM still holds the VIP");
            holders.push(h);
        }
        let exit = lab.stop_lbmesh(i, Duration::from_secs(30));
        assert!(exit.success(), "{}: {exit}", lab.lbs[i].name);
        lab.start_lbmesh_with(i, &next);
        lab.wait_healthy(i, Duration::from_secs(60));
        lab.wait_mesh(i, Duration::from_secs(30));
        let (ok, out) = lab.lbmesh_cli(i, &next, &["undrain"]);
        assert!(ok, "undrain of {}: {out}", lab.lbs[i].name);
        eventually_every(
            Duration::from_secs(15),
            POLL,
            "the upgraded VM to be a backup again",
            || {
                let s = status(&lab, i);
                (s["vrrp"]["failover"]["may_hold"] == true
                    && s["vrrp"]["state"]
                        .as_str()
                        .is_some_and(|v| v.starts_with("BACKUP") || v.starts_with("MASTER")))
                .then_some(())
            },
        );
        if was_holder {
            assert!(
                lab.log(i).contains("without a reload"),
                "{} did not carry on with its HAProxy",
                lab.lbs[i].name
            );
        }
        // New long-lived connections, on whichever VM holds the VIP now.
        long.push(LongLived::open(
            &lab,
            2,
            &format!("{}", (b'b' + step as u8) as char),
        ));
    }
    std::thread::sleep(Duration::from_secs(2));
    // Every VM runs the new binary.
    for lb in &lab.lbs {
        assert_eq!(
            lab.pids_matching(&lb.ns, "lbmesh-next serve").len(),
            1,
            "{} runs the new binary",
            lb.name
        );
    }
    assert!(
        holders.len() >= 3,
        "the VIP moved at least twice: {holders:?}"
    );

    let (ok, failed) = short.stop_and_count(t0);
    let mut errors = Vec::new();
    let mut finals = 0;
    let mut expected = 0;
    for group in long.drain(..) {
        let tag = group.tag.clone();
        let lines = group.finish();
        let opened = lines.iter().filter(|l| l.starts_with("open")).count();
        expected += if tag == "a" { 3 } else { 2 };
        assert_eq!(opened, if tag == "a" { 3 } else { 2 }, "{lines:?}");
        finals += lines.iter().filter(|l| l.starts_with("final")).count();
        errors.extend(lines.into_iter().filter(|l| l.starts_with("err")));
        eprintln!("long-lived group {tag}: {opened} opened");
    }
    eprintln!(
        "short connections: {ok} ok, {failed} failed; long-lived: {finals} of {expected} echo at the end; VIP holders {holders:?}"
    );
    assert!(
        errors.is_empty(),
        "long-lived connections broke: {errors:?}"
    );
    assert_eq!(finals, expected);
    assert!(ok > 200, "only {ok} short connections");
    assert_eq!(
        failed,
        0,
        "{failed} of {} short connections failed",
        ok + failed
    );
}
