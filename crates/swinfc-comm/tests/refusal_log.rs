//! Strangers with a wrong token: their refusals are logged once, then counted. Alone in its test
//! binary because it captures the log with a thread-local subscriber, and tracing caches each log
//! call site's interest process-wide: a test running beside it in the same process can make the
//! first refusal's line skip this subscriber.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swinfc_comm::server::REFUSAL_REPORT_EVERY;
use swinfc_comm::{ControlServer, JobToken, ServerEvent};

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
