//! A progress bar on stderr for long passes over big images: shown only when the image
//! is over 1 GiB and stderr is a terminal.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Images above this size get a progress bar.
pub const PROGRESS_THRESHOLD: u64 = 1 << 30;

/// A progress bar (or nothing, when disabled).
#[derive(Debug)]
pub struct Progress {
    label: &'static str,
    total: u64,
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    /// A bar for `total` units of work over an image of `image_bytes`; enabled when the
    /// image is over [`PROGRESS_THRESHOLD`] and stderr is a terminal.
    pub fn new(label: &'static str, total: u64, image_bytes: u64) -> Self {
        Self {
            label,
            total,
            enabled: image_bytes > PROGRESS_THRESHOLD && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    /// A bar that never shows.
    pub fn hidden() -> Self {
        Self {
            label: "",
            total: 0,
            enabled: false,
            last: None,
        }
    }

    /// Whether the bar is shown.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Reports `done` units of work (redrawn at most ten times a second).
    pub fn set(&mut self, done: u64) {
        if !self.enabled || self.total == 0 {
            return;
        }
        let now = Instant::now();
        if self
            .last
            .is_some_and(|t| now - t < Duration::from_millis(100))
        {
            return;
        }
        self.last = Some(now);
        let pct = (done.min(self.total) as u128 * 100 / self.total as u128) as usize;
        let bar = "=".repeat(pct / 4) + &" ".repeat(25 - pct / 4);
        let _ = write!(std::io::stderr(), "\r{} [{bar}] {pct:3}%", self.label);
    }

    /// Clears the bar.
    pub fn finish(&mut self) {
        if self.enabled && self.last.is_some() {
            let _ = write!(
                std::io::stderr(),
                "\r{}\r",
                " ".repeat(self.label.len() + 34)
            );
        }
        self.last = None;
    }
}
