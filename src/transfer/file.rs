//! Where `-f` writes, as `pg_dump -f` would, without ever leaving a half file under the name.
//!
//! - A new path, or a regular file (through any symlinks, which stay): written under a
//!   temporary name beside the real file (mode 0600, it holds the data), renamed over it only
//!   once the dump succeeded, removed in every other case (failure, a dropped stream, Ctrl-C:
//!   dropping it removes it). A replaced file keeps its mode, and its owner and group where the
//!   user may keep them, as pg_dump's in-place write does.
//! - A character or block device, a FIFO, or an open descriptor (`/dev/stdout`, `/dev/fd/N`):
//!   written through, in place, since renaming over it would replace the device, the FIFO its
//!   reader waits on, or the descriptor's file. What reached it cannot be taken back on a
//!   failure, and every error says so.
//! - Anything else (a dangling symlink, a directory, a socket) is refused before any connection.

use std::fs::{File, Metadata, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// Where `-f` writes, resolved before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A temporary file beside `real`, renamed over it; `existing` is the file it replaces.
    Replace { real: PathBuf, existing: bool },
    /// Written in place; `what` names it for messages (`a FIFO`), `append` for a descriptor
    /// already open elsewhere (a shell's `>>` keeps its earlier content).
    Through {
        path: PathBuf,
        what: &'static str,
        append: bool,
    },
}

/// How many symlinks are followed before giving up (the kernel's own limit).
#[cfg(unix)]
const MAX_LINKS: usize = 40;

/// Resolves `-f PATH`: refuses what cannot be written safely.
pub fn resolve(target: &Path) -> Result<Destination, Error> {
    if target.is_dir() {
        return Err(Error::invalid(format!(
            "{} is a directory: give -f a file name",
            target.display()
        )));
    }
    #[cfg(unix)]
    {
        resolve_unix(target)
    }
    #[cfg(not(unix))]
    {
        if target.file_name().is_none() {
            return Err(Error::invalid(format!(
                "{} names no file",
                target.display()
            )));
        }
        Ok(Destination::Replace {
            real: target.to_path_buf(),
            existing: target.exists(),
        })
    }
}

#[cfg(unix)]
fn resolve_unix(target: &Path) -> Result<Destination, Error> {
    use std::os::unix::fs::FileTypeExt;
    let refuse = |what: String| {
        Err(Error::InvalidInput {
            message: format!("-f {}: {what}", target.display()),
            hint: Some(
                "give -f a regular file, a new path, a device or a FIFO (or write to stdout)"
                    .into(),
            ),
        })
    };
    let mut current = target.to_path_buf();
    for _ in 0..MAX_LINKS {
        let parent = match current.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = match std::fs::canonicalize(&parent) {
            Ok(dir) => dir,
            Err(e) if current != target => {
                return refuse(format!(
                    "is a dangling symlink (to {}): {e}",
                    current.display()
                ))
            }
            Err(e) => {
                return refuse(format!(
                    "its directory {} is not usable: {e}",
                    parent.display()
                ))
            }
        };
        let Some(name) = current.file_name() else {
            return refuse("names no file".into());
        };
        // /dev/stdout and /dev/fd/N lead into /proc: a descriptor some shell opened, whatever
        // it points at (a pipe, a terminal, a file opened with `>>`): written where it points.
        if dir.starts_with("/proc") {
            return match std::fs::metadata(target) {
                Ok(m) if m.is_dir() => refuse("is a directory".into()),
                Ok(_) => Ok(Destination::Through {
                    path: target.to_path_buf(),
                    what: "an open file descriptor",
                    append: true,
                }),
                Err(e) => refuse(format!("cannot be opened: {e}")),
            };
        }
        let here = dir.join(name);
        let meta = match std::fs::symlink_metadata(&here) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if current != target {
                    return refuse(format!(
                        "is a dangling symlink (to {}): refusing to create its target",
                        here.display()
                    ));
                }
                return Ok(Destination::Replace {
                    real: here,
                    existing: false,
                });
            }
            Err(e) => return refuse(format!("cannot be examined: {e}")),
        };
        let kind = meta.file_type();
        if kind.is_symlink() {
            let link = std::fs::read_link(&here).map_err(|source| Error::Io {
                context: format!("cannot read the symlink {}", here.display()),
                source,
            })?;
            current = dir.join(link);
            continue;
        }
        if kind.is_file() {
            // pg_dump would fail to open a file it may not write: so does -f, rather than
            // renaming over a write-protected file.
            if let Err(e) = OpenOptions::new().write(true).open(&here) {
                return refuse(format!("cannot be written: {e}"));
            }
            return Ok(Destination::Replace {
                real: here,
                existing: true,
            });
        }
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_dir() {
            return refuse("is a directory".into());
        } else if kind.is_socket() {
            return refuse("is a socket: it cannot be written as a file".into());
        } else {
            return refuse("is not a file, a device or a FIFO".into());
        };
        return Ok(Destination::Through {
            path: here,
            what,
            append: false,
        });
    }
    refuse("too many levels of symlinks".into())
}

