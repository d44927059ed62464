//! The `track_script` check: asks the local daemon's health endpoint.
//!
//! The generated keepalived.conf only asks whether the daemon answers at all
//! (`alive`): the daemon itself decides health through the track file, so
//! the check is a backstop for a daemon that died or hangs.

use std::time::Duration;

/// Answers one health check for keepalived: Ok, or the reason in one line.
/// With `alive`, any answer from the daemon is Ok.
pub async fn check(api: &str, timeout: Duration, alive: bool) -> Result<(), String> {
    let url = format!("{}/healthz", api.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .use_rustls_tls()
        // The check runs on the same host as the daemon; its certificate
        // may be self-signed. Health is not a secret.
        .danger_accept_invalid_certs(true)
        .build()
        .map_err(|e| e.to_string())?;
    let resp = client
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("lbmesh does not answer at {url}: {e}"))?;
    let status = resp.status();
    if alive {
        return Ok(());
    }
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if status.is_success() {
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
