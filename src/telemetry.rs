//! Logging: `LOG_LEVEL` and `LOG_STYLE` (STANDARD, SIMPLE or JSON), overridable with `RUST_LOG`.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogStyle};

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(log: &LogConfig) {
    let level = match log.level.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" | "WARNING" => "warn",
        "ERROR" => "error",
        "TRACE" => "trace",
        _ => log.level.as_str(),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new(format!("{level},h2=warn,hyper=warn,tower=warn,ractor_cluster=warn,ractor=warn"))
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match log.style {
        LogStyle::Json => builder.json().try_init(),
        LogStyle::Simple => builder.compact().without_time().with_target(false).try_init(),
        LogStyle::Standard => builder.try_init(),
    };
}
