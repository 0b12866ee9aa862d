//! Runs Prometheus' `promtool` for the tests that check what we export or ship. Included with
//! `#[path]` by the test crates that need it, so there is one copy.

use std::io::Write;
use std::process::{Command, Stdio};

/// `promtool ARGS` with `stdin` piped in; its stdout and stderr together when it succeeds.
/// `None` when promtool is not installed, which fails the test under `SWINFC_REQUIRE_PROMTOOL=1`
/// (CI sets it). A failing check panics with what promtool said.
pub fn promtool(args: &[&str], stdin: &str) -> Option<String> {
    let found = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert_ne!(
            std::env::var("SWINFC_REQUIRE_PROMTOOL").as_deref(),
            Ok("1"),
            "SWINFC_REQUIRE_PROMTOOL=1 but promtool is not on PATH"
        );
        return None;
    }
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("promtool reads its input");
    let out = child.wait_with_output().expect("promtool finishes");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {}:\n{said}", args.join(" "));
    Some(said)
}
