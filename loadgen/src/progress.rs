//! The progress bar shown while a run goes on (hidden when stdout is not a terminal).

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::schedule::Schedule;
use crate::stats::Recorder;

/// A progress bar over the ramp-up, then over the run's seconds.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(enabled: bool) -> Progress {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden());
        if enabled && std::io::stdout().is_terminal() {
            bar.set_draw_target(ProgressDrawTarget::stdout());
        }
        Progress { bar }
    }

    /// Connecting `users` users.
    pub fn connecting(&self, users: u64) {
        self.bar.set_length(users);
        if let Ok(style) =
            ProgressStyle::with_template("connecting {bar:40.cyan/blue} {pos}/{len} users {msg}")
        {
            self.bar.set_style(style);
        }
    }

    pub fn set_connected(&self, n: u64, failed: u64) {
        self.bar.set_position(n);
        if failed > 0 {
            self.bar.set_message(format!("({failed} failed attempts)"));
        }
    }

    /// Updates the bar from the recorder's live counters until the schedule's end.
    pub fn follow(
        &self,
        schedule: Arc<Schedule>,
        recorder: Arc<Recorder>,
    ) -> tokio::task::JoinHandle<()> {
        let total = schedule.end().saturating_duration_since(schedule.start());
        self.bar.set_length(total.as_millis() as u64);
        self.bar.set_position(0);
        self.bar.set_message(String::new());
        if let Ok(style) =
            ProgressStyle::with_template("{prefix:>8} {bar:40.green/blue} {elapsed_precise} {msg}")
        {
            self.bar.set_style(style);
        }
        let bar = self.bar.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut last = (Instant::now(), 0u64, 0u64);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let live = recorder.live();
                let (setups, messages) = (live.setups(), live.messages());
                let dt = now
                    .saturating_duration_since(last.0)
                    .as_secs_f64()
                    .max(1e-3);
                let phase = if now < schedule.warmup_end() {
                    "warm-up"
                } else if now < schedule.end() {
                    "measured"
                } else {
                    "ending"
                };
                bar.set_prefix(phase);
                bar.set_position(now.saturating_duration_since(schedule.start()).as_millis() as u64);
                bar.set_message(format!(
                    "conns {}  setups {} ({:.0}/s)  failed {}  msgs {:.0}/s",
                    live.open(),
                    setups,
                    (setups - last.1) as f64 / dt,
                    live.errors(),
                    (messages - last.2) as f64 / dt,
                ));
                last = (now, setups, messages);
            }
        })
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
