//! The Windows build (`x86_64-pc-windows-gnu`) run under Wine against the real control plane:
//! one release installed, checked, migrated and reached through its port-forward by the local
//! (Linux) psql, the way a Windows laptop would use it.
//!
//! The test builds `kubectl-pg.exe` itself (profile `cross`) into the cross builds' shared
//! target directory, `$KUBECTL_PG_CROSS_DIR/target` (default `/var/cache/kubectl-pg-cross`):
//! `.ci/cross` has built it already in CI, so there it only checks that it is fresh. Without
//! MinGW-w64 or Wine (`.ci/cross install` installs both) it fails in CI (`CI=true`) and prints
//! a loud SKIPPED line elsewhere.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::scope::Scope;
use crate::{expect_code, OutputExt};

const TARGET: &str = "x86_64-pc-windows-gnu";

/// Builds the Windows binary (a no-op when fresh) and returns its path.
fn windows_binary() -> Option<PathBuf> {
    for (program, package) in [
        ("x86_64-w64-mingw32-gcc", "gcc-mingw-w64-x86-64"),
        ("wine", "wine64"),
    ] {
        if !crate::on_path(program) {
            crate::skip_or_fail(
                "windows_binary_under_wine",
                &format!("{program} not found ({package})"),
            );
            return None;
        }
    }
    let target_dir = crate::cross_dir().join("target");
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--locked",
            "--profile",
            "cross",
            "--target",
            TARGET,
        ])
        .args(["--bin", "kubectl-pg"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .output()
        .expect("cargo runs");
    assert!(
        out.status.success(),
        "building the Windows binary failed:\n{}",
        out.stderr_text()
    );
    Some(target_dir.join(TARGET).join("cross").join("kubectl-pg.exe"))
}

/// `path` as Windows sees it under Wine (drive Z: is the Unix root).
fn z(path: &Path) -> String {
    format!("Z:{}", path.display()).replace('/', "\\")
}

struct Wine {
    exe: PathBuf,
    prefix: PathBuf,
}

impl Wine {
    /// The prefix (made by Wine on first use) with what Wine 8.0 lacks: `bcryptprimitives.dll`
    /// (see tests/e2e/wine/), without which no Rust program since 1.78 starts.
    fn new(exe: PathBuf) -> Wine {
        // A prefix of its own, kept between runs: making one costs seconds.
        let wine = Wine {
            exe,
            prefix: crate::cross_dir().join("wineprefix"),
        };
        let system32 = wine.prefix.join("drive_c/windows/system32");
        if !system32.is_dir() {
            let out = Command::new("wine")
                .args(["wineboot", "-i"])
                .env("WINEPREFIX", &wine.prefix)
                .env("WINEDEBUG", "-all")
                .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
                .stdin(Stdio::null())
                .output()
                .expect("wine runs");
            assert!(
                system32.is_dir(),
                "wineboot made no prefix:\n{}",
                out.describe()
            );
        }
        let dll = system32.join("bcryptprimitives.dll");
        if !dll.exists() {
            let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/wine");
            let out = Command::new("x86_64-w64-mingw32-gcc")
                .args(["-O2", "-shared", "-o"])
                .arg(&dll)
                .arg(source.join("bcryptprimitives.c"))
                .arg(source.join("bcryptprimitives.def"))
                .arg("-lbcrypt")
                .output()
                .expect("MinGW-w64's gcc runs");
            assert!(out.status.success(), "{}", out.describe());
        }
        wine
    }

    /// The Windows binary with no KUBECONFIG and no PATH of ours: only what a test gives it.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new("wine");
        command
            .arg(&self.exe)
            .args(args)
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // No Mono or Gecko install prompts; the binary needs neither.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            .env("NO_COLOR", "1")
            .env_remove("KUBECONFIG")
            .env_remove("WINEPATH")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str], kubeconfig: &str) -> Output {
        let mut command = self.command(args);
        command.env("KUBECONFIG", kubeconfig);
        finished(command)
    }

    /// `%USERPROFILE%` in the prefix, as a Unix path.
    fn profile(&self) -> PathBuf {
        let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
        self.prefix.join("drive_c/users").join(user)
    }
}

