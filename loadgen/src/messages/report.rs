//! The result of a messages run: counts, throughput and latency, as JSON and as a table.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::report::Latency;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MessagesReport {
    pub users: usize,
    /// Target messages per second over all users (0: closed loop with `window`).
    pub rate: f64,
    pub window: usize,
    pub duration_s: f64,
    /// Messages sent in the measured window (first sends; retries after a new session are
    /// not counted again).
    pub sent: u64,
    /// Of those, answered `Accepted` / refused with an Error (by type).
    pub accepted: u64,
    pub refused: BTreeMap<String, u64>,
    /// Accepted messages per second in the measured window.
    pub accepted_per_s: f64,
    /// Messages (first copies) received per second, counted by their send time in the window.
    pub delivered_per_s: f64,
    /// Send -> Accepted.
    pub accept: Latency,
    /// Send -> received, messages pushed live (the recipient was online).
    pub deliver_live: Latency,
    /// Send -> received, messages pushed from the mailbox at connect (`delayed:true`).
    pub deliver_stored: Latency,
    /// Whole run: messages sent but never answered (Accepted or Error) by the end.
    pub unanswered: u64,
    /// Whole run: accepted messages their recipient never got.
    pub lost: u64,
    /// Whole run: copies received twice within one session (must be 0).
    pub duplicated: u64,
    /// Whole run: messages that came after a later one of the same sender in one session.
    pub reordered: u64,
    /// Whole run: copies received again by a new session of the recipient (allowed: not
    /// acknowledged before the old session ended).
    pub redelivered: u64,
    /// `Delivered` notices the senders got.
    pub delivered_notices: u64,
    /// Numbered frames missing or duplicated within a session (contract section 5).
    pub frames_lost: u64,
    pub frames_duplicated: u64,
    /// Connections: first ones, resumes, new sessions, failed attempts, lost, dropped or
    /// closed on purpose (churn).
    pub connections: u64,
    pub resumed: u64,
    pub fresh_sessions: u64,
    pub connect_failures: u64,
    pub connections_lost: u64,
    pub churn_drops: u64,
    pub churn_logouts: u64,
    /// Seconds the end of the run waited for the last messages to arrive.
    pub settle_s: f64,
}

impl MessagesReport {
    /// What makes `--fail-on-errors` fail: anything lost, duplicated, reordered, refused or
    /// unanswered.
    pub fn failures(&self) -> u64 {
        self.lost
            + self.duplicated
            + self.reordered
            + self.unanswered
            + self.refused.values().sum::<u64>()
    }
}

fn row(f: &mut fmt::Formatter<'_>, name: &str, l: &Latency) -> fmt::Result {
    if l.count == 0 {
        return writeln!(f, "  {name:<22} {:>9}  -", 0);
    }
    let ms = |us: u64| format!("{:.2} ms", us as f64 / 1e3);
    writeln!(
        f,
        "  {name:<22} {:>9} {:>10} {:>10} {:>10} {:>10}",
        l.count,
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.max_us)
    )
}

impl fmt::Display for MessagesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pace = if self.rate > 0.0 {
            format!("open loop at {} messages/s", self.rate)
        } else {
            format!("closed loop, window {} per user", self.window)
        };
        writeln!(
            f,
            "messages: {} users, {pace}, {:.1} s measured",
            self.users, self.duration_s
        )?;
        writeln!(
            f,
            "  sent {}  accepted {} ({:.0}/s)  delivered {:.0}/s  refused {:?}",
            self.sent, self.accepted, self.accepted_per_s, self.delivered_per_s, self.refused
        )?;
        writeln!(
            f,
            "  {:<22} {:>9} {:>10} {:>10} {:>10} {:>10}",
            "latency", "count", "p50", "p90", "p99", "max"
        )?;
        row(f, "send -> Accepted", &self.accept)?;
        row(f, "send -> delivered live", &self.deliver_live)?;
        row(f, "send -> delivered stored", &self.deliver_stored)?;
        writeln!(
            f,
            "  lost {}  duplicated {}  reordered {}  unanswered {}  (redelivered to a new session: {})",
            self.lost, self.duplicated, self.reordered, self.unanswered, self.redelivered
        )?;
        writeln!(
            f,
            "  frames lost {} duplicated {}; Delivered notices {}",
            self.frames_lost, self.frames_duplicated, self.delivered_notices
        )?;
        writeln!(
            f,
            "  connections {} (resumed {}, new sessions {}, failed {}, lost {}); churn: {} drops, {} logouts; settle {:.1} s",
            self.connections,
            self.resumed,
            self.fresh_sessions,
            self.connect_failures,
            self.connections_lost,
            self.churn_drops,
            self.churn_logouts,
            self.settle_s
        )
    }
}
