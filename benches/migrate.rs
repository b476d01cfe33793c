//! `cargo bench --bench migrate`: the engine against its floor.
//!
//! Applies 200 generated migrations to a fresh database with `kubectl-pg migrate up` (whole
//! process, end to end), and beside it the floor: one `psql` session replaying the same
//! statements in the same transactions (BEGIN, body, history INSERT, COMMIT per migration).
//! Also times `kubectl-pg --version`. Prints medians and the engine/floor ratio (target ≤ 1.3).

#[path = "../tests/e2e/pg.rs"]
#[allow(dead_code)]
mod pg;

#[allow(dead_code)]
mod common;
use common::median;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const MIGRATIONS: usize = 200;
const ROUNDS: usize = 7;

fn body(v: usize) -> String {
    format!(
        "CREATE TABLE bench_{v} (id serial PRIMARY KEY, payload text NOT NULL, created_at timestamptz DEFAULT now());\n\
         CREATE INDEX bench_{v}_created ON bench_{v} (created_at);\n\
         INSERT INTO bench_{v} (payload) SELECT md5(g::text) FROM generate_series(1, 20) g;\n"
    )
}

fn run(command: &mut Command) -> Duration {
    let started = Instant::now();
    let out = command.output().expect("command runs");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        command,
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn psql() -> std::path::PathBuf {
    let candidate = pg::bindir().join("psql");
    if candidate.exists() {
        candidate
    } else {
        "psql".into()
    }
}

fn floor_script(dir: &Path) -> std::path::PathBuf {
    let mut script = kubectl_pg::migration::history::Tables::in_schema("public").create_sql();
    script.push_str(";\n");
    for v in 1..=MIGRATIONS {
        let checksum = kubectl_pg::migration::source::checksum(&body(v));
        script.push_str(&format!(
            "BEGIN;\n{}INSERT INTO kubectl_pg_migrations (version, name, checksum, execution_ms, applied_by) \
             VALUES ({v}, 'bench', '{checksum}', 0, current_user);\nCOMMIT;\n",
            body(v)
        ));
    }
    let path = dir.join("floor.sql");
    std::fs::write(&path, script).unwrap();
    path
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: only prove it builds and starts.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let binary = env!("CARGO_BIN_EXE_kubectl-pg");
    let files = tempfile::tempdir().unwrap();
    for v in 1..=MIGRATIONS {
        std::fs::write(files.path().join(format!("{v:03}_bench.up.sql")), body(v)).unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    let script = floor_script(scratch.path());
    let dir = files.path().display().to_string();

    let mut engine = Vec::new();
    let mut floor = Vec::new();
    for _ in 0..ROUNDS {
        let db = pg::TestDb::new();
        engine.push(run(Command::new(binary)
            .args(["migrate", "up", "--dir", &dir, "--dsn", &db.dsn()])
            .env("NO_COLOR", "1")));
        assert_eq!(
            db.scalar("SELECT count(*) FROM kubectl_pg_migrations")
                .as_deref(),
            Some("200")
        );
        let db = pg::TestDb::new();
        floor.push(run(Command::new(psql())
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&script)
            .arg(db.dsn())));
        assert_eq!(
            db.scalar("SELECT count(*) FROM kubectl_pg_migrations")
                .as_deref(),
            Some("200")
        );
    }
    let mut version = Vec::new();
    for _ in 0..100 {
        version.push(run(Command::new(binary).arg("--version")));
    }
    let (e, f) = (median(engine), median(floor));
    println!("migrate up, {MIGRATIONS} migrations (median of {ROUNDS}):");
    println!(
        "  kubectl-pg migrate up   {:>8.1} ms",
        e.as_secs_f64() * 1e3
    );
    println!(
        "  psql floor              {:>8.1} ms",
        f.as_secs_f64() * 1e3
    );
    println!(
        "  ratio engine/floor      {:>8.2}  (target <= 1.30)",
        e.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "kubectl-pg --version (median of 100): {:.2} ms (target < 10 ms)",
        median(version).as_secs_f64() * 1e3
    );
}
