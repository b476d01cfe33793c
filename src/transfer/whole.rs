//! A whole server carried to another: `pg_dumpall` of one pod into a backup file, and that file
//! restored into a fresh server in another pod, both over the pods' local sockets. The major
//! upgrade and the move to a CloudNativePG Cluster both copy this way.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::cluster::exec;
use crate::cluster::release::Target;
use crate::cluster::Cluster;
use crate::error::Error;
use crate::manifests::render::CONTAINER;
use crate::transfer::filter::LineFilter;
use crate::transfer::{self, snapshot, PendingFile, Progress};

/// pg_dumpall of `target`'s server, as its user over the socket, into the pending `file`.
/// Returns the bytes written.
pub async fn dump_all(
    cluster: &Cluster,
    target: &Target,
    file: &mut PendingFile,
) -> Result<u64, Error> {
    let tag = transfer::session_tag();
    let command = transfer::dump_command(
        &target.credentials.username,
        &transfer::DumpScope::Cluster,
        transfer::DumpFormat::Plain,
        &tag,
        &[],
    )?;
    let mut progress = Progress::new(std::io::stderr().is_terminal(), "backed up");
    let outcome = exec::stream(
        cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &command,
        None::<tokio::io::Empty>,
        |chunk: &[u8]| {
            file.write(chunk)?;
            progress.add(chunk.len());
            Ok(())
        },
    )
    .await?;
    progress.finish();
    if !outcome.success {
        return Err(Error::Tool {
            tool: "pg_dumpall".into(),
            message: outcome.reason(),
            hints: Vec::new(),
        });
    }
    Ok(outcome.bytes_out)
}

/// What a copy or an upgrade takes of a server whose writes are blocked, before it changes
/// anything: its snapshot, then its pg_dumpall into `pending` (at `path`), committed. Returns
/// the snapshot and the backup's bytes.
pub async fn snapshot_and_backup(
    cluster: &Cluster,
    target: &Target,
    mut pending: PendingFile,
    path: &Path,
) -> Result<(snapshot::Snapshot, u64), Error> {
    let before = snapshot::take(cluster, target).await?;
    crate::note!(
        "snapshot: {} tables; writing the backup {}",
        snapshot::tables(&before),
        path.display()
    );
    let bytes = dump_all(cluster, target, &mut pending).await?;
    pending.commit()?;
    Ok((before, bytes))
}

/// Restores a pg_dumpall `backup` into the freshly initialised server of `target`, as its
/// user over the socket. `database`, which the new server's bootstrap created, is dropped
/// first (the dump creates it), and the dump's `CREATE ROLE` of each of `existing` (roles the
/// bootstrap made) is left out, so every other statement must succeed.
pub async fn restore_all(
    cluster: &Cluster,
    target: &Target,
    backup: &Path,
    existing: &[&str],
    database: &str,
) -> Result<(), Error> {
    let user = target.credentials.username.as_str();
    if database != "postgres" {
        let quote = format!("\"{}\"", database.replace('"', "\"\""));
        snapshot::psql(
            cluster,
            target,
            "postgres",
            &format!("DROP DATABASE IF EXISTS {quote} WITH (FORCE);\n"),
        )
        .await?;
    }
    let file = tokio::fs::File::open(backup)
        .await
        .map_err(|source| Error::Io {
            context: format!("cannot open {}", backup.display()),
            source,
        })?;
    let skip: Vec<String> = existing
        .iter()
        .flat_map(|role| {
            [
                format!("CREATE ROLE {role};"),
                format!("CREATE ROLE \"{}\";", role.replace('"', "\"\"")),
            ]
        })
        .collect();
    let mut filter = LineFilter::new(move |line| skip.iter().any(|s| s == line));
    let (reader, mut writer) = tokio::io::simplex(256 * 1024);
    let feed = async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut file = file;
        let mut buf = vec![0u8; 256 * 1024];
        let mut passed = Vec::with_capacity(256 * 1024);
        loop {
            let n = file.read(&mut buf).await?;
            passed.clear();
            let mut keep = |b: &[u8]| {
                passed.extend_from_slice(b);
                Ok(())
            };
            if n == 0 {
                filter.finish(&mut keep)?;
            } else {
                filter.feed(&buf[..n], &mut keep)?;
            }
            if writer.write_all(&passed).await.is_err() || n == 0 {
                break;
            }
        }
        let _ = writer.shutdown().await;
        Ok::<(), std::io::Error>(())
    };
    let command: Vec<String> = [
        "psql",
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-U",
        user,
        "-d",
        "postgres",
        "-f",
        "-",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = exec::stream(
        cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &command,
        Some(reader),
        |_: &[u8]| Ok(()),
    );
    let (fed, outcome) = tokio::join!(feed, run);
    fed.map_err(|source| Error::Io {
        context: format!("cannot read {}", backup.display()),
        source,
    })?;
    let outcome = outcome?;
    if !outcome.success {
        return Err(Error::Tool {
            tool: "psql".into(),
            message: format!("restoring the backup: {}", outcome.reason()),
            hints: Vec::new(),
        });
    }
    Ok(())
}

/// `./R-NS-pgM-UNIXTIME.sql`: where a whole-server backup goes when no path is given.
pub fn default_backup(release: &str, namespace: &str, major: u32) -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    PathBuf::from(format!("{release}-{namespace}-pg{major}-{secs}.sql"))
}

/// `path` made absolute (for a record read by a later run, maybe from another directory).
pub fn absolute(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
