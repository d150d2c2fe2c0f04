#![allow(clippy::unwrap_used)]
//! The session's rules without sockets: numbering, acks, bounds, resume checks, handover,
//! what is owed OFFLINE at the end.

use super::*;

fn limits(frames: usize, unwritten: usize) -> SessionLimits {
    SessionLimits {
        ring: RingLimits {
            frames,
            bytes: 1 << 20,
        },
        unwritten_frames: unwritten,
        unwritten_bytes: 1 << 20,
        window: Duration::from_secs(30),
    }
}

fn user(s: &str) -> UserId {
    UserId::new(s).unwrap()
}

fn roap(from: &str) -> Origin {
    Origin::Roap {
        sender: user(from),
        session_id: "s1".into(),
    }
}

fn n_of(frame: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    v["n"].as_u64().unwrap()
}

#[tokio::test]
async fn frames_are_numbered_and_written_in_order() {
    let s = Session::new(1, user("bob"), limits(100, 100), false);
    assert_eq!(s.push(r#"{"type":"Ok"}"#, roap("alice")).unwrap(), 1);
    let closer = Closer::default();
    s.attach_fresh(7, closer.clone());
    assert_eq!(s.push(r#"{"type":"Ok"}"#, roap("alice")).unwrap(), 2);
    let (n, f) = s.next_frame(7, 0).await.unwrap();
    assert_eq!((n, n_of(&f)), (1, 1));
    let (n, f) = s.next_frame(7, 1).await.unwrap();
    assert_eq!((n, n_of(&f)), (2, 2));
    // Nothing more: the writer waits; another connection id is not the session's.
    assert!(matches!(s.try_next_frame(7, 2), Next::Wait));
    assert!(matches!(s.try_next_frame(8, 2), Next::Gone));
    // Acks trim; an ack above what was sent is refused.
    s.ack(1).unwrap();
    assert_eq!(s.stats().0, 1);
    assert_eq!(s.ack(5), Err(2));
}

#[test]
fn resume_checks_token_gap_and_ahead() {
    let s = Session::new(1, user("bob"), limits(3, 100), false);
    s.attach_fresh(1, Closer::default());
    for _ in 0..3 {
        s.push(r#"{"type":"Ok"}"#, Origin::Node).unwrap();
    }
    let tok = s.token();
    assert_eq!(tok.len(), 32);
    assert_eq!(
        s.check_resume("0".repeat(32).as_str(), 0),
        Err(Refusal::Token)
    );
    assert_eq!(s.check_resume(&tok, 4), Err(Refusal::Ahead));
    assert!(s.check_resume(&tok, 0).is_ok());
    // Written frames 1..3; a fourth push drops frame 1 (written) from the ring.
    for n in 1..=3 {
        let _ = s.try_next_frame(1, n - 1);
    }
    let _ = s.try_next_frame(1, 3);
    s.push(r#"{"type":"Ok"}"#, Origin::Node).unwrap();
    assert_eq!(s.check_resume(&tok, 0), Err(Refusal::Gap));
    assert!(s.check_resume(&tok, 1).is_ok());
}

#[test]
fn resume_here_replays_after_last_and_closes_the_old_connection() {
    let s = Session::new(1, user("bob"), limits(100, 100), false);
    let old = Closer::default();
    s.attach_fresh(1, old.clone());
    for _ in 0..5 {
        s.push(r#"{"type":"Ok"}"#, roap("alice")).unwrap();
    }
    let new = Closer::default();
    let replay = s.resume_here(&s.token(), 2, 2, new).unwrap();
    assert_eq!(replay, 3);
    assert_eq!(old.reason().unwrap().code, CLOSE_REPLACED);
    let mut got = Vec::new();
    let mut w = 2;
    while let Next::Frame(n, _) = s.try_next_frame(2, w) {
        got.push(n);
        w = n;
    }
    assert_eq!(got, vec![3, 4, 5]);
}

#[test]
fn detached_sessions_buffer_within_bounds_and_refuse_past_them() {
    let s = Session::new(1, user("bob"), limits(2, 100), false);
    s.attach_fresh(1, Closer::default());
    assert_eq!(s.detach(1, true, 0), Detached::Kept);
    s.push(r#"{"type":"Ok"}"#, roap("a")).unwrap();
    s.push(r#"{"type":"Ok"}"#, roap("a")).unwrap();
    // Unwritten frames are never dropped: the third does not fit.
    assert_eq!(s.push(r#"{"type":"Ok"}"#, roap("a")), Err(PushError::Full));
    // At the end both are owed OFFLINE; a second end owes nothing.
    assert_eq!(s.end().len(), 2);
    assert!(s.end().is_empty());
    assert_eq!(
        s.push(r#"{"type":"Ok"}"#, roap("a")),
        Err(PushError::Closed)
    );
}

#[test]
fn slow_reader_is_closed_1013_and_the_session_kept_buffering() {
    let s = Session::new(1, user("bob"), limits(100, 2), false);
    let c = Closer::default();
    s.attach_fresh(1, c.clone());
    s.push(r#"{"type":"Ok"}"#, Origin::Node).unwrap();
    s.push(r#"{"type":"Ok"}"#, Origin::Node).unwrap();
    // The third exceeds the unwritten bound: 1013, but the frame is still buffered.
    assert_eq!(s.push(r#"{"type":"Ok"}"#, Origin::Node).unwrap(), 3);
    assert_eq!(c.reason().unwrap().code, CLOSE_SLOW);
    assert_eq!(s.detach(1, true, 0), Detached::Kept);
    assert!(s.check_resume(&s.token(), 0).is_ok());
}

#[test]
fn hand_over_and_install_continue_the_numbering() {
    let old = Session::new(1, user("bob"), limits(100, 100), false);
    old.attach_fresh(1, Closer::default());
    for _ in 0..4 {
        old.push(r#"{"type":"Ok"}"#, roap("alice")).unwrap();
    }
    let h = old.hand_over(&old.token(), 1).unwrap();
    assert_eq!(h.next_n, 5);
    assert_eq!(
        h.frames.iter().map(|e| e.n).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(old.is_ended());
    assert!(old.end().is_empty(), "a handed-over session owes nothing");
    // Over the wire and back.
    let (next_n, wire) = h.into_wire();
    let h = Handover::from_wire(next_n, wire);

    let new = Session::new(9, user("bob"), limits(100, 100), true);
    // A frame arriving during the takeover waits, then follows the handed ones.
    assert_eq!(new.push(r#"{"type":"Ok"}"#, roap("carol")).unwrap(), 0);
    let (resumed, replay) = new.install(Some((h, 1, "t".into())), 3, Closer::default());
    assert!(resumed);
    assert_eq!(replay, 4);
    assert_eq!(
        new.token(),
        "t",
        "the resumed session keeps the client's token"
    );
    let mut got = Vec::new();
    let mut w = 1;
    while let Next::Frame(n, f) = new.try_next_frame(3, w) {
        assert_eq!(n_of(&f), n);
        got.push(n);
        w = n;
    }
    assert_eq!(got, vec![2, 3, 4, 5]);
}

#[test]
fn a_failed_takeover_installs_a_fresh_stream() {
    let new = Session::new(9, user("bob"), limits(100, 100), true);
    new.push(r#"{"type":"Ok"}"#, roap("carol")).unwrap();
    let (resumed, replay) = new.install(None, 3, Closer::default());
    assert!(!resumed);
    assert_eq!(replay, 1);
    let Next::Frame(n, _) = new.try_next_frame(3, 0) else {
        panic!()
    };
    assert_eq!(n, 1);
}
