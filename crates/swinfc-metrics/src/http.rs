//! `GET /metrics` on a plain std listener: one scrape every few seconds needs no async runtime,
//! and owning the socket lets several exporters (port 0) live in one process.
//!
//! Each connection is answered on its own thread under one deadline for the whole exchange, so a
//! client that trickles its request (or reads the answer slowly) holds up only itself. At most
//! [`MAX_CLIENTS`] are answered at once; more are closed at once rather than queued, so a crowd
//! of such clients costs a bounded number of threads and delays no one beyond the deadline.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// Everything a scrape needs (request in, answer out) fits easily; a client slower than this
/// is stuck or hostile.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Prometheus servers and a person with curl: a handful. The limit bounds what slow clients can
/// take, not throughput (an answer takes milliseconds).
const MAX_CLIENTS: usize = 8;
/// A request line and headers of a scraper fit easily; anything longer is not one.
const MAX_REQUEST: usize = 16 * 1024;

type Render = dyn Fn() -> String + Send + Sync;

/// The accepting thread; stopped and joined on drop. Connections being answered finish on their
/// own within [`REQUEST_DEADLINE`].
pub(crate) struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `render()` at `/metrics` on `listener` until dropped.
    pub(crate) fn spawn(
        listener: TcpListener,
        render: impl Fn() -> String + Send + Sync + 'static,
    ) -> std::io::Result<Server> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let render: Arc<Render> = Arc::new(render);
        let active = Arc::new(AtomicUsize::new(0));
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stopping.load(Ordering::Acquire) {
                        break;
                    }
                    match stream {
                        Ok(stream) => dispatch(stream, &render, &active),
                        Err(e) => warn!(error = %e, "accepting a metrics connection"),
                    }
                }
            })?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // `accept` has no timeout: a connection of our own wakes it up to see the flag.
        let _ = TcpStream::connect_timeout(&reachable(self.addr), Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Where a local client reaches a listener bound to `addr` (a wildcard address is not connectable).
pub(crate) fn reachable(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Holds one of the [`MAX_CLIENTS`] places until dropped, even if answering panics.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(active: &Arc<AtomicUsize>) -> Option<Slot> {
        active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_CLIENTS).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(active.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Answers `stream` on a thread of its own, or closes it when every place is taken.
fn dispatch(stream: TcpStream, render: &Arc<Render>, active: &Arc<AtomicUsize>) {
    let peer = stream.peer_addr().ok();
    let Some(slot) = Slot::take(active) else {
        debug!(
            ?peer,
            "metrics connection closed: {MAX_CLIENTS} clients are being answered"
        );
        return;
    };
    let render = render.clone();
    let spawned = std::thread::Builder::new()
        .name("metrics-client".into())
        .spawn(move || {
            let _slot = slot;
            let mut client = Deadline {
                stream,
                until: Instant::now() + REQUEST_DEADLINE,
            };
            if let Err(e) = answer(&mut client, &*render) {
                debug!(?peer, error = %e, "metrics client went away");
            }
        });
    if let Err(e) = spawned {
        warn!(?peer, error = %e, "no thread to answer a metrics connection");
    }
}

/// A stream whose every read and write ends by `until`: a per-call timeout alone lets a client
/// that sends (or takes) a byte at a time keep the exchange going forever.
struct Deadline {
    stream: TcpStream,
    until: Instant,
}

impl Deadline {
    fn left(&self) -> std::io::Result<Duration> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("request not done within {REQUEST_DEADLINE:?}"),
            ));
        }
        Ok(left)
    }
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.stream.set_read_timeout(Some(self.left()?))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.set_write_timeout(Some(self.left()?))?;
        self.stream.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

fn answer(stream: &mut Deadline, render: &Render) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut chunk = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&chunk[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: try /metrics\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET is served\n".into(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        Server::spawn(listener, || "swinfc_up 1\n".to_string()).unwrap()
    }

    /// `GET /metrics` on a fresh connection; the whole response. The read timeout only keeps a
    /// failing test from hanging.
    fn scrape(addr: SocketAddr) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(REQUEST_DEADLINE * 2))?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }

    /// Sends one byte of a request that never ends every 2 s; returns how long until the server
    /// closed the connection, or None if it had not after `give_up`.
    fn trickle(addr: SocketAddr, give_up: Duration) -> Option<Duration> {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 256];
        while start.elapsed() < give_up {
            if stream.write_all(b"G").is_err() {
                return Some(start.elapsed());
            }
            match stream.read(&mut buf) {
                Ok(0) => return Some(start.elapsed()),
                Ok(_) => panic!("a response to a request that never ended"),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Some(start.elapsed()),
            }
        }
        None
    }

    #[test]
    fn a_trickling_client_delays_no_scrape() {
        let server = serve();
        let addr = server.addr;
        let trickler = std::thread::spawn(move || trickle(addr, Duration::from_secs(4)));
        std::thread::sleep(Duration::from_millis(200));
        for _ in 0..3 {
            let start = Instant::now();
            let response = scrape(addr).unwrap();
            assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
            assert!(response.ends_with("swinfc_up 1\n"), "{response}");
            assert!(
                start.elapsed() < Duration::from_secs(1),
                "a scrape beside a trickling client took {:?}",
                start.elapsed()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        trickler.join().unwrap();
    }

    #[test]
    fn a_trickling_client_is_cut_off_at_the_deadline() {
        let server = serve();
        let closed = trickle(server.addr, REQUEST_DEADLINE + Duration::from_secs(5))
            .expect("the server never closed a request that kept trickling");
        assert!(
            closed >= REQUEST_DEADLINE - Duration::from_millis(100)
                && closed < REQUEST_DEADLINE + Duration::from_secs(3),
            "closed after {closed:?}, deadline {REQUEST_DEADLINE:?}"
        );
    }

    #[test]
    fn connections_beyond_the_limit_are_closed_at_once() {
        let server = serve();
        let idle: Vec<TcpStream> = (0..MAX_CLIENTS)
            .map(|_| TcpStream::connect(server.addr).unwrap())
            .collect();
        let mut extra = TcpStream::connect(server.addr).unwrap();
        extra.set_read_timeout(Some(REQUEST_DEADLINE * 2)).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 64];
        // End of stream or a reset, either way without an answer.
        assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)));
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the connection over the limit waited {:?}",
            start.elapsed()
        );
        // Places come back as their clients leave.
        drop(idle);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match scrape(server.addr) {
                Ok(response) if response.starts_with("HTTP/1.1 200 OK") => break,
                other if Instant::now() > deadline => {
                    panic!("no scrape after the idle clients left: {other:?}")
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}
