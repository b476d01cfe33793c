//! Bytes and rate of a transfer on stderr, for a person at a terminal only: a pipe or a log
//! gets nothing but the final line the command prints.

use std::time::{Duration, Instant};

/// `1.5 MiB`
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A progress line rewritten in place at most every 200 ms.
pub struct Progress {
    enabled: bool,
    verb: &'static str,
    started: Instant,
    shown: Instant,
    bytes: u64,
    drawn: bool,
}

impl Progress {
    /// `enabled` when stderr is a terminal; `verb` says what moves ("dumped", "sent").
    pub fn new(enabled: bool, verb: &'static str) -> Self {
        let now = Instant::now();
        Self {
            enabled,
            verb,
            started: now,
            shown: now,
            bytes: 0,
            drawn: false,
        }
    }

    /// Counts a chunk and redraws when due.
    pub fn add(&mut self, n: usize) {
        self.bytes += n as u64;
        if self.enabled && self.shown.elapsed() >= Duration::from_millis(200) {
            self.shown = Instant::now();
            self.draw();
        }
    }

    fn draw(&mut self) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        crate::note_inline!(
            "\r\x1b[2K{} {} ({}/s)",
            self.verb,
            human_bytes(self.bytes),
            human_bytes((self.bytes as f64 / secs) as u64)
        );
        self.drawn = true;
    }

    /// Ends the line, if one was drawn.
    pub fn finish(&mut self) {
        if self.drawn {
            self.draw();
            crate::note!();
            self.drawn = false;
        }
    }

    /// Bytes counted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Time since the transfer started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(60 * 1024 * 1024), "60.0 MiB");
    }
}
