//! Links between node launchers and node 0's control server, over real TCP in one process.

mod common;

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::{identity, server};
use swinfc_comm::{
    CommError, ControlClient, ControlServer, JobOutcome, JobToken, NodeClient, NodeCommand, NodeReport,
    Resume, ServerEvent, ServerHandle, Signal,
};

const T: Duration = Duration::from_secs(10);

fn wait_event(s: &ServerHandle, pred: impl Fn(&ServerEvent) -> bool) -> ServerEvent {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.events().recv_timeout(left) {
            Ok(e) if pred(&e) => return e,
            Ok(_) => {}
            Err(_) => panic!("no matching event within {T:?}"),
        }
    }
}

fn link(s: &ServerHandle, token: &JobToken, node: usize) -> Result<NodeClient, CommError> {
    NodeClient::connect("127.0.0.1", s.local_addr().port(), token, node, T)
}

#[test]
fn node_reports_arrive_as_events_and_commands_reach_the_node() {
    let (s, token) = server(4);
    let mut n1 = link(&s, &token, 1).unwrap();
    let mut n2 = link(&s, &token, 2).unwrap();
    wait_event(&s, |e| matches!(e, ServerEvent::NodeJoined { node: 2, .. }));
    assert_eq!(s.connected_nodes(), vec![1, 2]);
    // Nodes are not worker ranks.
    assert!(s.connected_ranks().is_empty());

    let exit = NodeReport::Exit {
        rank: 3,
        ok: false,
        cause: "killed by signal 9".into(),
    };
    n2.send(exit.clone()).unwrap();
    match wait_event(&s, |e| matches!(e, ServerEvent::NodeReport { .. })) {
        ServerEvent::NodeReport { node, report } => {
            assert_eq!(node, 2);
            assert_eq!(report, exit);
        }
        _ => unreachable!(),
    }

    assert_eq!(n1.recv_timeout(Duration::from_millis(50)).unwrap(), None);
    let start = NodeCommand::Start {
        generation: 1,
        attempt: 2,
        resume: Resume::Auto,
        master_port: 29500,
    };
    assert!(s.send_node(1, start.clone()));
    assert!(s.send_node(1, NodeCommand::Stop));
    assert_eq!(n1.recv_timeout(T).unwrap(), Some(start));
    assert_eq!(n1.recv_timeout(T).unwrap(), Some(NodeCommand::Stop));
    assert_eq!(n2.recv_timeout(Duration::from_millis(50)).unwrap(), None);
    assert!(!s.send_node(3, NodeCommand::Stop));
}

