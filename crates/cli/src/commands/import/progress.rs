//! The progress line and the rejection reports, on standard error.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

const MAX_PRINTED_REJECTIONS: usize = 200;

pub(super) struct Progress {
    total: usize,
    pub(super) imported: usize,
    pub(super) rejected: usize,
    pub(super) skipped: usize,
    pub(super) started: Instant,
    last_draw: Instant,
    terminal: bool,
}

impl Progress {
    pub(super) fn new(total: usize) -> Self {
        let now = Instant::now();
        Self {
            total,
            imported: 0,
            rejected: 0,
            skipped: 0,
            started: now,
            last_draw: now,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub(super) fn add(&mut self, imported: usize) {
        self.imported += imported;
        let every = if self.terminal {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(10)
        };
        if self.last_draw.elapsed() >= every {
            self.draw();
        }
    }

    pub(super) fn reject(&mut self, place: &str, reason: &str) {
        self.rejected += 1;
        if self.rejected <= MAX_PRINTED_REJECTIONS {
            self.clear_line();
            eprintln!("rejected {place}: {reason}");
        } else if self.rejected == MAX_PRINTED_REJECTIONS + 1 {
            eprintln!("(further rejections are counted, not printed)");
        }
    }

    fn clear_line(&self) {
        if self.terminal {
            eprint!("\r\x1b[2K");
        }
    }

    fn draw(&mut self) {
        self.last_draw = Instant::now();
        let done = self.imported + self.rejected + self.skipped;
        let fraction = done as f64 / self.total.max(1) as f64;
        let width = 30;
        let filled = ((fraction * width as f64) as usize).min(width);
        let rate = self.imported as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let line = format!(
            "[{}{}] {:>3.0}% {done}/{} resources, {rate:.0}/s, {} rejected",
            "#".repeat(filled),
            ".".repeat(width - filled),
            fraction * 100.0,
            self.total,
            self.rejected
        );
        if self.terminal {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }

    pub(super) fn finish(&mut self) {
        self.draw();
        if self.terminal {
            eprintln!();
        }
    }
}
