//! A `.tar.gz` of text files, as `kubectl pg report` writes it: private (mode 0600) from its
//! first byte, written under a temporary name and renamed (or through to a device, FIFO or
//! `/dev/stdout`), so a half-written bundle never stands under the name asked for; every file
//! goes through the redactor.

use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;

use super::redact::Redactor;
use crate::error::Error;
use crate::transfer::PendingFile;

/// The files of a bundle, all under one top directory.
#[derive(Debug, Default)]
pub struct Bundle {
    root: String,
    files: Vec<(String, Vec<u8>)>,
}

impl Bundle {
    /// A bundle whose files unpack into directory `root`.
    pub fn new(root: &str) -> Self {
        Self {
            root: root.trim_matches('/').to_string(),
            ..Self::default()
        }
    }

    /// Adds a file at `path` (relative to the root).
    pub fn add(&mut self, path: &str, content: impl Into<Vec<u8>>) {
        self.files.push((path.to_string(), content.into()));
    }

    /// The paths added so far, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|(p, _)| p.as_str())
    }

    /// Writes the archive to `path` as `-f` writes (see [`crate::transfer::file`]): a new or
    /// regular file through a temporary one (mode 0600) renamed over it, a device, FIFO or
    /// descriptor (`/dev/stdout`) in place; each file through `redactor`. Returns its size in
    /// bytes.
    pub fn write(&self, path: &Path, redactor: &Redactor) -> Result<u64, Error> {
        let mut file = PendingFile::create(path)?;
        let what = file.temp_path().display().to_string();
        if let Err(source) = self.write_to(&mut file, redactor) {
            return Err(Error::Io {
                context: format!("cannot write {what}"),
                source,
            });
        }
        let size = file.written();
        file.commit()?;
        Ok(size)
    }

    fn write_to(&self, file: &mut PendingFile, redactor: &Redactor) -> std::io::Result<()> {
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut tar = tar::Builder::new(GzEncoder::new(file, Compression::default()));
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_mode(0o700);
        dir.set_mtime(mtime);
        dir.set_size(0);
        tar.append_data(&mut dir, format!("{}/", self.root), std::io::empty())?;
        let mut dirs: Vec<String> = Vec::new();
        for (path, content) in &self.files {
            if let Some((parent, _)) = path.rsplit_once('/') {
                if !dirs.iter().any(|d| d == parent) {
                    dirs.push(parent.to_string());
                    tar.append_data(
                        &mut dir,
                        format!("{}/{parent}/", self.root),
                        std::io::empty(),
                    )?;
                }
            }
            let content = redactor.redact_bytes(content);
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o600);
            header.set_mtime(mtime);
            header.set_size(content.len() as u64);
            tar.append_data(
                &mut header,
                format!("{}/{path}", self.root),
                content.as_slice(),
            )?;
        }
        let mut gz = tar.into_inner()?;
        gz.flush()?;
        gz.finish()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_private_archive_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.tar.gz");
        let mut bundle = Bundle::new("report-x");
        bundle.add("a.txt", "hello secret-value-1\n");
        bundle.add("logs/b.log", "line\n");
        let mut redactor = Redactor::new();
        redactor.add("secret-value-1");
        let size = bundle.write(&path, &redactor).unwrap();
        assert!(size > 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let entries: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries, ["r.tar.gz"], "no temporary file is left");
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
            std::fs::File::open(&path).unwrap(),
        ));
        let mut found = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut text = String::new();
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            found.push((name, text));
        }
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "report-x/",
                "report-x/a.txt",
                "report-x/logs/",
                "report-x/logs/b.log"
            ]
        );
        assert_eq!(found[1].1, "hello [REDACTED]\n");
    }
}
