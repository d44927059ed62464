//! Faults injected into the daemon on purpose, for tests that must show what
//! happens when a subsystem dies. Present only in debug builds with the
//! `fault-injection` feature (the workspace's test builds); a release build
//! has none of it, whatever its features.

use std::future::Future;

/// `LBMESH_FAULT_TASK=<task>` makes that task return a second after it
/// starts; `<task>:panic` makes it panic instead.
#[cfg(all(feature = "fault-injection", debug_assertions))]
pub fn task(
    name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let fault = std::env::var("LBMESH_FAULT_TASK").ok().and_then(|v| {
        let (target, how) = v.split_once(':').unwrap_or((v.as_str(), "end"));
        (target == name).then(|| how == "panic")
    });
    async move {
        let Some(panic) = fault else {
            return task.await;
        };
        tokio::select! {
            () = task => {}
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
                if panic {
                    panic!("fault injected by LBMESH_FAULT_TASK");
                }
            }
        }
    }
}

#[cfg(not(all(feature = "fault-injection", debug_assertions)))]
pub fn task(
    _name: &'static str,
    task: impl Future<Output = ()> + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    task
}
