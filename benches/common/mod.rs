//! What every bench measures with: medians, milliseconds, and a timed whole process.

use std::process::Command;
use std::time::{Duration, Instant};

pub fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The wall time of `command`, which must succeed.
pub fn timed(command: &mut Command) -> Duration {
    let started = Instant::now();
    let out = command.output().expect("command runs");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}
