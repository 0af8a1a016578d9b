//! Showing the engine's events: one bar per target on a terminal, plain lines otherwise,
//! JSON lines (`--json`) for dashboards.

use std::io::Write;
use std::time::{Duration, Instant};

use super::pipeline::{Event, Phase};
use crate::progress::human_bytes;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// indicatif bars on stderr.
    Bars,
    /// A line per target every few seconds on stderr.
    Plain,
    /// One JSON object per line on stdout.
    Json,
    Quiet,
}

impl Style {
    /// Bars on a terminal, plain lines otherwise; `--json` and `--quiet` win.
    pub fn choose(json: bool, quiet: bool) -> Style {
        use std::io::IsTerminal;
        if json {
            Style::Json
        } else if quiet {
            Style::Quiet
        } else if std::io::stderr().is_terminal() {
            Style::Bars
        } else {
            Style::Plain
        }
    }
}

/// Renders events for a set of targets.
pub struct Ui {
    style: Style,
    labels: Vec<String>,
    multi: Option<indicatif::MultiProgress>,
    bars: Vec<indicatif::ProgressBar>,
    last_line: Vec<Instant>,
    started: Vec<Instant>,
}

impl Ui {
    pub fn new(style: Style, labels: Vec<String>) -> Ui {
        let n = labels.len();
        let mut ui = Ui {
            style,
            labels,
            multi: None,
            bars: Vec::new(),
            last_line: vec![Instant::now(); n],
            started: vec![Instant::now(); n],
        };
        if style == Style::Bars {
            let multi = indicatif::MultiProgress::new();
            let width = ui.labels.iter().map(|l| l.len()).max().unwrap_or(8).min(40);
            let style = indicatif::ProgressStyle::with_template(&format!(
                "{{prefix:<{width}}} {{msg:<15}} [{{bar:28}}] {{bytes}}/{{total_bytes}} {{bytes_per_sec}} eta {{eta}}"
            ))
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
            for l in &ui.labels {
                let b = multi.add(indicatif::ProgressBar::new(0));
                b.set_style(style.clone());
                b.set_prefix(shorten(l, width));
                b.set_message("waiting");
                b.enable_steady_tick(Duration::from_millis(250));
                ui.bars.push(b);
            }
            ui.multi = Some(multi);
        }
        ui
    }

    fn label(&self, i: usize) -> &str {
        self.labels.get(i).map_or("?", |s| s.as_str())
    }

    /// Print a line that does not belong to one target (above the bars).
    pub fn line(&self, text: &str) {
        match self.style {
            Style::Bars => {
                if let Some(m) = &self.multi {
                    let _ = m.println(text);
                }
            }
            Style::Plain => eprintln!("{text}"),
            Style::Json | Style::Quiet => {}
        }
    }

    /// Emit an extra JSON event (`start`, `done`, …) in `--json` mode.
    pub fn json(&self, value: serde_json::Value) {
        if self.style == Style::Json {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{value}");
            let _ = out.flush();
        }
    }

    pub fn handle(&mut self, e: &Event) {
        match self.style {
            Style::Quiet => {}
            Style::Json => {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                let i = target_of(e);
                if let Some(o) = v.as_object_mut() {
                    o.insert("label".into(), self.label(i).into());
                    o.insert("time".into(), super::record::now_rfc3339().into());
                }
                self.json(v);
            }
            Style::Bars => self.bar(e),
            Style::Plain => self.plain(e),
        }
    }

    fn bar(&mut self, e: &Event) {
        let Some(b) = self.bars.get(target_of(e)) else {
            return;
        };
        match e {
            Event::Start { total, .. } => {
                b.set_length(*total);
                b.reset_elapsed();
                b.set_message("preparing");
            }
            Event::Progress {
                phase,
                durable,
                verified,
                total,
                ..
            } => {
                b.set_length(*total);
                b.set_position(*durable);
                b.set_message(match phase {
                    Phase::Writing => format!("{} ok", human_bytes(*verified)),
                    p => p.as_str().to_string(),
                });
            }
            Event::Verified { bytes, seconds, .. } => {
                b.finish_with_message(format!(
                    "VERIFIED {} in {seconds:.1} s",
                    human_bytes(*bytes)
                ));
            }
            Event::Failed { error, .. } => {
                b.abandon_with_message("FAILED");
                let text = format!("{}: FAILED: {error}", self.label(target_of(e)));
                self.line(&text);
            }
        }
    }

    fn plain(&mut self, e: &Event) {
        let i = target_of(e);
        let label = self.label(i).to_string();
        match e {
            Event::Start { path, total, .. } => {
                self.started[i] = Instant::now();
                eprintln!("{label}: writing {} to {path}", human_bytes(*total));
            }
            Event::Progress {
                phase,
                durable,
                verified,
                total,
                ..
            } => {
                let due = self.last_line[i].elapsed() >= Duration::from_secs(2);
                // Phase changes are shown; `done` is followed by the verdict line anyway.
                let edge = !matches!(phase, Phase::Writing | Phase::Done);
                if due || edge {
                    self.last_line[i] = Instant::now();
                    let secs = self.started[i].elapsed().as_secs_f64().max(0.001);
                    eprintln!(
                        "{label}: {}: {} of {} durable ({:.0}%), {} verified, {}/s",
                        phase.as_str(),
                        human_bytes(*durable),
                        human_bytes(*total),
                        if *total == 0 {
                            100.0
                        } else {
                            *durable as f64 * 100.0 / *total as f64
                        },
                        human_bytes(*verified),
                        human_bytes((*durable as f64 / secs) as u64)
                    );
                }
            }
            Event::Verified { bytes, seconds, .. } => {
                eprintln!(
                    "{label}: VERIFIED: {} written and read back in {seconds:.1} s",
                    human_bytes(*bytes)
                );
            }
            Event::Failed {
                error,
                partition_table_wiped,
                ..
            } => {
                eprintln!(
                    "{label}: FAILED: {error}{}",
                    if *partition_table_wiped {
                        " (its partition table was wiped: it will not boot)"
                    } else {
                        ""
                    }
                );
            }
        }
    }

    /// Remove the bars.
    pub fn finish(&mut self) {
        if let Some(m) = self.multi.take() {
            let _ = m.clear();
        }
    }
}

fn target_of(e: &Event) -> usize {
    match e {
        Event::Start { target, .. }
        | Event::Progress { target, .. }
        | Event::Verified { target, .. }
        | Event::Failed { target, .. } => *target,
    }
}

fn shorten(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let tail: String = s
            .chars()
            .rev()
            .take(width.saturating_sub(1))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("…{tail}")
    }
}
