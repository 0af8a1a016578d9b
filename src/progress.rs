//! Progress reporting: the library reports phases and byte counts through [`Progress`]; the
//! [`Reporter`] shows them as a bar on a terminal and as plain lines otherwise (logs, CI).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// What long-running library calls report.
pub trait Progress {
    /// A new phase begins (e.g. "checking assets").
    fn phase(&mut self, name: &str);
    /// Bytes processed in the current phase.
    fn bytes(&mut self, done: u64, total: u64);
    /// The work is over (successfully or not).
    fn finish(&mut self) {}
}

/// Reports nothing.
pub struct Silent;

impl Progress for Silent {
    fn phase(&mut self, _: &str) {}
    fn bytes(&mut self, _: u64, _: u64) {}
}

/// Bars on a terminal (stderr), plain lines otherwise.
pub struct Reporter {
    bar: Option<indicatif::ProgressBar>,
    plain: bool,
    phase: String,
    started: Instant,
    last_line: Instant,
}

impl Reporter {
    /// A reporter for stderr; `quiet` disables all output.
    pub fn stderr(quiet: bool) -> Reporter {
        let term = std::io::stderr().is_terminal();
        Reporter {
            bar: None,
            plain: !quiet && !term,
            phase: String::new(),
            started: Instant::now(),
            last_line: Instant::now(),
        }
        .with_bar(!quiet && term)
    }

    fn with_bar(mut self, on: bool) -> Self {
        if on {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix:>16} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            self.bar = Some(bar);
        }
        self
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Progress for Reporter {
    fn phase(&mut self, name: &str) {
        self.phase = name.to_string();
        self.started = Instant::now();
        if let Some(bar) = &self.bar {
            bar.set_prefix(name.to_string());
            bar.set_length(0);
            bar.set_position(0);
        } else if self.plain {
            let _ = writeln!(std::io::stderr(), "{name}");
        }
    }

    fn bytes(&mut self, done: u64, total: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
        } else if self.plain
            && (self.last_line.elapsed() >= Duration::from_secs(2) || done == total)
        {
            self.last_line = Instant::now();
            let secs = self.started.elapsed().as_secs_f64().max(0.001);
            let _ = writeln!(
                std::io::stderr(),
                "{}: {} of {} ({:.0}%, {}/s)",
                self.phase,
                human_bytes(done),
                human_bytes(total),
                if total == 0 {
                    100.0
                } else {
                    done as f64 * 100.0 / total as f64
                },
                human_bytes((done as f64 / secs) as u64)
            );
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.finish();
    }
}
