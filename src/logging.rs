//! Where log lines go and what they look like: the filter from `LBMESH_LOG`,
//! text or JSON lines from `LBMESH_LOG_FORMAT`, always on stderr.

use tracing_subscriber::EnvFilter;

/// The filter when `LBMESH_LOG` is unset or empty.
pub const DEFAULT_FILTER: &str = "info,quinn_udp=error";

/// How each log line is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `2025-01-01T00:00:00Z  INFO lbmesh::events: write accepted event="write" …`
    Text,
    /// One JSON object per line, every field at the top level.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(
        "LBMESH_LOG={value:?} is not a valid log filter: {reason}\n\
         Use levels and targets such as `info`, `lbmesh=debug` or `info,lbmesh::events=warn`."
    )]
    Filter { value: String, reason: String },
    #[error("LBMESH_LOG_FORMAT={0:?} is not a log format; use `text` or `json`")]
    Format(String),
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// The filter for `LBMESH_LOG`'s value; unset or empty means [`DEFAULT_FILTER`].
pub fn filter(value: Option<&str>) -> Result<EnvFilter, LogError> {
    let text = match value.map(str::trim) {
        None | Some("") => DEFAULT_FILTER,
        Some(v) => v,
    };
    EnvFilter::builder()
        .parse(text)
        .map_err(|e| LogError::Filter {
            value: text.to_owned(),
            reason: e.to_string(),
        })
}

/// The format for `LBMESH_LOG_FORMAT`'s value; unset or empty means text.
pub fn format(value: Option<&str>) -> Result<Format, LogError> {
    match value.map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("" | "text") => Ok(Format::Text),
        Some("json") => Ok(Format::Json),
        Some(_) => Err(LogError::Format(value.unwrap_or_default().to_owned())),
    }
}

/// Installs the process-wide logger from `LBMESH_LOG` and `LBMESH_LOG_FORMAT`.
pub fn init_from_env() -> Result<(), LogError> {
    let var = |k: &str| std::env::var(k).ok();
    let filter = filter(var("LBMESH_LOG").as_deref())?;
    let format = format(var("LBMESH_LOG_FORMAT").as_deref())?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        Format::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        Format::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
    installed.map_err(|e| LogError::Install(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for good in [None, Some(""), Some("info"), Some("lbmesh=debug,warn")] {
            assert!(filter(good).is_ok(), "{good:?}");
        }
        for bad in ["lbmesh=loud", "info,=,x=y=z", "[{"] {
            let e = filter(Some(bad)).expect_err(bad).to_string();
            assert!(e.contains("not a valid log filter"), "{e}");
        }
    }

    #[test]
    fn formats() {
        assert_eq!(format(None).unwrap(), Format::Text);
        assert_eq!(format(Some("JSON")).unwrap(), Format::Json);
        assert_eq!(format(Some("text")).unwrap(), Format::Text);
        assert!(format(Some("yaml")).is_err());
    }
}
