//! The log format both binaries share: one line per event on stderr, `RUST_LOG` filtering
//! (default `info`), colour only on a terminal so that captured logs stay plain text (the
//! launcher reads its workers' levels from their lines).

pub fn init() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
}
