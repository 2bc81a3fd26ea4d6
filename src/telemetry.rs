//! Tracing setup: `RUST_LOG` filters (default `info`), `GATEHOUSE_LOG_FORMAT=json` switches to JSON lines.

use tracing_subscriber::{fmt, EnvFilter};

/// Installs the global subscriber; a second call (as in tests) is a no-op.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}
