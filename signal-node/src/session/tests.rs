#![allow(clippy::unwrap_used)]
//! The session's rules without sockets: numbering, acks, bounds, resume checks, handover,
//! what is owed OFFLINE at the end.

use super::*;
use crate::outlet::Outlet;

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
    Origin::roap(user(from), "s1".into())
}

fn n_of(frame: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(frame).unwrap();
    v["n"].as_u64().unwrap()
}

#[test]
fn frames_are_numbered_and_written_in_order() {
    let s = Session::new(1, user("bob"), limits(100, 100), false);
    assert_eq!(s.push(r#"{"type":"Ok"}"#, roap("alice")).unwrap(), 1);
    let closer = Closer::default();
    s.attach_fresh(7, closer.clone(), Outlet::default());
    assert_eq!(s.push(r#"{"type":"Ok"}"#, roap("alice")).unwrap(), 2);
    let Next::Frame(n, f) = s.try_next_frame(7, 0) else {
        panic!("frame 1 queued")
    };
    assert_eq!((n, n_of(&f)), (1, 1));
    let Next::Frame(n, f) = s.try_next_frame(7, 1) else {
        panic!("frame 2 queued")
    };
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
    s.attach_fresh(1, Closer::default(), Outlet::default());
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
    s.attach_fresh(1, old.clone(), Outlet::default());
    for _ in 0..5 {
        s.push(r#"{"type":"Ok"}"#, roap("alice")).unwrap();
    }
    let new = Closer::default();
    let (replay, acked_mail) = s
        .resume_here(&s.token(), 2, 2, new, Outlet::default())
        .unwrap();
    assert_eq!(replay, 3);
    assert!(acked_mail.is_empty());
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
    s.attach_fresh(1, Closer::default(), Outlet::default());
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
    s.attach_fresh(1, c.clone(), Outlet::default());
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
    old.attach_fresh(1, Closer::default(), Outlet::default());
    for _ in 0..4 {
        old.push(r#"{"type":"Ok"}"#, roap("alice")).unwrap();
    }
    let h = old.hand_over(&old.token(), 1).unwrap().handover;
    assert_eq!(h.next_n, 5);
    assert_eq!(
        h.frames.iter().map(|e| e.n).collect::<Vec<_>>(),
        vec![2, 3, 4]
    );
    assert!(old.is_ended());
    assert!(old.end().is_empty(), "a handed-over session owes nothing");
    // Over the wire and back.
    let h = Handover::from_wire(h.into_wire());

    let new = Session::new(9, user("bob"), limits(100, 100), true);
    // A frame arriving during the takeover waits, then follows the handed ones.
    assert_eq!(new.push(r#"{"type":"Ok"}"#, roap("carol")).unwrap(), 0);
    let (resumed, replay) = new.install(
        Some((h, 1, "t".into())),
        3,
        Closer::default(),
        Outlet::default(),
    );
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
    let (resumed, replay) = new.install(None, 3, Closer::default(), Outlet::default());
    assert!(!resumed);
    assert_eq!(replay, 1);
    let Next::Frame(n, _) = new.try_next_frame(3, 0) else {
        panic!()
    };
    assert_eq!(n, 1);
}

fn mail(from: &str, id: &str) -> String {
    format!(r#"{{"type":"Message","from":"{from}","to":"bob","id":"{id}","body":"x"}}"#)
}

fn entry(seq: u64) -> EntryId {
    EntryId { ms: 1, seq }
}

/// The ids of the chat frames written to connection `conn` so far, in order.
fn written_ids(s: &Session, conn: u64, w: &mut u64) -> Vec<String> {
    let mut got = Vec::new();
    while let Next::Frame(n, f) = s.try_next_frame(conn, *w) {
        *w = n;
        let v: serde_json::Value = serde_json::from_str(f.as_str()).unwrap();
        if v["type"] == "Message" {
            got.push(v["id"].as_str().unwrap().to_owned());
        }
    }
    got
}

#[test]
fn the_end_of_the_push_at_connect_delivers_each_message_once_and_in_order() {
    let s = Session::new(1, user("bob"), limits(100, 100), false);
    s.attach_fresh(1, Closer::default(), Outlet::default());
    let mut w = 0;
    // The pager reads m1, m2. A live copy of m2 arrives while it pushes m1: it waits.
    assert!(s.push_stored(1, Some(&mail("a", "m1")), entry(1)).unwrap());
    assert_eq!(s.push(&mail("a", "m2"), Origin::Mail(entry(2))).unwrap(), 0);
    assert!(s.push_stored(1, Some(&mail("a", "m2")), entry(2)).unwrap());
    // The end window: m3 is stored after the pager's last (empty) read and pushed live
    // before the pager goes live; m4 comes after.
    assert_eq!(s.push(&mail("a", "m3"), Origin::Mail(entry(3))).unwrap(), 0);
    assert_eq!(s.mail_live(1), Ok(true));
    assert!(s.mail_complete());
    s.push(&mail("a", "m4"), Origin::Mail(entry(4))).unwrap();
    // A late live copy of a message the pager delivered is dropped.
    assert_eq!(s.push(&mail("a", "m1"), Origin::Mail(entry(1))).unwrap(), 0);
    assert_eq!(written_ids(&s, 1, &mut w), ["m1", "m2", "m3", "m4"]);
}

#[test]
fn a_live_message_that_cannot_wait_makes_the_pager_read_again() {
    let s = Session::new(1, user("bob"), limits(2, 100), false);
    s.attach_fresh(1, Closer::default(), Outlet::default());
    let mut w = 0;
    for i in 1..=3 {
        s.push(&mail("a", &format!("m{i}")), Origin::Mail(entry(i)))
            .unwrap();
    }
    // m3 found the wait list full: the pager must read once more.
    assert_eq!(s.mail_live(1), Ok(false));
    let mut got = Vec::new();
    for i in 1..=3 {
        s.push_stored(1, Some(&mail("a", &format!("m{i}"))), entry(i))
            .unwrap();
        got.extend(written_ids(&s, 1, &mut w));
    }
    assert_eq!(s.mail_live(1), Ok(true));
    got.extend(written_ids(&s, 1, &mut w));
    assert_eq!(got, ["m1", "m2", "m3"]);
}

#[test]
fn a_second_pager_and_a_resume_continue_after_the_last_entry_delivered() {
    let s = Session::new(1, user("bob"), limits(100, 100), false);
    s.attach_fresh(1, Closer::default(), Outlet::default());
    s.push_stored(1, Some(&mail("a", "m1")), entry(1)).unwrap();
    // The connection drops mid-push and the session resumes on a new one.
    assert_eq!(s.detach(1, true, 1), Detached::Kept);
    assert_eq!(
        s.push_stored(1, Some(&mail("a", "m2")), entry(2)),
        Err(PushError::Closed),
        "the old pager stops"
    );
    let (_, acked) = s
        .resume_here(&s.token(), 1, 2, Closer::default(), Outlet::default())
        .unwrap();
    // The acknowledged frame carries its mailbox entry (deleted by id, one XDEL).
    assert_eq!(
        acked,
        [(mail("a", "m1").replace('}', r#","n":1}"#), Some(entry(1)))]
    );
    assert_eq!(s.mail_upto(), Some(entry(1)));
    assert!(!s.mail_complete());
    // The new pager starts after m1; an entry already delivered is not pushed twice.
    assert!(!s.push_stored(2, Some(&mail("a", "m1")), entry(1)).unwrap());
    assert!(s.push_stored(2, Some(&mail("a", "m2")), entry(2)).unwrap());
    let mut w = 1;
    assert_eq!(written_ids(&s, 2, &mut w), ["m2"]);
}

#[test]
fn a_handover_carries_the_push_at_connect_and_the_acked_mail() {
    let old = Session::new(1, user("bob"), limits(100, 100), false);
    old.attach_fresh(1, Closer::default(), Outlet::default());
    old.push_stored(1, Some(&mail("a", "m1")), entry(1))
        .unwrap();
    old.push_stored(1, Some(&mail("a", "m2")), entry(2))
        .unwrap();
    let h = old.hand_over(&old.token(), 1).unwrap();
    assert_eq!(h.acked_mail.len(), 1, "last=1 acknowledged m1");
    let h = Handover::from_wire(h.handover.into_wire());
    assert_eq!((h.mail_upto, h.mail_complete), (Some(entry(2)), false));
    let new = Session::new(9, user("bob"), limits(100, 100), true);
    // A live copy of m2 reaching the new node during the takeover is dropped at install.
    new.push(&mail("a", "m2"), Origin::Mail(entry(2))).unwrap();
    let (resumed, replay) = new.install(
        Some((h, 1, "t".into())),
        3,
        Closer::default(),
        Outlet::default(),
    );
    assert!(resumed);
    assert_eq!(replay, 1);
    assert_eq!(new.mail_upto(), Some(entry(2)));
    assert!(!new.mail_complete());
    let mut w = 1;
    assert_eq!(written_ids(&new, 3, &mut w), ["m2"]);
}
