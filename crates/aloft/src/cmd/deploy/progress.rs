//! What a deploy shows while it runs. On a terminal each machine has one line that changes in
//! place (replacing, starting, waiting for checks, healthy); otherwise every change is a plain
//! line of its own, so logs and scripts see the same steps.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::output::{self, Paint, Stream};

/// Where one machine is in a deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Its config is being replaced in place.
    Replacing,
    /// It is being restarted.
    Restarting,
    /// Waiting for it to start.
    Starting,
    /// Started; `passing` of `total` checks pass.
    Checks { passing: usize, total: usize },
    /// Started without checks; waiting a moment to see that it stays up.
    Settling,
    /// Healthy.
    Healthy,
    /// It failed, with a short reason.
    Failed(String),
}

impl Step {
    fn text(&self) -> String {
        match self {
            Step::Replacing => "replacing".to_owned(),
            Step::Restarting => "restarting".to_owned(),
            Step::Starting => "starting".to_owned(),
            Step::Checks { passing, total } => {
                format!("waiting for checks ({passing}/{total} passing)")
            }
            Step::Settling => "started, waiting to see it stays up".to_owned(),
            Step::Healthy => "healthy".to_owned(),
            Step::Failed(why) => format!("failed: {why}"),
        }
    }

    /// What a plain line says: only the steps every run of the same deploy goes through (a
    /// fast machine may be started before it is first looked at), check counts left out.
    fn plain(&self) -> Option<String> {
        match self {
            Step::Starting => None,
            Step::Checks { .. } => Some("waiting for checks".to_owned()),
            other => Some(other.text()),
        }
    }

    fn done(&self) -> bool {
        matches!(self, Step::Healthy | Step::Failed(_))
    }
}

/// A deploy's progress display.
pub struct Progress {
    /// Live lines on a terminal; `None` prints plain lines.
    bars: Option<MultiProgress>,
    state: Mutex<HashMap<String, Line>>,
}

struct Line {
    step: Step,
    bar: Option<ProgressBar>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Progress {
    /// Live lines when stdout is a terminal, plain lines otherwise.
    pub fn new() -> Progress {
        let bars = Stream::Stdout
            .is_terminal()
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stdout()));
        Progress {
            bars,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Prints a line above the live lines (or just prints it).
    pub fn line(&self, text: &str) {
        match &self.bars {
            Some(bars) if bars.println(text).is_ok() => {}
            _ => println!("{text}"),
        }
    }

    /// Records that machine `id` in `region` reached `step`; prints only changes.
    pub fn machine(&self, id: &str, region: &str, step: Step) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.get(id).is_some_and(|l| l.step == step) {
            return;
        }
        let label = format!("machine {id} in {region}");
        let Some(bars) = &self.bars else {
            let label = format!("  {label}");
            let before = state.get(id).and_then(|l| l.step.plain());
            if let Some(text) = step.plain().filter(|t| before.as_ref() != Some(t)) {
                println!("{label}: {text}");
            }
            state.insert(id.to_owned(), Line { step, bar: None });
            return;
        };
        let bar = match state.remove(id).and_then(|l| l.bar) {
            Some(bar) => bar,
            None => {
                let style = ProgressStyle::with_template("  {spinner} {prefix}: {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner());
                let bar = bars.add(ProgressBar::new_spinner().with_style(style));
                bar.set_prefix(label.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
        };
        let text = match &step {
            Step::Healthy => output::paint(Stream::Stdout, Paint::Green, &step.text()),
            Step::Failed(_) => output::paint(Stream::Stdout, Paint::Red, &step.text()),
            _ => step.text(),
        };
        if step.done() {
            // A finished machine leaves the live lines for a printed one: indicatif's println
            // would otherwise wipe finished bars.
            bar.finish_and_clear();
            bars.remove(&bar);
            if bars.println(format!("  {label}: {text}")).is_err() {
                println!("  {label}: {text}");
            }
            state.insert(id.to_owned(), Line { step, bar: None });
        } else {
            bar.set_message(text);
            state.insert(
                id.to_owned(),
                Line {
                    step,
                    bar: Some(bar),
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_read_as_words() {
        assert_eq!(
            Step::Checks {
                passing: 1,
                total: 2
            }
            .text(),
            "waiting for checks (1/2 passing)"
        );
        assert_eq!(Step::Failed("exit 1".into()).text(), "failed: exit 1");
        assert!(Step::Healthy.done() && !Step::Replacing.done());
    }
}