/// Runs `command` to its end (five minutes at most), stdout and stderr collected.
fn finished(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wine runs");
    crate::output_within(child, Duration::from_secs(300))
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", out.describe()))
}

/// Ctrl-C as Wine delivers it (SIGINT to the Windows process, which Wine turns into a
/// CTRL_C_EVENT), then the exit.
fn interrupt(child: Child) -> Output {
    let int = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(int.success());
    crate::output_within(child, Duration::from_secs(30))
}

/// Lines of a child's stdout, read on a thread, so a wait can have a deadline.
fn lines_of(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (send, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

#[test]
fn windows_binary_under_wine() {
    let Some(exe) = windows_binary() else { return };
    let scope = Scope::new("kpg-win");
    let ns = scope.ns.as_str();
    let plane = scope.plane;
    let wine = Wine::new(exe);
    let kubeconfig = z(&plane.kubeconfig);

    // `version -o json` that reached the control plane (its server version).
    let reached = |out: &Output| {
        expect_code(out, 0);
        let doc = json_of(out);
        assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(doc["server_version"], format!("v{}", plane.version));
    };
    reached(&wine.run(&["version", "-o", "json"], &kubeconfig));

    // KUBECONFIG is a list split on `;` (each entry holds a `:` after its drive letter): the
    // cluster and context in one file, the user's credentials in the other, merged.
    let admin: Value =
        serde_saphyr::from_str(&std::fs::read_to_string(&plane.kubeconfig).unwrap()).unwrap();
    let (a, b) = (scope.dir.path().join("a"), scope.dir.path().join("b"));
    let mut without_users = admin.clone();
    without_users["users"] = json!([]);
    std::fs::write(&a, without_users.to_string()).unwrap();
    let users = json!({"apiVersion": "v1", "kind": "Config", "users": admin["users"]});
    std::fs::write(&b, users.to_string()).unwrap();
    let merged = wine.run(&["version", "-o", "json"], &format!("{};{}", z(&a), z(&b)));
    reached(&merged);

    // No KUBECONFIG: %USERPROFILE%\.kube\config, as kubectl on Windows.
    let default = wine.profile().join(".kube");
    std::fs::create_dir_all(&default).unwrap();
    std::fs::copy(&plane.kubeconfig, default.join("config")).unwrap();
    let found = finished(wine.command(&["version", "-o", "json"]));
    std::fs::remove_file(default.join("config")).unwrap();
    reached(&found);

    // An exec credential plugin named without its extension is found as kubectl finds it
    // (PATHEXT): here a batch file, `kpg-token.cmd`, on the Windows PATH (WINEPATH).
    let token = scope.kubectl_ns(&["create", "token", "default", "--duration", "1h"]);
    assert!(token.status.success(), "{}", token.describe());
    let bin = scope.dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(
        bin.join("kpg-token.cmd"),
        format!(
            "@echo {{\"apiVersion\":\"client.authentication.k8s.io/v1\",\"kind\":\"ExecCredential\",\"status\":{{\"token\":\"{}\"}}}}\r\n",
            token.stdout_text().trim()
        ),
    )
    .unwrap();
    let mut plugin_config = without_users.clone();
    let user = admin["contexts"][0]["context"]["user"].clone();
    plugin_config["users"] = json!([{"name": user, "user": {"exec": {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "kpg-token",
        "interactiveMode": "Never",
    }}}]);
    let plugin_file = scope.dir.path().join("plugin-config");
    std::fs::write(&plugin_file, plugin_config.to_string()).unwrap();
    let mut command = wine.command(&["version", "-o", "json"]);
    command
        .env("KUBECONFIG", z(&plugin_file))
        .env("WINEPATH", z(&bin));
    let plugged = finished(command);
    reached(&plugged);

    let dry = wine.run(&["install", "pg", "-n", ns, "--dry-run"], &kubeconfig);
    expect_code(&dry, 0);
    assert!(
        dry.stdout_text().contains("kind: StatefulSet"),
        "{}",
        dry.describe()
    );

    let install = wine.run(
        &["install", "pg", "-n", ns, "--timeout", "180s", "-o", "json"],
        &kubeconfig,
    );
    expect_code(&install, 0);
    assert_eq!(
        json_of(&install)["phase"],
        "Healthy",
        "{}",
        install.describe()
    );

    let status = wine.run(&["status", "pg", "-n", ns, "-o", "json"], &kubeconfig);
    expect_code(&status, 0);
    let doc = json_of(&status);
    assert_eq!(doc["phase"], "Healthy", "{}", status.describe());
    assert_eq!(doc["database_accessible"], true, "{}", status.describe());

    let dsn = wine.run(&["dsn", "pg", "-n", ns], &kubeconfig);
    expect_code(&dsn, 0);
    assert!(
        dsn.stdout_text().starts_with("postgresql://postgres:"),
        "{}",
        dsn.describe()
    );
    assert!(
        dsn.stdout_text()
            .contains(&format!("@pg.{ns}.svc.cluster.local:5432/")),
        "{}",
        dsn.describe()
    );

    let up = wine.run(&["migrate", "up", "pg", "-n", ns], &kubeconfig);
    expect_code(&up, 0);
    let migrations = wine.run(
        &["migrate", "status", "pg", "-n", ns, "-o", "json"],
        &kubeconfig,
    );
    expect_code(&migrations, 0);
    let doc = json_of(&migrations);
    assert_eq!(doc["pending"], 0, "{}", migrations.describe());
    assert!(
        doc["applied"].as_u64().is_some_and(|n| n > 0),
        "{}",
        migrations.describe()
    );

    // logs -f ends with Ctrl-C: exit 130, as on Unix (an unhandled Ctrl-C would end it with
    // STATUS_CONTROL_C_EXIT).
    let mut command = wine.command(&["logs", "pg", "-n", ns, "-f", "--tail", "1"]);
    command.env("KUBECONFIG", &kubeconfig);
    let mut logs = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wine runs");
    let lines = lines_of(&mut logs);
    lines
        .recv_timeout(Duration::from_secs(120))
        .expect("logs -f prints the last line");
    expect_code(&interrupt(logs), 130);

    // psql --local finds `psql.exe` on the Windows PATH: a copy of kubectl-pg.exe stands in
    // for it (no Windows psql here), and answers `--version` as itself.
    std::fs::copy(&wine.exe, bin.join("psql.exe")).unwrap();
    let mut command = wine.command(&["psql", "pg", "-n", ns, "--local", "--", "--version"]);
    command
        .env("KUBECONFIG", &kubeconfig)
        .env("WINEPATH", z(&bin));
    let local = finished(command);
    expect_code(&local, 0);
    assert!(
        local.stdout_text().starts_with("kubectl-pg "),
        "{}",
        local.describe()
    );

    // port-forward listens on a Windows socket (Wine's, a real loopback port here); the
    // local psql connects through it with the DSN it prints.
    let mut command = wine.command(&["port-forward", "pg", "-n", ns, "--show-password"]);
    command.env("KUBECONFIG", &kubeconfig);
    let mut forward = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("wine runs");
    let lines = lines_of(&mut forward);
    let dsn = lines
        .recv_timeout(Duration::from_secs(120))
        .expect("port-forward prints its DSN");
    let psql = plane.postgres.join("clients/bin/psql");
    let sessions = Command::new(&psql)
        .args([
            dsn.as_str(),
            "-XAt",
            "-c",
            "select count(*) from kubectl_pg_migrations",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("psql runs");
    // Wine turns SIGINT into the console's CTRL_C_EVENT: the clean stop of Ctrl-C.
    let stopped = interrupt(forward);
    expect_code(&stopped, 0);
    assert!(
        stopped.stderr_text().contains("stopped forwarding"),
        "{}",
        stopped.describe()
    );
    assert!(sessions.status.success(), "{dsn}\n{}", sessions.describe());
    let applied: u64 = sessions.stdout_text().trim().parse().unwrap();
    assert!(applied > 0, "{}", sessions.describe());
}
