//! dump and restore end within seconds when the other side of their stream fails: stdout on
//! a full device, a closed pipe, a full tmpfs, a consumer that exits, and pg_restore or psql
//! stopping before they read all their input. Each run is bounded by the test.

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::Duration;

use crate::data::{installed, spawn_install};
use crate::scope::Scope;
use crate::{expect_code, output_within, OutputExt};

/// How long any of these runs may take: the stream's end is noticed within a second or two;
/// the rest is one exec and the API's answers.
const BOUND: Duration = Duration::from_secs(30);

/// [`output_within`] [`BOUND`], printing how long the run took (the closing figures).
#[track_caller]
fn timed(what: &str, child: std::process::Child) -> std::process::Output {
    let start = std::time::Instant::now();
    let out = output_within(child, BOUND);
    eprintln!(
        "{what}: exit {:?} after {:?}",
        out.status.code(),
        start.elapsed()
    );
    out
}

/// The pg_dump/restore sessions of the release still open, seen through the pod's own psql.
fn transfer_sessions(scope: &Scope, ns: &str) -> String {
    crate::data::release_query(
        scope,
        ns,
        "s",
        "select count(*) from pg_stat_activity where application_name like 'kubectl-pg-%' and pid <> pg_backend_pid()",
    )
}

#[test]
fn dump_and_restore_end_when_the_other_side_fails() {
    let scope = Scope::new("kpg-streams");
    let ns = scope.ns.clone();
    installed(spawn_install(&scope, &ns, "s", &[]));
    // About 20 MB of dump: more than any pipe or buffer on the way holds.
    crate::data::release_query(
        &scope,
        &ns,
        "s",
        "create table bulk as select i, md5(i::text) || md5((i * 7)::text) t from generate_series(1, 300000) i",
    );
    let dump = |args: &[&str]| {
        let mut all = vec!["dump", "s", "-n", &ns, "--format", "plain"];
        all.extend_from_slice(args);
        scope.kpg_command(&all)
    };

    // stdout on a full device (a /dev/full node of our own, never the real /dev).
    let dev = tempfile::tempdir().unwrap();
    if let Some(full) = crate::sinks::full_device(dev.path()) {
        let child = dump(&[])
            .stdin(Stdio::null())
            .stdout(crate::sinks::open(&full))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = timed("dump > full device", child);
        expect_code(&out, 1);
        assert!(
            out.stderr_text().contains("No space left on device"),
            "{}",
            out.describe()
        );
    }

    // A consumer that reads 100 bytes and exits (`dump | head -c 100`).
    let mut child = dump(&[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 100];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let out = timed("dump | head -c 100", child);
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("Broken pipe"),
        "{}",
        out.describe()
    );

    // A full tmpfs, mounted in a private mount namespace: exit 1, and nothing left on it.
    let mount = tempfile::tempdir().unwrap();
    let target = mount.path().join("s.sql");
    let child = crate::sinks::on_full_tmpfs(
        &dump(&["-f", target.to_str().unwrap()]),
        mount.path(),
        false,
        None,
    );
    let out = timed("dump -f on a full tmpfs", child);
    crate::sinks::refused_for_space("dump -f on a full tmpfs", &out, true);

    // `dump | restore` into a release that does not exist: the restore fails at once, and
    // the dump sees its reader gone.
    let mut producer = dump(&[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let consumer = scope
        .kpg_command(&["restore", "missing", "-n", &ns])
        .stdin(Stdio::from(producer.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let restored = timed("restore into a missing release", consumer);
    expect_code(&restored, 1);
    let dumped = timed("dump | that restore", producer);
    expect_code(&dumped, 1);
    // The server's side of each ended with them.
    crate::data::wait_until(BOUND, "the dump sessions end", || {
        transfer_sessions(&scope, &ns) == "0"
    });

    // pg_restore stops at once (a corrupt archive, then megabytes it never reads).
    let restore = |input: Vec<u8>| {
        let mut child = scope
            .kpg_command(&["restore", "s", "-n", &ns, "-d", "learnflow"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        // The writer may meet a closed pipe: that is the point.
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        timed("restore of a failing input", child)
    };
    let mut corrupt = b"PGDMP".to_vec();
    corrupt.extend(std::iter::repeat_n(0xA5u8, 8 << 20));
    let out = restore(corrupt);
    expect_code(&out, 1);
    assert!(
        out.stderr_text().contains("pg_restore"),
        "{}",
        out.describe()
    );

    // psql stops at its first failing line, in a script of several megabytes.
    let mut script = b"select * from no_such_table;\n".to_vec();
    for i in 0..200_000 {
        script.extend_from_slice(format!("insert into bulk values ({i}, 'x');\n").as_bytes());
    }
    let out = restore(script);
    expect_code(&out, 1);
    // psql's own words, unless the API server's reset of the stream (input still arriving
    // as psql exits) lost them: then the plugin says the command stopped reading early.
    assert!(
        out.stderr_text().contains("no_such_table")
            || out
                .stderr_text()
                .contains("stopped reading its input before the end"),
        "{}",
        out.describe()
    );
    crate::data::wait_until(BOUND, "the restore sessions end", || {
        transfer_sessions(&scope, &ns) == "0"
    });
    assert_eq!(
        crate::data::release_query(&scope, &ns, "s", "select count(*) from bulk"),
        "300000",
        "nothing was restored"
    );
}
