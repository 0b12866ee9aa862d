//! The control server and client, in one process.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{identity, server};
use swinfc_comm::{
    Collective, CommError, ControlClient, JobToken, Phase, ServerCommand, ServerEvent, ServerHandle, TcpRing,
};

const T: Duration = Duration::from_secs(10);

fn wait_event(s: &ServerHandle, timeout: Duration, pred: impl Fn(&ServerEvent) -> bool) -> ServerEvent {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.events().recv_timeout(left) {
            Ok(e) if pred(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no matching event within {timeout:?}"),
        }
    }
}

/// Sends raw bytes and reports whether the server closed the connection without replying.
fn closed_without_reply(s: &ServerHandle, bytes: &[u8]) -> bool {
    let mut c = TcpStream::connect(s.local_addr()).unwrap();
    c.set_read_timeout(Some(T)).unwrap();
    c.write_all(bytes).unwrap();
    // Our EOF ends a truncated frame at once instead of at the server's handshake timeout.
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let mut buf = [0u8; 64];
    matches!(c.read(&mut buf), Ok(0) | Err(_))
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn key_value_set_get_wait() {
    let (s, token) = server(2);
    let mut a = ControlClient::connect(&identity(&s, &token, 0, 2, 0), T).unwrap();
    let mut b = ControlClient::connect(&identity(&s, &token, 1, 2, 0), T).unwrap();
    assert_eq!(a.kv_get("x").unwrap(), None);
    let waiter = std::thread::spawn(move || (b.kv_wait("x", T), b));
    std::thread::sleep(Duration::from_millis(100));
    a.kv_set("x", "42").unwrap();
    let (got, mut b) = waiter.join().unwrap();
    assert_eq!(got.unwrap(), "42");
    assert_eq!(b.kv_get("x").unwrap().as_deref(), Some("42"));
    let t = Instant::now();
    match b.kv_wait("never", Duration::from_millis(300)) {
        Err(CommError::Timeout { what, .. }) => assert!(what.contains("never"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(3));
}

#[test]
fn generation_scopes_keys_and_connections() {
    let (s, token) = server(1);
    let mut old = ControlClient::connect(&identity(&s, &token, 0, 1, 0), T).unwrap();
    old.kv_set("nccl-id", "abc").unwrap();
    s.new_generation(1);
    // The old round's connection is closed by the server.
    wait_event(&s, T, |e| {
        matches!(
            e,
            ServerEvent::Disconnected {
                rank: 0,
                generation: 0,
                ..
            }
        )
    });
    assert!(old.kv_get("nccl-id").is_err());
    // A worker of the old round cannot join any more.
    match ControlClient::connect(&identity(&s, &token, 0, 1, 0), T) {
        Err(CommError::Refused(m)) => assert!(m.contains("generation"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
    let mut new = ControlClient::connect(&identity(&s, &token, 0, 1, 1), T).unwrap();
    assert_eq!(new.generation(), 1);
    assert_eq!(new.kv_get("nccl-id").unwrap(), None);
}

#[test]
fn wrong_token_is_refused_without_information() {
    let (s, token) = server(1);
    let wrong = JobToken::generate().unwrap();
    let mut id = identity(&s, &token, 0, 1, 0);
    id.job_token = wrong.to_hex();
    assert!(matches!(
        ControlClient::connect(&id, T),
        Err(CommError::Refused(_))
    ));
    wait_event(&s, T, |e| matches!(e, ServerEvent::BadToken { .. }));
    let hello = format!(
        r#"{{"Hello":{{"token":"{}","generation":0,"rank":0}}}}"#,
        wrong.to_hex()
    );
    assert!(closed_without_reply(&s, &frame(hello.as_bytes())));
    // The right token still works, and the refused attempts did not take rank 0.
    ControlClient::connect(&identity(&s, &token, 0, 1, 0), T).unwrap();
}

#[test]
fn malformed_frames_close_the_connection_not_the_server() {
    let (s, token) = server(2);
    assert!(closed_without_reply(&s, &u32::MAX.to_be_bytes()));
    assert!(closed_without_reply(&s, &frame(b"\xff\xfe not json")));
    assert!(closed_without_reply(
        &s,
        &frame(br#"{"KvGet":{"id":1,"key":"x"}}"#)
    )); // no hello first
    assert!(closed_without_reply(&s, &[0, 0])); // truncated header, then EOF
    // A joined worker sending garbage is disconnected, and the launcher hears why.
    let mut c = TcpStream::connect(s.local_addr()).unwrap();
    let hello = format!(
        r#"{{"Hello":{{"token":"{}","generation":0,"rank":1}}}}"#,
        token.to_hex()
    );
    c.write_all(&frame(hello.as_bytes())).unwrap();
    wait_event(&s, T, |e| matches!(e, ServerEvent::Joined { rank: 1, .. }));
    c.write_all(&frame(b"[1,2")).unwrap();
    match wait_event(&s, T, |e| matches!(e, ServerEvent::Disconnected { rank: 1, .. })) {
        ServerEvent::Disconnected { reason, .. } => assert!(reason.contains("malformed"), "{reason}"),
        _ => unreachable!(),
    }
    // Still serving.
    let mut ok = ControlClient::connect(&identity(&s, &token, 0, 2, 0), T).unwrap();
    ok.kv_set("k", "v").unwrap();
}

#[test]
fn duplicate_and_out_of_range_ranks_are_refused() {
    let (s, token) = server(2);
    let _a = ControlClient::connect(&identity(&s, &token, 0, 2, 0), T).unwrap();
    assert!(
        matches!(ControlClient::connect(&identity(&s, &token, 0, 2, 0), T), Err(CommError::Refused(m)) if m.contains("already"))
    );
    let mut bad = identity(&s, &token, 0, 2, 0);
    bad.rank = 5;
    assert!(
        matches!(ControlClient::connect(&bad, T), Err(CommError::Refused(m)) if m.contains("out of range"))
    );
}

#[test]
fn barriers_wait_for_all_and_name_missing_or_dead_ranks() {
    let (s, token) = server(3);
    let mut c: Vec<ControlClient> = (0..3)
        .map(|r| ControlClient::connect(&identity(&s, &token, r, 3, 0), T).unwrap())
        .collect();
    // All three arrive (twice, the name is reusable).
    for _ in 0..2 {
        let hs: Vec<_> = c
            .drain(..)
            .map(|mut cl| {
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(50 * cl.rank() as u64));
                    cl.barrier("b", T).map(|()| cl)
                })
            })
            .collect();
        c = hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect();
    }
    // Rank 2 never arrives: the timeout names it.
    let mut c2 = c.pop().unwrap();
    let h = std::thread::spawn({
        let mut c1 = c.pop().unwrap();
        move || (c1.barrier("late", Duration::from_millis(400)), c1)
    });
    match c[0].barrier("late", Duration::from_millis(400)) {
        Err(CommError::Timeout { what, .. }) => assert!(what.contains("[2]"), "{what}"),
        other => panic!("{other:?}"),
    }
    let (_, c1) = h.join().unwrap();
    c.push(c1);
    // Rank 2 disconnects: a barrier waiting for it fails at once, naming it.
    c2.heartbeat(1, Phase::Train).unwrap();
    wait_event(&s, T, |e| {
        matches!(e, ServerEvent::Heartbeat { rank: 2, step: 1, .. })
    });
    drop(c2);
    wait_event(&s, T, |e| matches!(e, ServerEvent::Disconnected { rank: 2, .. }));
    let t = Instant::now();
    match c[0].barrier("after", T) {
        Err(CommError::Server(m)) => assert!(m.contains("[2]") && m.contains("disconnected"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn reports_heartbeats_commands_and_disconnects_reach_the_right_side() {
    let (s, token) = server(2);
    let mut a = ControlClient::connect(&identity(&s, &token, 0, 2, 0), T).unwrap();
    let b = ControlClient::connect(&identity(&s, &token, 1, 2, 0), T).unwrap();
    wait_event(&s, T, |e| matches!(e, ServerEvent::Joined { rank: 1, .. }));
    assert_eq!(s.connected_ranks(), vec![0, 1]);
    a.report(serde_json::json!({"step": 3, "loss": 1.5})).unwrap();
    match wait_event(&s, T, |e| matches!(e, ServerEvent::Report { .. })) {
        ServerEvent::Report { rank, record } => assert_eq!((rank, record["step"].as_u64()), (0, Some(3))),
        _ => unreachable!(),
    }
    assert_eq!(a.poll_command().unwrap(), None);
    assert!(s.send_command(0, ServerCommand::StopAfterStep(7)));
    assert_eq!(s.broadcast_command(ServerCommand::Abort), 2);
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    while got.len() < 2 && Instant::now() < deadline {
        if let Some(c) = a.poll_command().unwrap() {
            got.push(c);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(got, vec![ServerCommand::StopAfterStep(7), ServerCommand::Abort]);
    // A disconnect is noticed at once, naming the rank.
    let t = Instant::now();
    drop(b);
    wait_event(&s, T, |e| matches!(e, ServerEvent::Disconnected { rank: 1, .. }));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(!s.send_command(1, ServerCommand::Abort));
    // The server going away is an error for the worker, not a silent None.
    drop(s);
    let deadline = Instant::now() + T;
    while a.poll_command().is_ok() {
        assert!(
            Instant::now() < deadline,
            "client did not notice the server's end"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn world_size_one_ring_is_a_no_op() {
    let (s, token) = server(1);
    let mut c = ControlClient::connect(&identity(&s, &token, 0, 1, 0), T).unwrap();
    let mut ring = TcpRing::connect(&mut c, T).unwrap();
    let mut v = vec![1.5f32, 2.5];
    ring.all_reduce_sum_f32(&mut v).unwrap();
    let mut bytes = vec![1u8, 2];
    ring.broadcast_bytes(0, &mut bytes).unwrap();
    ring.barrier().unwrap();
    assert_eq!((v, bytes), (vec![1.5, 2.5], vec![1, 2]));
    assert!(ring.broadcast_f32(1, &mut [0.0]).is_err());
}

#[test]
fn async_server_api_as_the_launcher_uses_it() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let token = JobToken::generate().unwrap();
        let (server, mut events) =
            swinfc_comm::ControlServer::bind("127.0.0.1:0".parse().unwrap(), token.clone(), 1, 4)
                .await
                .unwrap();
        let id = swinfc_comm::WorkerIdentity {
            rank: 0,
            local_rank: 0,
            world_size: 1,
            master_addr: "127.0.0.1".into(),
            master_port: server.local_addr().port(),
            job_token: token.to_hex(),
            restart_round: 4,
        };
        // The worker side is blocking: it runs on its own thread.
        let worker = std::thread::spawn(move || {
            let mut c = ControlClient::connect(&id, T).unwrap();
            c.heartbeat(12, Phase::Train).unwrap();
            let deadline = Instant::now() + T;
            loop {
                match c.poll_command().unwrap() {
                    Some(cmd) => return cmd,
                    None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                    None => panic!("no command"),
                }
            }
        });
        assert!(matches!(
            next(&mut events).await,
            ServerEvent::Joined {
                rank: 0,
                generation: 4,
                ..
            }
        ));
        assert!(matches!(
            next(&mut events).await,
            ServerEvent::Heartbeat {
                rank: 0,
                step: 12,
                ..
            }
        ));
        assert!(server.send_command(0, ServerCommand::StopAfterStep(13)));
        assert!(matches!(
            next(&mut events).await,
            ServerEvent::Disconnected { rank: 0, .. }
        ));
        assert_eq!(worker.join().unwrap(), ServerCommand::StopAfterStep(13));
    });
}

async fn next(ev: &mut tokio::sync::mpsc::UnboundedReceiver<ServerEvent>) -> ServerEvent {
    tokio::time::timeout(T, ev.recv()).await.unwrap().unwrap()
}