/// The file being written; [`PendingFile::commit`] makes it the dump.
pub struct PendingFile {
    destination: Destination,
    /// The temporary name of a [`Destination::Replace`], empty once renamed.
    temp: PathBuf,
    /// The replaced file's metadata, whose mode and owner the new file takes.
    replaced: Option<Metadata>,
    file: Option<File>,
    written: u64,
}

impl PendingFile {
    /// Resolves `target` and opens what will be written: `.NAME.kubectl-pg-PID.partial` beside
    /// the real file (the same filesystem, so the final rename is atomic, and a name no one
    /// takes for a finished dump), or the device, FIFO or descriptor itself. Opening a FIFO
    /// waits for its reader, as pg_dump does, and says so.
    pub fn create(target: &Path) -> Result<Self, Error> {
        let destination = resolve(target)?;
        match &destination {
            Destination::Replace { real, existing } => {
                let replaced = if *existing {
                    std::fs::metadata(real).ok()
                } else {
                    None
                };
                Self::create_temp(destination.clone(), real, replaced)
            }
            Destination::Through { path, what, append } => {
                let file = open_through(path, what, *append)?;
                Ok(Self {
                    destination,
                    temp: PathBuf::new(),
                    replaced: None,
                    file: Some(file),
                    written: 0,
                })
            }
        }
    }

    /// As [`PendingFile::create`], for a file that must be read back later (an upgrade's
    /// backup): a device or FIFO would not keep it, so only a regular file or a new path.
    pub fn create_regular(target: &Path) -> Result<Self, Error> {
        if let Destination::Through { what, .. } = resolve(target)? {
            return Err(Error::InvalidInput {
                message: format!(
                    "{} is {what}: the backup is read back to restore the new major, so it must be a regular file",
                    target.display()
                ),
                hint: Some("give --backup-file a regular file or a new path".into()),
            });
        }
        Self::create(target)
    }

    fn create_temp(
        destination: Destination,
        real: &Path,
        replaced: Option<Metadata>,
    ) -> Result<Self, Error> {
        let name = real
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{} names no file", real.display())))?;
        let temp = real.with_file_name(format!(
            ".{}.kubectl-pg-{}.partial",
            name.to_string_lossy(),
            std::process::id()
        ));
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let file = options.open(&temp).map_err(|source| Error::Io {
            context: format!("cannot create {}", temp.display()),
            source,
        })?;
        Ok(Self {
            destination,
            temp,
            replaced,
            file: Some(file),
            written: 0,
        })
    }

    /// The temporary name, for messages (the target itself when written through).
    pub fn temp_path(&self) -> &Path {
        match &self.destination {
            Destination::Replace { .. } => &self.temp,
            Destination::Through { path, .. } => path,
        }
    }

