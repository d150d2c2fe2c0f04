//! When each call setup is due: the open-loop timetable (setup `i` at `start + i / rate`) or
//! the closed loop (now, as soon as a pair is free), and which phase a moment falls in.
//!
//! Open loop is what makes the figures honest (no coordinated omission): the due time of a
//! setup does not move when the server stalls. A pair that claims a setup whose due time has
//! already passed starts it at once, and its latency is measured from the due time, so a stall
//! shows up as latency on every setup it delayed instead of as fewer samples.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// One call setup to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Job {
    /// 0, 1, 2, ... over the whole run.
    pub index: u64,
    /// When the setup is due; latency is measured from here.
    pub due: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Pace {
    Open { interval: Duration },
    Closed,
}

/// The timetable shared by every pair of a run (cheap to share behind an `Arc`).
#[derive(Debug)]
pub struct Schedule {
    pace: Pace,
    start: Instant,
    warmup_end: Instant,
    end: Instant,
    next: AtomicU64,
}

/// Which part of the run a moment belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measured,
    After,
}

impl Schedule {
    /// `rate` setups per second (open loop), or closed loop when `rate` is 0, from `start`
    /// through `warmup` and then `duration` (the measured window).
    pub fn new(start: Instant, rate: f64, warmup: Duration, duration: Duration) -> Schedule {
        let pace = if rate > 0.0 && rate.is_finite() {
            Pace::Open {
                interval: Duration::from_secs_f64(1.0 / rate),
            }
        } else {
            Pace::Closed
        };
        Schedule {
            pace,
            start,
            warmup_end: start + warmup,
            end: start + warmup + duration,
            next: AtomicU64::new(0),
        }
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn warmup_end(&self) -> Instant {
        self.warmup_end
    }

    pub fn end(&self) -> Instant {
        self.end
    }

    pub fn is_open_loop(&self) -> bool {
        matches!(self.pace, Pace::Open { .. })
    }

    /// The next setup for a free pair, or `None` when the run is over. Open loop: the next
    /// slot of the timetable (possibly in the future: wait for `due`, possibly in the past: run
    /// at once). Closed loop: due now.
    pub fn claim(&self) -> Option<Job> {
        match self.pace {
            Pace::Open { interval } => {
                let index = self.next.fetch_add(1, Ordering::Relaxed);
                let offset = interval.checked_mul(u32::try_from(index).ok()?)?;
                let due = self.start.checked_add(offset)?;
                (due < self.end).then_some(Job { index, due })
            }
            Pace::Closed => {
                let now = Instant::now();
                if now >= self.end {
                    return None;
                }
                let index = self.next.fetch_add(1, Ordering::Relaxed);
                Some(Job { index, due: now })
            }
        }
    }

    /// The phase `t` falls in (a setup belongs to the phase of its due time).
    pub fn phase(&self, t: Instant) -> Phase {
        if t < self.warmup_end {
            Phase::Warmup
        } else if t < self.end {
            Phase::Measured
        } else {
            Phase::After
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::stats::{Recorder, Route};

    #[tokio::test(start_paused = true)]
    async fn open_loop_timetable_ignores_how_late_the_pairs_are() {
        let start = Instant::now();
        let s = Schedule::new(start, 10.0, Duration::from_secs(1), Duration::from_secs(2));
        let jobs: Vec<Job> = std::iter::from_fn(|| s.claim()).collect();
        assert_eq!(jobs.len(), 30);
        assert_eq!(jobs[0].due, start);
        assert_eq!(jobs[15].due, start + Duration::from_millis(1500));
        assert_eq!(s.phase(jobs[9].due), Phase::Warmup);
        assert_eq!(s.phase(jobs[10].due), Phase::Measured);
        assert_eq!(s.phase(start + Duration::from_secs(3)), Phase::After);
        assert!(s.claim().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_is_due_now_until_the_end() {
        let start = Instant::now();
        let s = Schedule::new(start, 0.0, Duration::ZERO, Duration::from_secs(1));
        assert!(!s.is_open_loop());
        let a = s.claim().unwrap();
        assert_eq!(a.due, start);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let b = s.claim().unwrap();
        assert_eq!(b.due, start + Duration::from_millis(400));
        assert_eq!(b.index, 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(s.claim().is_none());
    }

    /// A simulated server that answers in 1 ms, except that it stalls from t=2 s to t=3 s:
    /// every request in flight or arriving then is answered at t=3 s.
    async fn fake_server(start: Instant) {
        let now = Instant::now();
        let stall_from = start + Duration::from_secs(2);
        let stall_to = start + Duration::from_secs(3);
        if now >= stall_from && now < stall_to {
            tokio::time::sleep_until(stall_to).await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    /// Runs `pairs` workers against the fake server for 5 s at 100 setups/s, like the
    /// scenario does: claim, wait until due, run, record latency from the due time.
    async fn run_open_loop(pairs: usize) -> (Recorder, u64) {
        let start = Instant::now();
        let schedule = Arc::new(Schedule::new(
            start,
            100.0,
            Duration::ZERO,
            Duration::from_secs(5),
        ));
        let recorder = Arc::new(Recorder::new());
        recorder.start_window(&schedule);
        let mut tasks = Vec::new();
        for _ in 0..pairs {
            let schedule = schedule.clone();
            let recorder = recorder.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(job) = schedule.claim() {
                    tokio::time::sleep_until(job.due).await;
                    fake_server(start).await;
                    let answered = Instant::now();
                    fake_server(start).await;
                    recorder.record_setup(Route::SameNode, job.due, answered, Instant::now());
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let recorder = Arc::into_inner(recorder).unwrap();
        let setups = recorder.live().setups();
        (recorder, setups)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stall_shows_up_as_latency_not_as_fewer_samples() {
        let (recorder, setups) = run_open_loop(4).await;
        // Every scheduled setup was run and recorded, stall or not.
        assert_eq!(setups, 500);
        let stats = recorder.finish();
        let h = &stats.route(Route::SameNode).setup;
        assert_eq!(h.len(), 500);
        // Setups due during the stall waited for it: up to ~1 s late.
        assert!(h.max() >= 990_000, "max {} us", h.max());
        // 100 of 500 setups were due in the stalled second (those due early in it waited
        // the longest), so the 90th percentile is far above the 2 ms of normal service...
        assert!(
            h.value_at_quantile(0.9) >= 100_000,
            "p90 {} us",
            h.value_at_quantile(0.9)
        );
        // ... while the median stays at the normal 2 ms.
        assert!(
            h.value_at_quantile(0.5) < 5_000,
            "p50 {}",
            h.value_at_quantile(0.5)
        );
        // The per-second timeline shows where the stall was.
        let sec2 = &stats.timeline[2];
        assert_eq!(sec2.setups, 100);
        assert!(sec2.setup.max() >= 990_000);
        assert!(stats.timeline[0].setup.max() < 5_000);
    }

    #[tokio::test(start_paused = true)]
    async fn measuring_from_the_send_would_hide_the_stall() {
        // The same stall measured the naive way (closed loop, from the actual send): only the
        // few requests in flight see it, the rest are simply never sent.
        let start = Instant::now();
        let schedule = Schedule::new(start, 0.0, Duration::ZERO, Duration::from_secs(5));
        let mut samples = Vec::new();
        while schedule.claim().is_some() {
            let sent = Instant::now();
            fake_server(start).await;
            fake_server(start).await;
            samples.push(Instant::now() - sent);
            // A closed-loop client at "100/s" paces itself after each reply.
            tokio::time::sleep(Duration::from_millis(8)).await;
        }
        let slow = samples
            .iter()
            .filter(|d| **d > Duration::from_millis(100))
            .count();
        assert!(samples.len() < 450, "{} samples", samples.len());
        assert_eq!(slow, 1);
    }
}
