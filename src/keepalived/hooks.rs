//! Commands run on VRRP transitions, one at a time and in order.

use std::time::Duration;

use super::VrrpState;

/// Commands run on VRRP transitions (e.g. moving a provider's floating IP).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    pub on_master: Vec<String>,
    pub on_backup: Vec<String>,
    pub on_fault: Vec<String>,
}

pub(super) async fn run_hook(program: &str, args: &[String], state: VrrpState, instance: &str) {
    let run = tokio::process::Command::new(program)
        .args(args)
        .env("LBMESH_VRRP_STATE", state.to_string())
        .env("LBMESH_VRRP_INSTANCE", instance)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(60), run).await {
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(%program, %state, "VRRP hook succeeded");
        }
        Ok(Ok(out)) => tracing::error!(
            %program, %state, status = %out.status,
            stderr = %String::from_utf8_lossy(&out.stderr).trim(),
            "VRRP hook failed"
        ),
        Ok(Err(e)) => tracing::error!(%program, %state, error = %e, "cannot run VRRP hook"),
        Err(_) => tracing::error!(%program, %state, "VRRP hook still running after 60 s; killed"),
    }
}