    /// Whether the bytes go straight to the target (a device, a FIFO, a descriptor), where a
    /// failure cannot be undone.
    pub fn writes_through(&self) -> bool {
        matches!(self.destination, Destination::Through { .. })
    }

    /// What a failure left behind, for its message.
    pub fn failure_note(&self) -> String {
        match &self.destination {
            Destination::Replace { .. } => "no dump file was written".into(),
            Destination::Through { path, what, .. } => format!(
                "{} is {what}: the dump went straight to it, and what reached it is incomplete and cannot be taken back",
                path.display()
            ),
        }
    }

    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let result = match self.file.as_mut() {
            Some(f) => f.write_all(chunk),
            None => Err(std::io::Error::other("the dump file is closed")),
        };
        match result {
            Ok(()) => {
                self.written += chunk.len() as u64;
                Ok(())
            }
            Err(e) if self.writes_through() => Err(std::io::Error::new(
                e.kind(),
                format!("{e}; {}", self.failure_note()),
            )),
            Err(e) => Err(e),
        }
    }

    /// The bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes the data to disk, then renames it over the target (keeping the replaced file's
    /// mode and owner); a device or FIFO is simply closed. Returns the path as given by `-f`'s
    /// resolution: the real file, or the device.
    pub fn commit(mut self) -> Result<PathBuf, Error> {
        let io = |context: String| move |source| Error::Io { context, source };
        let real = match &self.destination {
            Destination::Through { path, .. } => {
                let path = path.clone();
                if let Some(file) = self.file.take() {
                    // A descriptor may be a regular file: its data on disk too. A device or
                    // FIFO has nothing to sync (fsync says EINVAL).
                    if file.metadata().is_ok_and(|m| m.is_file()) {
                        file.sync_all()
                            .map_err(io(format!("cannot write {}", path.display())))?;
                    }
                }
                return Ok(path);
            }
            Destination::Replace { real, .. } => real.clone(),
        };
        if let Some(file) = self.file.take() {
            if let Some(old) = &self.replaced {
                keep_mode_and_owner(&file, old, &real).map_err(io(format!(
                    "cannot set the mode of {}",
                    self.temp.display()
                )))?;
            }
            file.sync_all()
                .map_err(io(format!("cannot write {}", self.temp.display())))?;
        }
        std::fs::rename(&self.temp, &real).map_err(io(format!(
            "cannot rename {} to {}",
            self.temp.display(),
            real.display()
        )))?;
        // The rename itself, on disk too.
        if let Some(dir) = real.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.temp = PathBuf::new();
        Ok(real)
    }
}

/// The new file takes the replaced one's permissions, and its owner and group where the user
/// may give them (root may; anyone may keep their own); otherwise it is theirs, and they are told.
fn keep_mode_and_owner(file: &File, old: &Metadata, real: &Path) -> std::io::Result<()> {
    file.set_permissions(old.permissions())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let new = file.metadata()?;
        if (new.uid(), new.gid()) != (old.uid(), old.gid())
            && std::os::unix::fs::fchown(file, Some(old.uid()), Some(old.gid())).is_err()
        {
            crate::note!(
                "note: {} belonged to uid {} gid {}; the new file is yours (only root may give a file away)",
                real.display(),
                old.uid(),
                old.gid()
            );
        }
    }
    #[cfg(not(unix))]
    let _ = real;
    Ok(())
}

/// Opens a device, FIFO or descriptor for writing, in place. A FIFO's open waits for a reader;
/// after a second of it the user is told what the command waits for.
fn open_through(path: &Path, what: &str, append: bool) -> Result<File, Error> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let mut options = OpenOptions::new();
        options.write(true);
        if append {
            options.append(true);
        }
        let _ = tx.send(options.open(&owned));
    });
    let opened = match rx.recv_timeout(std::time::Duration::from_secs(1)) {
        Ok(opened) => opened,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            crate::note!("waiting for a reader of {} ({what})", path.display());
            rx.recv()
                .unwrap_or_else(|_| Err(std::io::Error::other("the open was abandoned")))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            Err(std::io::Error::other("the open was abandoned"))
        }
    };
    opened.map_err(|source| Error::Io {
        context: format!("cannot open {} ({what})", path.display()),
        source,
    })
}

