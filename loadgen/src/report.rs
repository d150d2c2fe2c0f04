//! The result of a run: the [`Report`] built from the [`Stats`], written as JSON (`--json`) and
//! shown as the summary table (`Display`).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::config::{Config, Scenario};
use crate::stats::{Hist, Route, RouteStats, Stats, SLOW_MESSAGE};

/// Percentiles of one latency histogram, in microseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

impl Latency {
    pub fn of(h: &Hist) -> Latency {
        if h.is_empty() {
            return Latency::default();
        }
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            mean_us: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Setups of one route: latency from the due time until the answerer has the Ok.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RouteReport {
    pub setups: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
    /// From the due time until the offerer has the Answer.
    pub answer: Latency,
    /// From the Offer sent until the answerer has the Ok (without the start lag).
    pub service: Latency,
}

impl RouteReport {
    fn of(r: &RouteStats) -> RouteReport {
        let l = Latency::of(&r.setup);
        RouteReport {
            setups: r.setups,
            errors: r.errors,
            p50_us: l.p50_us,
            p90_us: l.p90_us,
            p99_us: l.p99_us,
            p999_us: l.p999_us,
            max_us: l.max_us,
            mean_us: l.mean_us,
            answer: Latency::of(&r.answer),
            service: Latency::of(&r.service),
        }
    }
}

/// One second of the run (by due time, from the start of the warm-up).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecondReport {
    pub t_s: u64,
    pub setups: u64,
    pub errors: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// The mass-reconnect figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReconnectReport {
    pub node: String,
    /// Users on the node when its drain started.
    pub users_on_node: u64,
    /// Users closed with 1012.
    pub closed_1012: u64,
    /// Of those, reconnected through central.
    pub back: u64,
    /// From the drain start until every user of the node was back (`null`: not all were).
    pub all_back_ms: Option<f64>,
    /// Setups that failed from the drain start until all were back.
    pub failed_setups: u64,
    /// Close 1012 -> Welcome from another node, per user.
    pub reconnect: Latency,
}

/// The numbered frames of every session (contract section 5), whole run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SessionReport {
    /// Numbered frames received (duplicates not included).
    pub frames: u64,
    /// Frame numbers skipped (never received).
    pub lost: u64,
    /// Frames received twice (dropped).
    pub duplicated: u64,
    /// Frames received after a higher number.
    pub reordered: u64,
    /// Reconnections that continued their session (`resumed:true`).
    pub resumed: u64,
    /// Reconnections that got a new session (`resumed:false`).
    pub fresh: u64,
}

/// One node of a rolling restart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolledNode {
    pub node: String,
    /// Drain start -> registered again.
    pub took_ms: f64,
}

/// The rolling restart (`--scenario rolling` with `--embedded`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RollingReport {
    pub nodes: usize,
    pub restarted: Vec<RolledNode>,
}

/// Everything a run measured, as written by `--json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub target: String,
    pub pairs: usize,
    /// Target setups per second (0: closed loop).
    pub rate: f64,
    pub open_loop: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub candidates: usize,
    /// Users connected in the ramp-up.
    pub connections: u64,
    /// Connection attempts that failed (whole run).
    pub connect_failures: u64,
    /// The first connection error, if any.
    pub connect_error: Option<String>,
    /// Login + WebSocket upgrade + Welcome, every (re)connection of the run.
    pub connect: Latency,
    /// Completed setups due in the measured window.
    pub setups: u64,
    /// Failed setups due in the measured window.
    pub errors: u64,
    pub errors_by_type: BTreeMap<String, u64>,
    /// The first description the server gave for each error type.
    pub error_examples: BTreeMap<String, String>,
    pub warmup_setups: u64,
    pub warmup_errors: u64,
    pub setups_per_s: f64,
    /// Relayed messages received in the measured window.
    pub messages: u64,
    pub messages_per_s: f64,
    /// One-way latency of the relayed messages (sender -> receiver).
    pub message_latency: Latency,
    /// Due time -> Offer sent: loadgen's timer slack (tokio timers have 1 ms resolution) and
    /// any wait for a free pair; included in the setup latencies.
    pub start_lag: Latency,
    /// Relayed messages slower than 1 s (whole run).
    pub slow_messages: u64,
    /// Frames that belonged to no running call (late replies to failed calls).
    pub stale_frames: u64,
    pub same_node: RouteReport,
    pub cross_node: RouteReport,
    pub churn_logouts: u64,
    pub churn_logins: u64,
    /// Connections lost (not logged out by loadgen) and reconnected.
    pub disconnects: u64,
    pub reconnects: u64,
    pub reconnect: Option<ReconnectReport>,
    pub sessions: SessionReport,
    pub rolling: Option<RollingReport>,
    pub timeline: Vec<SecondReport>,
    /// `--scenario messages`: what the chat run measured (the call fields stay empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<crate::messages::MessagesReport>,
}

