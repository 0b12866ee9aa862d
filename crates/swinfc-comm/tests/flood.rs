//! Strangers flooding the control server: half-open connections and wrong tokens, over real
//! sockets, against a real server. Memory, the log and a real worker's join must not suffer.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{identity, server};
use swinfc_comm::server::{HANDSHAKE_TIMEOUT, MAX_HELLO, MAX_UNAUTHENTICATED, REFUSAL_REPORT_EVERY};
use swinfc_comm::{ControlClient, ControlServer, JobToken, ServerEvent};

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

/// Everything logged at WARN and above, as text.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<u8>>>);

impl Write for Log {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Log {
    fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The refused connections that `lines` account for: one per line in full, plus the counts.
fn accounted(lines: &[String]) -> u64 {
    lines
        .iter()
        .map(|l| match l.split_once(" more control connection(s) refused") {
            Some((head, _)) => head.rsplit(' ').next().unwrap().parse::<u64>().unwrap(),
            None => 1,
        })
        .sum()
}

#[test]
fn refused_connections_are_logged_once_then_counted() {
    const N: u64 = 200;
    let log = Log::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    // The server runs on this thread's runtime, so this thread's subscriber sees its logs.
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let token = JobToken::generate().unwrap();
        let (server, mut events) = ControlServer::bind("127.0.0.1:0".parse().unwrap(), token, 1, 0)
            .await
            .unwrap();
        let addr = server.local_addr();
        let wrong = JobToken::generate().unwrap().to_hex();
        let strangers = tokio::task::spawn_blocking(move || {
            for _ in 0..N {
                let hello = format!(r#"{{"Hello":{{"token":"{wrong}","generation":0,"rank":0}}}}"#);
                let mut c = TcpStream::connect(addr).unwrap();
                let mut frame = (hello.len() as u32).to_be_bytes().to_vec();
                frame.extend_from_slice(hello.as_bytes());
                c.write_all(&frame).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                assert!(matches!(c.read(&mut [0u8; 16]), Ok(0) | Err(_)));
            }
        });
        let mut bad = 0;
        while bad < N {
            match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                Ok(Some(ServerEvent::BadToken { .. })) => bad += 1,
                Ok(Some(_)) => {}
                other => panic!("{bad} of {N} refusals reported, then {other:?}"),
            }
        }
        strangers.await.unwrap();
        // The count of those not logged in full comes within an interval or so.
        let deadline = Instant::now() + REFUSAL_REPORT_EVERY * 2 + Duration::from_secs(2);
        while accounted(&log.lines()) < N && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let lines = log.lines();
    let full: Vec<&String> = lines.iter().filter(|l| l.contains("wrong job token")).collect();
    assert_eq!(full.len(), 1, "{lines:#?}");
    assert!(
        lines.len() <= 3,
        "{N} refusals took {} lines: {lines:#?}",
        lines.len()
    );
    assert_eq!(accounted(&lines), N, "{lines:#?}");
}