#[test]
fn wrong_token_node_zero_and_duplicates_are_refused() {
    let (s, token) = server(2);
    let wrong = JobToken::generate().unwrap();
    // Closed without a reply, exactly like a worker with a wrong token.
    assert!(matches!(link(&s, &wrong, 1), Err(CommError::Refused(m)) if m.contains("wrong job token?")));
    wait_event(&s, |e| matches!(e, ServerEvent::BadToken { .. }));

    match link(&s, &token, 0) {
        Err(CommError::Refused(m)) => assert!(m.contains("node 0"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
    wait_event(&s, |e| matches!(e, ServerEvent::Rejected { .. }));

    let _n1 = link(&s, &token, 1).unwrap();
    match link(&s, &token, 1) {
        Err(CommError::Refused(m)) => assert!(m.contains("node 1"), "{m}"),
        other => panic!("{:?}", other.err()),
    }
    // The refused attempts took nothing: the first link is still the only one.
    assert_eq!(s.connected_nodes(), vec![1]);
}

#[test]
fn node_link_survives_a_new_generation_that_closes_workers() {
    let (s, token) = server(1);
    let mut worker = ControlClient::connect(&identity(&s, &token, 0, 1, 0), T).unwrap();
    let mut n1 = link(&s, &token, 1).unwrap();
    wait_event(&s, |e| matches!(e, ServerEvent::NodeJoined { node: 1, .. }));

    s.new_generation(1);
    wait_event(&s, |e| {
        matches!(
            e,
            ServerEvent::Disconnected {
                rank: 0,
                generation: 0,
                ..
            }
        )
    });
    assert!(worker.kv_get("x").is_err());
    assert_eq!(s.connected_nodes(), vec![1]);
    assert!(s.send_node(1, NodeCommand::Stop));
    assert_eq!(n1.recv_timeout(T).unwrap(), Some(NodeCommand::Stop));
    n1.send(NodeReport::Stopped).unwrap();
    wait_event(&s, |e| matches!(e, ServerEvent::NodeReport { node: 1, .. }));
    // Workers of the new round join beside the link.
    ControlClient::connect(&identity(&s, &token, 0, 1, 1), T).unwrap();
}

#[test]
fn dropping_the_client_is_noticed_as_node_gone() {
    let (s, token) = server(1);
    let n3 = link(&s, &token, 3).unwrap();
    wait_event(&s, |e| matches!(e, ServerEvent::NodeJoined { node: 3, .. }));
    drop(n3);
    wait_event(&s, |e| matches!(e, ServerEvent::NodeGone { node: 3, .. }));
    assert!(s.connected_nodes().is_empty());
    assert!(!s.send_node(3, NodeCommand::Stop));
    // The node may link again (a restarted launcher).
    link(&s, &token, 3).unwrap();
}

#[test]
fn recv_times_out_then_fails_once_the_server_is_gone() {
    let (s, token) = server(1);
    let mut n1 = link(&s, &token, 1).unwrap();
    let t = Instant::now();
    assert_eq!(n1.recv_timeout(Duration::from_millis(200)).unwrap(), None);
    assert!(t.elapsed() >= Duration::from_millis(200));

    drop(s);
    let t = Instant::now();
    match n1.recv_timeout(T) {
        Err(CommError::Closed { peer }) => assert!(peer.contains("control server"), "{peer}"),
        other => panic!("{other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(n1.send(NodeReport::Stopped).is_err());
}

#[test]
fn connect_waits_for_node_zero_to_come_up() {
    // A port that is free now; node 0's server takes it a little later.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = JobToken::generate().unwrap();
    let t2 = token.clone();
    let node = std::thread::spawn(move || NodeClient::connect("127.0.0.1", port, &t2, 1, T));
    std::thread::sleep(Duration::from_millis(300));
    let s =
        ControlServer::spawn_in_thread(format!("127.0.0.1:{port}").parse().unwrap(), token, 1, 0).unwrap();
    node.join().unwrap().unwrap();
    wait_event(&s, |e| matches!(e, ServerEvent::NodeJoined { node: 1, .. }));
}

#[test]
fn messages_of_the_other_role_close_the_link() {
    let (s, token) = server(1);
    let send_raw = |hello: String, msg: &str| {
        let mut c = TcpStream::connect(s.local_addr()).unwrap();
        for payload in [hello.as_bytes(), msg.as_bytes()] {
            c.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
            c.write_all(payload).unwrap();
        }
        c
    };
    let _node = send_raw(
        format!(r#"{{"NodeHello":{{"token":"{}","node":1}}}}"#, token.to_hex()),
        r#"{"KvGet":{"id":1,"key":"x"}}"#,
    );
    match wait_event(&s, |e| matches!(e, ServerEvent::NodeGone { node: 1, .. })) {
        ServerEvent::NodeGone { reason, .. } => assert!(reason.contains("node launcher's link"), "{reason}"),
        _ => unreachable!(),
    }
    let _worker = send_raw(
        format!(
            r#"{{"Hello":{{"token":"{}","generation":0,"rank":0}}}}"#,
            token.to_hex()
        ),
        r#"{"NodeReport":{"kind":"stopped"}}"#,
    );
    match wait_event(&s, |e| matches!(e, ServerEvent::Disconnected { rank: 0, .. })) {
        ServerEvent::Disconnected { reason, .. } => assert!(reason.contains("worker's link"), "{reason}"),
        _ => unreachable!(),
    }
}

/// A node message that does not decode is an error that ends the link and names the node, in
/// both directions: node 0 never reads a default (rank 0, port 0) into a malformed report.
#[test]
fn a_malformed_node_message_ends_the_link_with_the_reason() {
    let (s, token) = server(1);
    let mut c = TcpStream::connect(s.local_addr()).unwrap();
    let hello = format!(r#"{{"NodeHello":{{"token":"{}","node":1}}}}"#, token.to_hex());
    // An exit report without its rank.
    let bad = r#"{"NodeReport":{"kind":"exit","ok":false,"cause":"x"}}"#;
    for payload in [hello.as_str(), bad] {
        c.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
        c.write_all(payload.as_bytes()).unwrap();
    }
    match wait_event(&s, |e| matches!(e, ServerEvent::NodeGone { node: 1, .. })) {
        ServerEvent::NodeGone { reason, .. } => {
            assert!(
                reason.contains("malformed frame") && reason.contains("rank"),
                "{reason}"
            )
        }
        _ => unreachable!(),
    }
    assert!(
        !std::iter::from_fn(|| s.events().try_recv().ok())
            .any(|e| matches!(e, ServerEvent::NodeReport { .. }))
    );

    // The other way: a node launcher whose node 0 sends a command it cannot read loses the link.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let node0 = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut len = [0u8; 4];
        std::io::Read::read_exact(&mut c, &mut len).unwrap();
        let mut hello = vec![0u8; u32::from_be_bytes(len) as usize];
        std::io::Read::read_exact(&mut c, &mut hello).unwrap();
        let welcome = r#"{"Welcome":{"world_size":1,"generation":0}}"#;
        let bad = r#"{"NodeCommand":{"cmd":"start","generation":1,"attempt":1,"resume":"auto","master_port":70000}}"#;
        for payload in [welcome, bad] {
            c.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
            c.write_all(payload.as_bytes()).unwrap();
        }
        c
    });
    let mut n1 = NodeClient::connect("127.0.0.1", port, &token, 1, T).unwrap();
    let _held = node0.join().unwrap();
    match n1.recv_timeout(T) {
        Err(CommError::Closed { peer }) => {
            assert!(
                peer.contains("malformed frame") && peer.contains("70000"),
                "{peer}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn typed_reports_and_commands_cross_the_link_whole() {
    let (s, token) = server(1);
    let mut n1 = link(&s, &token, 1).unwrap();
    wait_event(&s, |e| matches!(e, ServerEvent::NodeJoined { node: 1, .. }));
    n1.send(NodeReport::Signal { signal: Signal::Usr1 }).unwrap();
    match wait_event(&s, |e| matches!(e, ServerEvent::NodeReport { .. })) {
        ServerEvent::NodeReport { report, .. } => {
            assert_eq!(report, NodeReport::Signal { signal: Signal::Usr1 })
        }
        _ => unreachable!(),
    }
    let exit = NodeCommand::Exit {
        outcome: JobOutcome::Preempted,
        reason: "drained at step 4".into(),
    };
    assert!(s.send_node(1, exit.clone()));
    assert_eq!(n1.recv_timeout(T).unwrap(), Some(exit));
}