impl Report {
    pub fn build(config: &Config, target: String, stats: &Stats) -> Report {
        let secs = config.duration.as_secs_f64().max(1e-9);
        let setups = stats.setups();
        let per_s = |n: u64| ((n as f64 / secs) * 10.0).round() / 10.0;
        let reconnect = stats.drain.as_ref().map(|d| ReconnectReport {
            node: d.node.clone(),
            users_on_node: d.users_on_node,
            closed_1012: d.closed,
            back: d.back,
            all_back_ms: match (d.started, d.all_back) {
                (Some(s), Some(b)) => Some(ms(b.saturating_duration_since(s))),
                _ => None,
            },
            failed_setups: d.failed_setups,
            reconnect: d.reconnect.as_ref().map(Latency::of).unwrap_or_default(),
        });
        Report {
            scenario: config.scenario,
            target,
            pairs: config.pairs,
            rate: config.rate,
            open_loop: config.open_loop(),
            duration_s: config.duration.as_secs_f64(),
            warmup_s: config.warmup.as_secs_f64(),
            candidates: config.candidates,
            connections: stats.initial_connections,
            connect_failures: stats.connect_failures,
            connect_error: stats.connect_error.clone(),
            connect: Latency::of(&stats.connect),
            setups,
            errors: stats.errors(),
            errors_by_type: stats.errors_by_type.clone(),
            error_examples: stats.error_examples.clone(),
            warmup_setups: stats.warmup_setups,
            warmup_errors: stats.warmup_errors,
            setups_per_s: per_s(setups),
            messages: stats.messages,
            messages_per_s: per_s(stats.messages),
            message_latency: Latency::of(&stats.message_latency),
            start_lag: Latency::of(&stats.start_lag),
            slow_messages: stats.slow_messages,
            stale_frames: stats.stale_frames,
            same_node: RouteReport::of(stats.route(Route::SameNode)),
            cross_node: RouteReport::of(stats.route(Route::CrossNode)),
            churn_logouts: stats.churn_logouts,
            churn_logins: stats.churn_logins,
            disconnects: stats.disconnects,
            reconnects: stats.reconnects,
            reconnect,
            sessions: SessionReport {
                frames: stats.session_frames.frames,
                lost: stats.session_frames.lost,
                duplicated: stats.session_frames.duplicated,
                reordered: stats.session_frames.reordered,
                resumed: stats.resumed,
                fresh: stats.fresh,
            },
            rolling: (stats.roll_planned > 0).then(|| RollingReport {
                nodes: stats.roll_planned,
                restarted: stats
                    .rolled
                    .iter()
                    .map(|(node, took)| RolledNode {
                        node: node.clone(),
                        took_ms: ms(*took),
                    })
                    .collect(),
            }),
            timeline: stats
                .timeline
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let l = Latency::of(&s.setup);
                    SecondReport {
                        t_s: i as u64,
                        setups: s.setups,
                        errors: s.errors,
                        p50_us: l.p50_us,
                        p90_us: l.p90_us,
                        p99_us: l.p99_us,
                        max_us: l.max_us,
                    }
                })
                .collect(),
            chat: None,
        }
    }

    /// Setups that failed anywhere in the run (warm-up included).
    pub fn failed_setups(&self) -> u64 {
        match &self.chat {
            Some(m) => m.failures(),
            None => self.errors + self.warmup_errors,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// A latency in µs, human-readable.
fn human(us: u64) -> String {
    if us < 1_000 {
        format!("{us} µs")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

fn latency_row(f: &mut fmt::Formatter<'_>, name: &str, count: u64, l: &Latency) -> fmt::Result {
    if count == 0 {
        return writeln!(f, "  {name:<26} {count:>9}  -");
    }
    writeln!(
        f,
        "  {name:<26} {count:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
        human(l.p50_us),
        human(l.p90_us),
        human(l.p99_us),
        human(l.p999_us),
        human(l.max_us)
    )
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = &self.chat {
            writeln!(f, "target: {}", self.target)?;
            return write!(f, "{m}");
        }
        let pace = if self.open_loop {
            format!("open loop at {} setups/s", self.rate)
        } else {
            "closed loop".to_owned()
        };
        writeln!(
            f,
            "loadgen {} against {}: {} pairs, {pace}, {} s measured after {} s warm-up, {} candidates each way",
            format!("{:?}", self.scenario).to_lowercase(), self.target, self.pairs, self.duration_s, self.warmup_s, self.candidates
        )?;
        writeln!(
            f,
            "  connections {:>9}   failed attempts {}   connect p50 {}  p90 {}  p99 {}  max {}",
            self.connections,
            self.connect_failures,
            human(self.connect.p50_us),
            human(self.connect.p90_us),
            human(self.connect.p99_us),
            human(self.connect.max_us)
        )?;
        if let Some(e) = &self.connect_error {
            writeln!(f, "    first connection error: {e}")?;
        }
        writeln!(
            f,
            "  setups      {:>9}   failed {}   {:.1} setups/s   (warm-up: {} ok, {} failed)",
            self.setups, self.errors, self.setups_per_s, self.warmup_setups, self.warmup_errors
        )?;
        writeln!(
            f,
            "  messages    {:>9}   {:.1} messages/s   slower than {} s: {}   stale frames: {}",
            self.messages,
            self.messages_per_s,
            SLOW_MESSAGE.as_secs(),
            self.slow_messages,
            self.stale_frames
        )?;
        if self.open_loop
            && self.setups_per_s + (self.errors as f64 / self.duration_s.max(1e-9))
                < 0.9 * self.rate
        {
            writeln!(
                f,
                "  note: fewer setups than the target rate were done: the server (or too few --pairs) could not keep up; the latencies include the wait"
            )?;
        }
        if self.errors_by_type.is_empty() {
            writeln!(f, "  errors by type: none")?;
        } else {
            let list: Vec<String> = self
                .errors_by_type
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            writeln!(f, "  errors by type: {}", list.join(", "))?;
            for (k, v) in &self.error_examples {
                writeln!(f, "    e.g. {k}: {v}")?;
            }
        }
        writeln!(f)?;
        writeln!(
            f,
            "  {:<26} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency", "count", "p50", "p90", "p99", "p99.9", "max"
        )?;
        for (name, r) in [
            ("same node", &self.same_node),
            ("cross node", &self.cross_node),
        ] {
            let l = Latency {
                count: r.setups,
                p50_us: r.p50_us,
                p90_us: r.p90_us,
                p99_us: r.p99_us,
                p999_us: r.p999_us,
                max_us: r.max_us,
                mean_us: r.mean_us,
            };
            latency_row(
                f,
                &format!("setup, {name} ({} failed)", r.errors),
                r.setups,
                &l,
            )?;
            latency_row(f, &format!("  answer, {name}"), r.answer.count, &r.answer)?;
            latency_row(
                f,
                &format!("  service, {name}"),
                r.service.count,
                &r.service,
            )?;
        }
        latency_row(
            f,
            "start lag (due..Offer)",
            self.start_lag.count,
            &self.start_lag,
        )?;
        latency_row(
            f,
            "message (one way)",
            self.message_latency.count,
            &self.message_latency,
        )?;
        latency_row(
            f,
            "connect (login..Welcome)",
            self.connect.count,
            &self.connect,
        )?;
        if self.churn_logouts > 0 {
            writeln!(
                f,
                "\n  churn: {} logouts, {} logins",
                self.churn_logouts, self.churn_logins
            )?;
        }
        if self.disconnects > 0 || self.reconnect.is_some() {
            writeln!(
                f,
                "\n  connections lost {}, reconnected {}",
                self.disconnects, self.reconnects
            )?;
        }
        let s = &self.sessions;
        writeln!(
            f,
            "\n  sessions: {} numbered frames, lost {}, duplicated {}, reordered {}; reconnects resumed {}, fresh {}",
            s.frames, s.lost, s.duplicated, s.reordered, s.resumed, s.fresh
        )?;
        if let Some(r) = &self.rolling {
            let list: Vec<String> = r
                .restarted
                .iter()
                .map(|n| format!("{} in {:.0} ms", n.node, n.took_ms))
                .collect();
            writeln!(
                f,
                "  rolling restart: {} of {} nodes restarted ({})",
                r.restarted.len(),
                r.nodes,
                list.join(", ")
            )?;
        }
        if let Some(r) = &self.reconnect {
            let back = r.all_back_ms.map_or("not all back".to_owned(), |m| {
                format!("all back after {m:.0} ms")
            });
            writeln!(
                f,
                "  drain of {}: {} users on it, {} closed with 1012, {} back, {back}; {} setups failed meanwhile",
                r.node, r.users_on_node, r.closed_1012, r.back, r.failed_setups
            )?;
            latency_row(
                f,
                "reconnect (1012..Welcome)",
                r.reconnect.count,
                &r.reconnect,
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;
    use crate::stats::{Failure, Recorder};
    use signal_proto::ErrorType;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn json_has_the_required_keys() {
        let config = Config::embedded();
        let start = Instant::now();
        let schedule = Schedule::new(start, 10.0, config.warmup, config.duration);
        let r = Recorder::new();
        r.start_window(&schedule);
        let due = schedule.warmup_end();
        r.record_setup(
            Route::CrossNode,
            due,
            due + Duration::from_millis(1),
            due + Duration::from_millis(2),
        );
        r.record_failure(
            Some(Route::SameNode),
            due,
            Failure::Server(ErrorType::Offline),
        );
        let report = Report::build(&config, "test".into(), &r.finish());
        let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        for key in [
            "setups",
            "errors",
            "errors_by_type",
            "setups_per_s",
            "messages_per_s",
        ] {
            assert!(v.get(key).is_some(), "{key}");
        }
        for route in ["same_node", "cross_node"] {
            for key in ["setups", "p50_us", "p90_us", "p99_us", "p999_us", "max_us"] {
                assert!(v[route].get(key).is_some(), "{route}.{key}");
            }
        }
        assert_eq!(v["setups"], 1);
        assert_eq!(v["errors_by_type"]["OFFLINE"], 1);
        assert_eq!(v["cross_node"]["setups"], 1);
        assert!((1990..=2010).contains(&v["cross_node"]["p50_us"].as_u64().unwrap()));
        let table = report.to_string();
        assert!(table.contains("OFFLINE 1"), "{table}");
        assert!(table.contains("setup, cross node (0 failed)"), "{table}");
    }
}