impl Write for PendingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        PendingFile::write(self, buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for PendingFile {
    fn drop(&mut self) {
        self.file.take();
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_or_absent() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("db.dump");
        let mut pending = PendingFile::create(&target).unwrap();
        pending.write(b"PGDMP").unwrap();
        let temp = pending.temp_path().to_path_buf();
        assert!(temp.exists() && !target.exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&temp).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        drop(pending);
        assert!(
            !temp.exists() && !target.exists(),
            "a dropped dump leaves nothing"
        );

        let mut pending = PendingFile::create(&target).unwrap();
        pending.write(b"PGDMP").unwrap();
        let temp = pending.temp_path().to_path_buf();
        pending.commit().unwrap();
        assert!(!temp.exists());
        assert_eq!(std::fs::read(&target).unwrap(), b"PGDMP");
        assert!(PendingFile::create(dir.path()).is_err());
    }

    #[cfg(unix)]
    mod unix {
        use super::super::*;
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        use std::process::Command;

        fn entries(dir: &Path) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        #[test]
        fn a_regular_file_is_replaced_whole_keeping_its_mode() {
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("old.dump");
            std::fs::write(&target, b"old").unwrap();
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o640)).unwrap();
            let mut pending = PendingFile::create(&target).unwrap();
            assert!(!pending.writes_through());
            pending.write(b"new").unwrap();
            assert_eq!(
                std::fs::read(&target).unwrap(),
                b"old",
                "untouched until commit"
            );
            drop(pending);
            assert_eq!(
                std::fs::read(&target).unwrap(),
                b"old",
                "a failure keeps the old dump"
            );
            let mut pending = PendingFile::create(&target).unwrap();
            pending.write(b"new").unwrap();
            pending.commit().unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"new");
            let mode = std::fs::metadata(&target).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o640, "the replaced file's mode is kept");
            assert_eq!(entries(dir.path()), ["old.dump"]);
        }

        #[test]
        fn a_replaced_file_keeps_its_owner_where_root_may_give_it() {
            use std::os::unix::fs::MetadataExt;
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("theirs.dump");
            std::fs::write(&target, b"old").unwrap();
            if std::os::unix::fs::chown(&target, Some(4321), Some(4321)).is_err() {
                crate::note!("skipped: giving a file away needs root");
                return;
            }
            let mut pending = PendingFile::create(&target).unwrap();
            pending.write(b"new").unwrap();
            pending.commit().unwrap();
            let meta = std::fs::metadata(&target).unwrap();
            assert_eq!((meta.uid(), meta.gid()), (4321, 4321));
            assert_eq!(std::fs::read(&target).unwrap(), b"new");
        }

        #[test]
        fn an_open_descriptor_is_appended_to_in_place() {
            use std::os::fd::AsRawFd;
            let dir = tempfile::tempdir().unwrap();
            let log = dir.path().join("log");
            let mut held = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap();
            held.write_all(b"earlier ").unwrap();
            let through = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
            let mut pending = PendingFile::create(&through).unwrap();
            assert!(pending.writes_through());
            pending.write(b"report").unwrap();
            pending.commit().unwrap();
            assert_eq!(std::fs::read(&log).unwrap(), b"earlier report");
            assert_eq!(entries(dir.path()), ["log"]);
        }

        #[test]
        fn a_symlink_stays_and_its_target_is_replaced() {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("real")).unwrap();
            let real = dir.path().join("real/db.dump");
            std::fs::write(&real, b"old").unwrap();
            let link = dir.path().join("link.dump");
            std::os::unix::fs::symlink("real/db.dump", &link).unwrap();
            let mut pending = PendingFile::create(&link).unwrap();
            pending.write(b"new").unwrap();
            assert!(pending
                .temp_path()
                .starts_with(dir.path().join("real").canonicalize().unwrap()));
            pending.commit().unwrap();
            assert!(std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink());
            assert_eq!(std::fs::read(&real).unwrap(), b"new");
            assert_eq!(entries(&dir.path().join("real")), ["db.dump"]);
        }

        #[test]
        fn dangling_symlinks_directories_and_sockets_are_refused() {
            let dir = tempfile::tempdir().unwrap();
            let dangling = dir.path().join("dangling");
            std::os::unix::fs::symlink("nowhere/file", &dangling).unwrap();
            let e = PendingFile::create(&dangling).err().unwrap().to_string();
            assert!(e.contains("dangling symlink"), "{e}");
            let e = PendingFile::create(dir.path()).err().unwrap().to_string();
            assert!(e.contains("directory"), "{e}");
            let to_dir = dir.path().join("to-dir");
            std::os::unix::fs::symlink(".", &to_dir).unwrap();
            assert!(PendingFile::create(&to_dir).is_err());
            let socket = dir.path().join("s.sock");
            let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
            let e = PendingFile::create(&socket).err().unwrap().to_string();
            assert!(e.contains("socket"), "{e}");
            let e = PendingFile::create(&dir.path().join("missing/file"))
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("directory"), "{e}");
            assert_eq!(entries(dir.path()), ["dangling", "s.sock", "to-dir"]);
        }

        #[test]
        fn a_fifo_is_written_through_to_its_reader() {
            let dir = tempfile::tempdir().unwrap();
            let fifo = dir.path().join("pipe");
            let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
            assert!(made.success());
            let reader = {
                let fifo = fifo.clone();
                std::thread::spawn(move || std::fs::read(&fifo).unwrap())
            };
            let mut pending = PendingFile::create(&fifo).unwrap();
            assert!(pending.writes_through());
            pending.write(b"PGDMP and the rest").unwrap();
            assert_eq!(pending.commit().unwrap(), fifo);
            assert_eq!(reader.join().unwrap(), b"PGDMP and the rest");
            assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
            assert_eq!(entries(dir.path()), ["pipe"]);
            assert!(
                PendingFile::create_regular(&fifo).is_err(),
                "a backup must be a file"
            );
        }

        /// Device nodes made in the temp dir (never the real /dev): root only.
        fn mknod(dir: &Path, name: &str, minor: &str) -> Option<PathBuf> {
            let path = dir.join(name);
            let made = Command::new("mknod")
                .arg(&path)
                .args(["c", "1", minor])
                .output()
                .ok()?;
            if !made.status.success() {
                crate::note!(
                    "skipped: mknod needs root ({})",
                    String::from_utf8_lossy(&made.stderr).trim()
                );
                return None;
            }
            Some(path)
        }

        #[test]
        fn a_device_is_written_through_and_stays_a_device() {
            let dir = tempfile::tempdir().unwrap();
            let Some(null) = mknod(dir.path(), "null", "3") else {
                return;
            };
            let mut pending = PendingFile::create(&null).unwrap();
            assert!(pending.writes_through());
            pending.write(&vec![7u8; 300_000]).unwrap();
            pending.commit().unwrap();
            let meta = std::fs::metadata(&null).unwrap();
            assert!(meta.file_type().is_char_device(), "still the device");
            let Some(full) = mknod(dir.path(), "full", "7") else {
                return;
            };
            let mut pending = PendingFile::create(&full).unwrap();
            let e = pending.write(b"PGDMP").unwrap_err().to_string();
            assert!(e.contains("cannot be taken back"), "{e}");
            drop(pending);
            assert!(std::fs::metadata(&full)
                .unwrap()
                .file_type()
                .is_char_device());
            assert_eq!(entries(dir.path()), ["full", "null"]);
        }
    }
}
