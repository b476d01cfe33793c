//! A dump file that is complete or absent: written under a temporary name beside the target
//! (mode 0600, it holds the data), renamed over it only once the dump succeeded, removed in
//! every other case (failure, a dropped stream, Ctrl-C: dropping it removes it).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::Error;

/// The file being written; [`PendingFile::commit`] makes it the dump.
pub struct PendingFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl PendingFile {
    /// Opens `.NAME.kubectl-pg-PID.partial` in the target's directory: the same filesystem,
    /// so the final rename is atomic, and a name no one takes for a finished dump.
    pub fn create(target: &Path) -> Result<Self, Error> {
        if target.is_dir() {
            return Err(Error::invalid(format!(
                "{} is a directory: give -f a file name",
                target.display()
            )));
        }
        let name = target
            .file_name()
            .ok_or_else(|| Error::invalid(format!("{} names no file", target.display())))?;
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let temp = dir.join(format!(
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
            target: target.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    /// The temporary name, for messages.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Appends a chunk.
    pub fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(chunk),
            None => Err(std::io::Error::other("the dump file is closed")),
        }
    }

    /// Flushes the data to disk, then renames it to the target (replacing an older file).
    pub fn commit(mut self) -> Result<PathBuf, Error> {
        let io = |context: String| move |source| Error::Io { context, source };
        if let Some(file) = self.file.take() {
            file.sync_all()
                .map_err(io(format!("cannot write {}", self.temp.display())))?;
        }
        std::fs::rename(&self.temp, &self.target).map_err(io(format!(
            "cannot rename {} to {}",
            self.temp.display(),
            self.target.display()
        )))?;
        // The rename itself, on disk too.
        if let Some(dir) = self.target.parent().filter(|p| !p.as_os_str().is_empty()) {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        self.temp = PathBuf::new();
        Ok(self.target.clone())
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
}
