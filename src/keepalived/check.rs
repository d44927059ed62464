//! The `track_script` check: asks the local daemon's health endpoint.
//!
//! The generated keepalived.conf only asks whether the daemon answers at all
//! (`alive`): the daemon itself decides health through the track file, so
//! the check is a backstop for a daemon that died or hangs.

use crate::client::ApiClient;

/// Answers one health check for keepalived: Ok, or the reason in one line.
/// With `alive`, any answer from the daemon is Ok. The health path needs no
/// token, and the certificate is verified like on every other call (a
/// daemon that serves a wrong one fails the check).
pub async fn check(client: &ApiClient, alive: bool) -> Result<(), String> {
    let (status, body) = client
        .get_raw("/healthz")
        .await
        .map_err(|e| e.to_string())?;
    if alive || status.is_success() {
        return Ok(());
    }
    let problems: Vec<&str> = body["problems"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_str()).collect())
        .unwrap_or_default();
    Err(if problems.is_empty() {
        format!("lbmesh is unhealthy ({status})")
    } else {
        format!("lbmesh is unhealthy: {}", problems.join("; "))
    })
}
