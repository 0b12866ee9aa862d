//! Strangers flooding the control server with half-open connections, over real sockets, against
//! a real server: memory and a real worker's join must not suffer (the log: refusal_log.rs).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{identity, server};
use swinfc_comm::ControlClient;
use swinfc_comm::server::{HANDSHAKE_TIMEOUT, MAX_HELLO, MAX_UNAUTHENTICATED};

/// The control protocol's frame limit: what a half-open connection claims to be sending.
const CLAIMED: usize = 1 << 20;

/// Resident memory of this process (which hosts the server), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Fails unless this process's resident memory grew by less than a few MiB from `before` to
/// `peak`.
fn assert_grew_little(before: u64, peak: u64, attack: &str) {
    let grew_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grew_mib < 32,
        "1000 connections ({attack}) grew the server's process by {grew_mib} MiB"
    );
}

/// Whether the server has closed `c` (end of stream or a reset), without waiting.
fn closed(mut c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 16];
    match c.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => panic!("the server answered a stranger"),
        Err(e) => e.kind() != ErrorKind::WouldBlock,
    }
}

/// Opens `n` connections that each send `header` and then `body`, and keeps them open.
fn half_open(addr: SocketAddr, n: usize, header: u32, body: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut c = TcpStream::connect(addr).unwrap();
            // A refused connection fails these writes; only a server that keeps reading lets
            // them finish. The timeout only keeps a failing test from hanging.
            c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
            let _ = c
                .write_all(&header.to_be_bytes())
                .and_then(|()| c.write_all(body));
            c
        })
        .collect()
}

#[test]
fn half_open_connections_leave_memory_bounded_and_a_worker_still_joins() {
    let (s, token) = server(1);
    let before = rss_kib();
    let mut peak = before;

    // The reported attack: a frame as large as the protocol allows, a quarter of it sent.
    let big = half_open(s.local_addr(), 1000, CLAIMED as u32, &vec![b' '; CLAIMED / 4]);
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kib());
    }
    drop(big);
    assert_grew_little(before, peak, "a frame claimed and never sent");

    // A hello that fits but never ends: each holds a place until the handshake timeout.
    let slow = half_open(s.local_addr(), 1000, MAX_HELLO as u32, b"{\"Hello\":");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut open = slow.len();
    while Instant::now() < deadline {
        open = slow.iter().filter(|c| !closed(c)).count();
        if open <= MAX_UNAUTHENTICATED {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    peak = peak.max(rss_kib());
    assert!(
        open <= MAX_UNAUTHENTICATED,
        "{open} connections without a hello still open; at most {MAX_UNAUTHENTICATED} may be"
    );
    assert_grew_little(before, peak, "a hello that never ends");

    // While the places are all taken, a worker with the token joins at once.
    let start = Instant::now();
    let client = ControlClient::connect(&identity(&s, &token, 0, 1, 0), Duration::from_secs(5))
        .expect("a worker joins beside a flood of strangers");
    assert!(
        start.elapsed() < HANDSHAKE_TIMEOUT / 4,
        "joining took {:?}",
        start.elapsed()
    );
    assert_eq!(s.connected_ranks(), vec![0]);
    drop(client);
}
