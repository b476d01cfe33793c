//! Places that refuse writes, made for a test and never the real ones: a /dev/full node of our
//! own in a temp directory, and a full tmpfs mounted in a private mount namespace.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Exit code of a [`on_full_tmpfs`] run that could not mount its tmpfs (not root).
pub const NO_TMPFS: i32 = 99;

/// A character device 1:7 (what /dev/full is) at `dir/full`, or None (with the reason on
/// stderr) where mknod is not allowed.
pub fn full_device(dir: &Path) -> Option<PathBuf> {
    let full = dir.join("full");
    let made = Command::new("mknod")
        .arg(&full)
        .args(["c", "1", "7"])
        .output()
        .unwrap();
    if made.status.success() {
        Some(full)
    } else {
        eprintln!(
            "mknod needs root: the full device case is skipped ({})",
            String::from_utf8_lossy(&made.stderr).trim()
        );
        None
    }
}

/// A writer on the [`full_device`].
pub fn open(device: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .write(true)
        .open(device)
        .unwrap()
}

/// Spawns `command` in a private mount namespace where `dir` is a tmpfs of 256 KiB, full
/// already when `fill`, with its stdout on `dir/STDOUT` when given (else piped). Afterwards each
/// name left in `dir` is a line `left: NAME` on stderr. Exit [`NO_TMPFS`] without the mount.
pub fn on_full_tmpfs(command: &Command, dir: &Path, fill: bool, stdout: Option<&str>) -> Child {
    let script = format!(
        "mount -t tmpfs -o size=256k tmpfs \"$KPG_TMPFS\" || exit {NO_TMPFS}\n\
         {fill}\"$0\" \"$@\" {redirect}\ncode=$?\nrm -f \"$KPG_TMPFS/.fill\"\n\
         ls -A \"$KPG_TMPFS\" | sed 's/^/left: /' >&2\nexit $code",
        fill = if fill {
            // Until ENOSPC: blocks are all taken, while a new (empty) file can still be made.
            "yes filler > \"$KPG_TMPFS/.fill\" 2>/dev/null\n"
        } else {
            ""
        },
        redirect = stdout
            .map(|name| format!("> \"$KPG_TMPFS/{name}\""))
            .unwrap_or_default(),
    );
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .arg(command.get_program())
        .args(command.get_args())
        .envs(
            command
                .get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .env("KPG_TMPFS", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The names [`on_full_tmpfs`] found left in its directory.
pub fn left(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("left: "))
        .map(str::to_string)
        .collect()
}

/// Checks a run that wrote to a full device or tmpfs: exit 1 with the system's words for it
/// and, with `nothing_left`, nothing left on the tmpfs. False (said on stderr) when the run
/// could not mount its tmpfs.
#[track_caller]
pub fn refused_for_space(what: &str, out: &std::process::Output, nothing_left: bool) -> bool {
    use crate::OutputExt;
    if out.code() == NO_TMPFS {
        eprintln!("no tmpfs mount here (needs root): {}", out.describe());
        return false;
    }
    assert_eq!(out.code(), 1, "{what}: {}", out.describe());
    assert!(
        out.stderr_text().contains("No space left on device"),
        "{what}: {}",
        out.describe()
    );
    if nothing_left {
        assert_eq!(
            left(&out.stderr_text()),
            Vec::<String>::new(),
            "{what} left a file: {}",
            out.describe()
        );
    }
    true
}
