//! The process's log output: a `tracing` filter (`RUST_LOG` wins over the
//! configured `log`) and a format, text for people or JSON lines for log
//! collectors.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The filter in force: `RUST_LOG` when it is set and not blank, else
/// `configured` (the `log` setting). An error names the source and the
/// directive that does not parse.
pub fn filter(rust_log: Option<&str>, configured: &str) -> Result<EnvFilter, String> {
    match rust_log {
        Some(directive) if !directive.trim().is_empty() => EnvFilter::try_new(directive)
            .map_err(|e| format!("invalid RUST_LOG {directive:?}: {e}")),
        _ => EnvFilter::try_new(configured)
            .map_err(|e| format!("invalid log filter {configured:?}: {e}")),
    }
}

/// Installs the global subscriber writing to standard output. A JSON line
/// carries `timestamp`, `level`, `target`, `fields` (the event's fields,
/// `message` among them) and `span` (the span it happened in), so that a
/// collector can index `fields.peer` and the like without parsing text.
///
/// Does nothing if a global subscriber is already installed (tests).
pub fn init(filter: EnvFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    // Fails only if a global subscriber is already installed.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .with_current_span(true)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_wins_unless_blank() {
        assert_eq!(filter(Some("debug"), "warn").unwrap().to_string(), "debug");
        assert_eq!(filter(Some("  "), "warn").unwrap().to_string(), "warn");
        assert_eq!(filter(None, "warn").unwrap().to_string(), "warn");
    }

    #[test]
    fn errors_name_the_source() {
        let e = filter(Some("info,[[["), "warn").unwrap_err();
        assert!(e.starts_with("invalid RUST_LOG"), "{e}");
        let e = filter(None, "info,[[[").unwrap_err();
        assert!(e.starts_with("invalid log filter"), "{e}");
    }
}
