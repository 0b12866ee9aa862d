//! The log format both binaries share: one line per event on stderr, `RUST_LOG` filtering
//! (default `info`). Captured output (a worker's, which the launcher reads levels from, or any
//! redirected log) and `RUST_LOG` runs get the full format with timestamp and module; a person at
//! a terminal gets the level and the message, in colour. A command with a console of its own
//! (`swinfc train`) shows a person only warnings and errors besides it.

pub fn init(console: bool) {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env();
    let full = filter.is_ok() || !terminal;
    let default = if console && !full { "warn" } else { "info" };
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(terminal)
        .with_env_filter(filter.unwrap_or_else(|_| default.into()));
    if full {
        builder.init();
    } else {
        builder.without_time().with_target(false).init();
    }
}
