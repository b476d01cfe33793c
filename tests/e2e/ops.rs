//! Daily operations on the real control plane: `logs` (followed across restarts), `restart`,
//! `port-forward` (concurrent sessions, a dropped one, a replaced pod) and `report`.

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::scope::Scope;
use crate::{expect_code, OutputExt};

const TIMEOUT: &str = "120s";
const READY_LINE: &str = "database system is ready to accept connections";

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.describe()))
}

fn ok(out: Output) -> Output {
    assert!(out.status.success(), "{}", out.describe());
    out
}

fn jsonpath(scope: &Scope, what: &str, path: &str) -> String {
    ok(scope.kubectl_ns(&["get", what, "-o", &format!("jsonpath={path}")])).stdout_text()
}

fn install(scope: &Scope, release: &str) {
    let out = scope.kpg(&["install", release, "-n", &scope.ns, "--timeout", TIMEOUT]);
    expect_code(&out, 0);
}

/// A kubectl-pg run in the background whose stdout lines arrive on a channel.
pub(crate) struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub(crate) seen: Vec<String>,
}

impl Background {
    pub(crate) fn start(scope: &Scope, args: &[&str]) -> Background {
        let mut child = scope
            .kpg_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Background {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Reads lines until one satisfies `want`, failing after `within`.
    pub(crate) fn until(&mut self, within: Duration, what: &str, want: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + within;
        while !want(&self.seen) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!(
                    "no {what} within {within:?}; lines so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then the exit code.
    pub(crate) fn terminate(self) -> i32 {
        self.terminate_reading().0
    }

    /// SIGTERM, then the exit code and every line the command printed.
    fn terminate_reading(mut self) -> (i32, Vec<String>) {
        let code = self.stop();
        let mut seen = std::mem::take(&mut self.seen);
        // The reader ends at the end of stdout, which the exit closed.
        seen.extend(self.lines.iter());
        (code, seen)
    }

    fn stop(&mut self) -> i32 {
        self.signal("TERM")
    }

    /// Sends SIG`name`, then the exit code (-1 for a death by signal).
    fn signal(&mut self, name: &str) -> i32 {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            assert!(Instant::now() < deadline, "no exit 20s after SIG{name}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(lines: &[String], needle: &str) -> usize {
    lines.iter().filter(|l| l.contains(needle)).count()
}

/// Kills the postmaster in the pod: the node restarts the container in the same pod.
fn crash_server(scope: &Scope, pod: &str) {
    ok(scope.kubectl_ns(&[
        "exec",
        pod,
        "-c",
        "postgres",
        "--",
        "sh",
        "-c",
        "kill -9 $(head -1 \"$PGDATA/postmaster.pid\")",
    ]));
}

/// The established TCP connections to port 5432 in the pod's network namespace, as its kernel
/// lists them (`/proc/net/tcp` of a process exec'd there): pre-startup ones included, which
/// `pg_stat_activity` does not show.
fn server_connections(scope: &Scope, pod: &str) -> usize {
    let out = scope.kubectl_ns(&[
        "exec",
        pod,
        "-c",
        "postgres",
        "--",
        "cat",
        "/proc/net/tcp",
        "/proc/net/tcp6",
    ]);
    ok(out)
        .stdout_text()
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address ends in :1538 (5432), state 01 (ESTABLISHED).
            f.len() > 3 && f[1].ends_with(":1538") && f[3] == "01"
        })
        .count()
}

fn wait_pod(scope: &Scope, pod: &str, condition: &str) {
    ok(scope.kubectl_ns(&[
        "wait",
        &format!("pod/{pod}"),
        condition,
        "--timeout",
        TIMEOUT,
    ]));
}

#[test]
fn logs_follow_across_restarts_and_restart_keeps_the_data() {
    let scope = Scope::new("kpg-logs");
    let ns = scope.ns.as_str();
    install(&scope, "pg");

    let logs = scope.kpg(&["logs", "pg", "-n", ns]);
    expect_code(&logs, 0);
    assert!(
        logs.stdout_text().contains(READY_LINE),
        "{}",
        logs.describe()
    );
    let tail = scope.kpg(&["logs", "-n", ns, "--tail", "2", "--timestamps"]);
    expect_code(&tail, 0);
    let lines: Vec<String> = tail.stdout_text().lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "{}", tail.describe());
    assert!(
        lines.iter().all(|l| l.starts_with("20") && l.contains('T')),
        "{lines:?}"
    );
    let since = scope.kpg(&["logs", "-n", ns, "--since", "1h"]);
    assert!(
        since.stdout_text().contains(READY_LINE),
        "{}",
        since.describe()
    );

    // No restart yet: --previous is a clear message, exit 1.
    let previous = scope.kpg(&["logs", "-n", ns, "--previous"]);
    expect_code(&previous, 1);
    let err = previous.stderr_text();
    assert!(
        err.contains("no previous container") && err.contains("hint:"),
        "{}",
        previous.describe()
    );

    // Follow, with timestamps so repeats would show. The first start of the image prints the
    // ready line twice (its initdb server, then the real one): count from what is there.
    let n0 = count(
        &logs
            .stdout_text()
            .lines()
            .map(str::to_string)
            .collect::<Vec<_>>(),
        READY_LINE,
    );
    let mut follow = Background::start(&scope, &["logs", "pg", "-n", ns, "-f", "--timestamps"]);
    follow.until(Duration::from_secs(30), "ready line", |s| {
        count(s, READY_LINE) >= n0
    });

    // The server crashes and its container restarts in the same pod: followed.
    crash_server(&scope, "pg-0");
    wait_pod(
        &scope,
        "pg-0",
        "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
    );
    wait_pod(&scope, "pg-0", "--for=condition=Ready");
    follow.until(Duration::from_secs(60), "second ready line", |s| {
        count(s, READY_LINE) > n0
    });
    // The previous container's log can be read now.
    let previous = scope.kpg(&["logs", "-n", ns, "--previous"]);
    expect_code(&previous, 0);
    assert!(
        previous.stdout_text().contains(READY_LINE),
        "{}",
        previous.describe()
    );

    // Data written before a restart is there after it; the pod is a new one.
    ok(scope.kpg(&[
        "psql",
        "-n",
        ns,
        "--",
        "-c",
        "create table kept (v text); insert into kept values ('still here')",
    ]));
    let uid = jsonpath(&scope, "pod/pg-0", "{.metadata.uid}");
    let restart = scope.kpg(&[
        "restart",
        "pg",
        "-n",
        ns,
        "--timeout",
        TIMEOUT,
        "-o",
        "json",
    ]);
    expect_code(&restart, 0);
    let doc = json(&restart);
    assert_eq!(doc["kind"], "DeploymentStatus", "{doc}");
    assert_eq!(doc["phase"], "Healthy", "{doc}");
    assert_ne!(jsonpath(&scope, "pod/pg-0", "{.metadata.uid}"), uid);
    assert!(!jsonpath(
        &scope,
        "sts/pg",
        "{.spec.template.metadata.annotations.kubectl\\.kubernetes\\.io/restartedAt}"
    )
    .is_empty());
    let kept = scope.kpg(&["psql", "-n", ns, "--", "-At", "-c", "select v from kept"]);
    assert_eq!(
        kept.stdout_text().trim(),
        "still here",
        "{}",
        kept.describe()
    );

    // The follower went on with the new pod, and printed no line twice.
    follow.until(Duration::from_secs(60), "third ready line", |s| {
        count(s, READY_LINE) > n0 + 1
    });
    let mut sorted = follow.seen.clone();
    sorted.sort();
    let before = sorted.len();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        before,
        "a line came twice:\n{}",
        follow.seen.join("\n")
    );
    // A replaced pod has no previous container.
    let previous = scope.kpg(&["logs", "-n", ns, "--previous"]);
    expect_code(&previous, 1);
    drop(follow);

    // Following ends when the release is uninstalled.
    let mut follow = Background::start(&scope, &["logs", "pg", "-n", ns, "-f"]);
    follow.until(Duration::from_secs(30), "a line", |s| !s.is_empty());
    expect_code(&scope.kpg(&["uninstall", "pg", "-n", ns, "--yes"]), 0);
    let deadline = Instant::now() + Duration::from_secs(60);
    let code = loop {
        if let Some(status) = follow.child.try_wait().unwrap() {
            break status.code();
        }
        assert!(
            Instant::now() < deadline,
            "logs -f still runs after uninstall"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code, Some(0));
    drop(follow);

    // A release that does not exist.
    let ghost = scope.kpg(&["restart", "ghost", "-n", ns, "--timeout", "5s"]);
    expect_code(&ghost, 1);
    assert!(
        ghost.stderr_text().contains("not found"),
        "{}",
        ghost.describe()
    );
    let ghost = scope.kpg(&["logs", "ghost", "-n", ns]);
    expect_code(&ghost, 1);
}

/// The port printed on the first line: `postgresql://user:pw@127.0.0.1:PORT/db`.
fn dsn_port(dsn: &str) -> u16 {
    let after = dsn.rsplit_once('@').unwrap().1;
    let hostport = after.split('/').next().unwrap();
    hostport.rsplit_once(':').unwrap().1.parse().unwrap()
}

/// Runs `f` with `n` sessions open at once through `dsn`, on one runtime.
pub(crate) fn sessions<T>(
    dsn: &str,
    n: usize,
    f: impl AsyncFnOnce(Vec<tokio_postgres::Client>) -> T,
) -> T {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config: tokio_postgres::Config = dsn.parse().unwrap();
        let mut clients = Vec::new();
        for _ in 0..n {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect {dsn}: {e:?}"));
            tokio::spawn(connection);
            clients.push(client);
        }
        f(clients).await
    })
}

async fn pid(client: &tokio_postgres::Client) -> Result<i32, tokio_postgres::Error> {
    Ok(client
        .query_one("select pg_backend_pid()", &[])
        .await?
        .get(0))
}

#[test]
fn port_forward_serves_sessions_at_once_and_follows_the_pod() {
    let scope = Scope::new("kpg-pf");
    let ns = scope.ns.as_str();
    install(&scope, "pg");

    // A port asked for that is taken: exit 1, clearly.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let taken = scope.kpg(&["port-forward", "-n", ns, &port]);
    expect_code(&taken, 1);
    assert!(
        taken.stderr_text().contains("already in use"),
        "{}",
        taken.describe()
    );
    drop(busy);

    // Masked by default, and then no export line: it would set a password of asterisks.
    // The plain release's DSN says sslmode=disable (lib/pq refuses one without it).
    let mut masked = Background::start(&scope, &["port-forward", "pg", "-n", ns]);
    masked.until(Duration::from_secs(30), "the DSN", |s| !s.is_empty());
    let (code, lines) = masked.terminate_reading();
    assert_eq!(code, 0, "SIGTERM is a clean stop");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains(":********@127.0.0.1:") && lines[0].ends_with("?sslmode=disable"),
        "{lines:?}"
    );
    assert!(!lines.iter().any(|l| l.contains("export")), "{lines:?}");

    let mut forward =
        Background::start(&scope, &["port-forward", "pg", "-n", ns, "--show-password"]);
    forward.until(Duration::from_secs(30), "the export line", |s| s.len() >= 2);
    let dsn = forward.seen[0].clone();
    assert_eq!(forward.seen[1], format!("export DATABASE_URL='{dsn}'"));
    let password = String::from_utf8(base64_decode(&jsonpath(
        &scope,
        "secret/pg-credentials",
        "{.data.password}",
    )))
    .unwrap();
    assert!(dsn.contains(&password), "{dsn}");
    assert!(dsn_port(&dsn) > 0);

    // Three sessions at once; one of them dropped, the others go on; a new one opens.
    sessions(&dsn, 3, async |clients| {
        let mut pids = Vec::new();
        for c in &clients {
            pids.push(pid(c).await.unwrap());
        }
        let mut distinct = pids.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "{pids:?}");
        clients[0]
            .execute("select pg_terminate_backend($1)", &[&pids[2]])
            .await
            .unwrap();
        assert!(
            pid(&clients[2]).await.is_err(),
            "the dropped session is gone"
        );
        assert_eq!(pid(&clients[0]).await.unwrap(), pids[0]);
        assert_eq!(pid(&clients[1]).await.unwrap(), pids[1]);
    });
    sessions(&dsn, 1, async |clients| pid(&clients[0]).await.unwrap());

    // The pod is replaced: the same listener reaches the new one.
    let uid = jsonpath(&scope, "pod/pg-0", "{.metadata.uid}");
    ok(scope.kubectl_ns(&["delete", "pod", "pg-0", "--timeout", TIMEOUT]));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = scope.kubectl_ns(&["get", "pod", "pg-0", "-o", "jsonpath={.metadata.uid}"]);
        if now.status.success() && now.stdout_text() != uid {
            break;
        }
        assert!(Instant::now() < deadline, "no new pod");
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_pod(&scope, "pg-0", "--for=condition=Ready");
    let started: String = sessions(&dsn, 2, async |clients| {
        let a = clients[0]
            .query_one("select pg_postmaster_start_time()::text", &[])
            .await
            .unwrap();
        pid(&clients[1]).await.unwrap();
        a.get(0)
    });
    assert!(!started.is_empty());

    // The server crashes and its container restarts in the same pod (same UID): the idle
    // SPDY sessions kept for the next connections still lead to the pod, and to the new server.
    crash_server(&scope, "pg-0");
    wait_pod(
        &scope,
        "pg-0",
        "--for=jsonpath={.status.containerStatuses[0].restartCount}=1",
    );
    wait_pod(&scope, "pg-0", "--for=condition=Ready");
    let restarted: String = sessions(&dsn, 2, async |clients| {
        pid(&clients[1]).await.unwrap();
        clients[0]
            .query_one("select pg_postmaster_start_time()::text", &[])
            .await
            .unwrap()
            .get(0)
    });
    assert_ne!(restarted, started, "a session of the restarted server");

    // Connections stop arriving: the listener holds no connection to the server open (its
    // idle sessions end at the node, not at the server).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = server_connections(&scope, "pg-0");
        if held == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{held} connections still held by an idle port-forward"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(forward.terminate(), 0);

    // An application user's DSN comes from its Secret; a missing one is exit 1 with a hint.
    ok(scope.kubectl_ns(&[
        "create",
        "secret",
        "generic",
        "pg-user-app",
        "--type",
        "kubernetes.io/basic-auth",
        "--from-literal=username=app",
        "--from-literal=password=app-password-0123456789",
        "--from-literal=database=learnflow",
    ]));
    let mut app = Background::start(&scope, &["port-forward", "-n", ns, "--db-user", "app"]);
    app.until(Duration::from_secs(30), "the DSN", |s| !s.is_empty());
    assert!(
        app.seen[0].starts_with("postgresql://app:********@127.0.0.1:"),
        "{:?}",
        app.seen
    );
    assert!(
        app.seen[0].ends_with("/learnflow?sslmode=disable"),
        "{:?}",
        app.seen
    );
    drop(app);
    let mut doc = Background::start(
        &scope,
        &["port-forward", "-n", ns, "-o", "json", "--db-user", "app"],
    );
    doc.until(Duration::from_secs(30), "the document", |s| {
        s.iter().any(|l| l == "}")
    });
    let doc: Value = serde_json::from_str(&doc.seen.join("\n")).unwrap();
    assert_eq!(doc["kind"], "DatabaseConnection", "{doc}");
    assert_eq!(doc["username"], "app", "{doc}");
    assert_eq!(doc["password"], "********", "{doc}");
    assert_eq!(doc["host"], "127.0.0.1", "{doc}");
    let ghost = scope.kpg(&["port-forward", "-n", ns, "--db-user", "ghost"]);
    expect_code(&ghost, 1);
    assert!(
        ghost.stderr_text().contains("user create ghost"),
        "{}",
        ghost.describe()
    );

    // No ready pod: exit 8.
    ok(scope.kubectl_ns(&["scale", "sts/pg", "--replicas=0"]));
    ok(scope.kubectl_ns(&["wait", "pod/pg-0", "--for=delete", "--timeout", TIMEOUT]));
    let none = scope.kpg(&["port-forward", "-n", ns]);
    expect_code(&none, 8);
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap()
}

/// Every file under `dir`, by path relative to it.
fn files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// A password that every encoding changes: quotes, backslashes, `%`, `@`, `:`, `#`, spaces,
/// UTF-8.
const NASTY_PASSWORD: &str = r#"Quote'Back\slash "dq" 100%@h:5#é''\\end"#;

/// Every form a password can leak in: clear, SQL-quoted (standard and E''), base64 (both
/// alphabets, padded or not, and of `user:password` as a basic-auth header holds it), and
/// percent-encoded as a DSN's userinfo.
fn encodings(user: &str, password: &str) -> Vec<(&'static str, String)> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    use base64::Engine;
    let percent: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    vec![
        ("clear", password.to_string()),
        ("sql", password.replace('\'', "''")),
        (
            "sql E''",
            password.replace('\\', "\\\\").replace('\'', "''"),
        ),
        ("base64", STANDARD.encode(password)),
        ("base64 unpadded", STANDARD_NO_PAD.encode(password)),
        ("base64url", URL_SAFE.encode(password)),
        ("base64url unpadded", URL_SAFE_NO_PAD.encode(password)),
        ("basic auth", STANDARD.encode(format!("{user}:{password}"))),
        ("percent-encoded", percent),
    ]
}

/// Fails when `text` holds `password` in any of its [`encodings`].
#[track_caller]
fn assert_no_password(what: &str, text: &str, user: &str, password: &str) {
    for (form, encoded) in encodings(user, password) {
        assert!(
            !text.contains(&encoded),
            "{what} holds the password ({form}: {encoded:?}):\n{text}"
        );
    }
}

/// The log holds `n` lines of the server's `leaked …`, each with the password redacted.
#[track_caller]
fn assert_leaks_redacted(log: &str, n: usize) {
    let leaked: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("LOG:  leaked "))
        .collect();
    assert_eq!(leaked.len(), n, "{log}");
    assert!(leaked.iter().all(|l| l.contains("[REDACTED]")), "{log}");
}

/// Install with a password full of quotes and backslashes, put it in the server's log in every
/// encoding, then: the report's every file, `logs`, and the hint of a crash loop whose log
/// lines all hold it show none of them.
#[test]
fn report_bundles_the_release_without_a_password() {
    let scope = Scope::new("kpg-report");
    let ns = scope.ns.as_str();
    let out = scope.kpg_stdin(
        &[
            "install",
            "pg",
            "-n",
            ns,
            "--migrate",
            "--password-stdin",
            "--timeout",
            TIMEOUT,
        ],
        &format!("{NASTY_PASSWORD}\n"),
    );
    expect_code(&out, 0);
    let password = String::from_utf8(base64_decode(&jsonpath(
        &scope,
        "secret/pg-credentials",
        "{.data.password}",
    )))
    .unwrap();
    assert_eq!(password, NASTY_PASSWORD);
    assert_no_password("install's output", &out.describe(), "postgres", &password);
    // An application user's Secret, labelled as the release's.
    let app_password = "app-user-password-9f8e7d6c5b";
    ok(scope.kubectl_ns(&[
        "create",
        "secret",
        "generic",
        "pg-user-app",
        "--type",
        "kubernetes.io/basic-auth",
        "--from-literal=username=app",
        &format!("--from-literal=password={app_password}"),
    ]));
    ok(scope.kubectl_ns(&[
        "label",
        "secret",
        "pg-user-app",
        "app.kubernetes.io/instance=pg",
        "app.kubernetes.io/managed-by=kubectl-pg",
    ]));
    // The password in the server's log in every form, as careless statements would put it.
    let forms = encodings("postgres", &password);
    let raise: String = forms
        .iter()
        .map(|(_, f)| format!("DO $$ BEGIN RAISE LOG 'leaked %', $kpg${f}$kpg$; END $$;\n"))
        .collect();
    ok(scope.kpg_stdin(&["psql", "-n", ns], &raise));

    let work = tempfile::tempdir().unwrap();
    let report = scope
        .kpg_command(&["report", "-n", ns])
        .current_dir(work.path())
        .output()
        .unwrap();
    expect_code(&report, 0);
    assert!(
        !report.stderr_text().contains("not collected"),
        "a healthy release is reported whole: {}",
        report.describe()
    );
    let name = report.stdout_text().trim().to_string();
    assert!(
        name.starts_with("report-pg-") && name.ends_with("Z.tar.gz"),
        "{}",
        report.describe()
    );
    let archive = work.path().join(&name);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&archive).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(
        std::fs::read_dir(work.path()).unwrap().count(),
        1,
        "no temporary file left"
    );
    let unpacked = tempfile::tempdir().unwrap();
    let tar = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(unpacked.path())
        .output()
        .unwrap();
    assert!(tar.status.success(), "{}", tar.describe());
    let root = unpacked.path().join(name.trim_end_matches(".tar.gz"));
    let all = files(&root);
    let text = |path: &str| -> String {
        let (_, content) = all.iter().find(|(p, _)| p == path).unwrap_or_else(|| {
            panic!(
                "no {path} in {:?}",
                all.iter().map(|(p, _)| p).collect::<Vec<_>>()
            )
        });
        String::from_utf8_lossy(content).into_owned()
    };

    // No password anywhere, in any form.
    for (path, content) in &all {
        let content = String::from_utf8_lossy(content);
        assert_no_password(path, &content, "postgres", &password);
        assert_no_password(path, &content, "app", app_password);
    }
    assert_no_password("report's output", &report.describe(), "postgres", &password);
    assert_leaks_redacted(&text("logs/pg-0.log"), forms.len());
    let logs = scope.kpg(&["logs", "pg", "-n", ns]);
    expect_code(&logs, 0);
    assert_no_password("logs", &logs.describe(), "postgres", &password);
    assert_leaks_redacted(&logs.stdout_text(), forms.len());

    assert!(text("objects/statefulset.yaml").contains("kind: StatefulSet"));
    assert!(!text("objects/statefulset.yaml").contains("managedFields"));
    let services = text("objects/services.yaml");
    assert!(
        services.contains("name: pg\n") && services.contains("name: pg-hl"),
        "{services}"
    );
    assert!(text("objects/pvc.yaml").contains("name: data-pg-0"));
    assert!(text("objects/pods.yaml").contains("name: pg-0"));
    let secrets = text("objects/secrets.yaml");
    assert!(
        secrets.contains("name: pg-credentials") && secrets.contains("name: pg-user-app"),
        "{secrets}"
    );
    assert!(
        secrets.contains("password:"),
        "the keys are listed: {secrets}"
    );
    assert!(text("events.txt").contains("REASON"));
    let logs = text("logs/pg-0.log");
    assert!(logs.contains(READY_LINE), "{logs}");
    assert!(text("logs/pg-0.previous.log.missing.txt").contains("no previous container"));
    let status: Value = serde_json::from_str(&text("status.json")).unwrap();
    assert_eq!(status["kind"], "DeploymentStatus");
    assert_eq!(status["phase"], "Healthy");
    let settings = text("database/pg_settings.tsv");
    assert!(
        settings.starts_with("name\tsetting\t") && settings.contains("\nmax_connections\t"),
        "{settings}"
    );
    let activity = text("database/pg_stat_activity.tsv");
    assert!(
        activity.contains("application_name") && activity.contains("kubectl-pg"),
        "{activity}"
    );
    assert!(
        !activity.contains("\tquery\t") && !activity.contains("pg_stat_activity ORDER"),
        "{activity}"
    );
    let migrations: Value = serde_json::from_str(&text("database/migrations.json")).unwrap();
    assert_eq!(migrations["kind"], "MigrationStatus");
    assert_eq!(migrations["applied"], 6);
    let versions: Value = serde_json::from_str(&text("versions.json")).unwrap();
    assert!(
        versions["kubernetes_server"]
            .as_str()
            .unwrap()
            .starts_with('v'),
        "{versions}"
    );
    assert!(
        versions["postgresql"]
            .as_str()
            .unwrap()
            .starts_with("PostgreSQL 18"),
        "{versions}"
    );
    assert_eq!(versions["plugin"], env!("CARGO_PKG_VERSION"));
    assert!(text("README.txt").contains("database/pg_settings.tsv"));

    // -f names the file; a release that does not exist writes nothing.
    let chosen = work.path().join("chosen.tar.gz");
    let out = scope.kpg(&["report", "pg", "-n", ns, "-f", chosen.to_str().unwrap()]);
    expect_code(&out, 0);
    assert!(chosen.is_file());
    let ghost = scope.kpg(&[
        "report",
        "ghost",
        "-n",
        ns,
        "-f",
        work.path().join("g.tar.gz").to_str().unwrap(),
    ]);
    expect_code(&ghost, 1);
    assert!(!work.path().join("g.tar.gz").exists());

    // A crash loop whose every log line holds the password in every form (the line prefix),
    // the server failing on a library that does not exist: restart's hint quotes the last
    // lines, and `logs --previous` shows them.
    let prefix: String = forms
        .iter()
        .map(|(_, f)| f.replace('%', "%%") + " ")
        .collect();
    ok(scope.kpg_stdin(
        &["psql", "-n", ns],
        &format!(
            "ALTER SYSTEM SET log_line_prefix = $kpg${prefix}$kpg$;\n\
             ALTER SYSTEM SET shared_preload_libraries = 'kpg_no_such_library';\n"
        ),
    ));
    crash_server(&scope, "pg-0");
    wait_pod(&scope, "pg-0", "--for=condition=Ready=false");
    let restart = scope.kpg(&["restart", "pg", "-n", ns, "--timeout", TIMEOUT]);
    expect_code(&restart, 5);
    let err = restart.stderr_text();
    assert!(
        err.contains("hint: log: [REDACTED]") && err.contains("kpg_no_such_library"),
        "{}",
        restart.describe()
    );
    assert_no_password("restart's hint", &restart.describe(), "postgres", &password);
    let previous = scope.kpg(&["logs", "pg", "-n", ns, "--previous"]);
    expect_code(&previous, 0);
    assert!(
        previous.stdout_text().contains("kpg_no_such_library"),
        "{}",
        previous.describe()
    );
    assert_no_password(
        "logs --previous",
        &previous.describe(),
        "postgres",
        &password,
    );
}

#[test]
fn port_forward_loses_only_the_connection_whose_stream_is_cut() {
    let scope = Scope::new("kpg-pfcut");
    let ns = scope.ns.as_str();
    install(&scope, "pg");
    let (proxy, kubeconfig) = crate::proxy::in_front_of(&scope);
    // A listener through the proxy, and its DSN.
    let listen = || {
        let args = [
            "port-forward",
            "pg",
            "-n",
            ns,
            "127.0.0.1:0",
            "--show-password",
        ];
        let mut forward = Background::start(
            &scope,
            &[&args[..], &["--kubeconfig", &kubeconfig]].concat(),
        );
        forward.until(Duration::from_secs(30), "the DSN", |s| !s.is_empty());
        let dsn = forward.seen[0].clone();
        (forward, dsn)
    };
    let (forward, dsn) = listen();
    assert_ne!(dsn_port(&dsn), 0);
    sessions(&dsn, 3, async |clients| {
        let mut pids = Vec::new();
        for c in &clients {
            pids.push(pid(c).await.unwrap());
        }
        // The next byte on any stream cuts that stream: only the third session talks.
        proxy.drop_upgraded_after(1);
        assert!(
            pid(&clients[2]).await.is_err(),
            "the cut stream ends its session"
        );
        proxy.clear_faults();
        assert_eq!(pid(&clients[0]).await.unwrap(), pids[0]);
        assert_eq!(pid(&clients[1]).await.unwrap(), pids[1]);
    });
    // The listener still serves new connections.
    sessions(&dsn, 2, async |clients| {
        pid(&clients[0]).await.unwrap();
        pid(&clients[1]).await.unwrap();
    });
    let upgrades = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.path_and_query.contains("/portforward"))
            .map(|r| r.method.clone())
            .collect::<Vec<_>>()
    };
    // Short connections one after another go over SPDY (POST) and reuse the session the
    // previous one finished with, rather than upgrading a request each (a session is returned,
    // and a connection's end noted, a moment after the client closes, so the next one may
    // still open its own, or a WebSocket).
    let before = upgrades().len();
    for _ in 0..10 {
        sessions(&dsn, 1, async |clients| pid(&clients[0]).await.unwrap());
    }
    let all = upgrades();
    let new = &all[before..];
    assert!(new.len() <= 7, "10 connections in turn took {new:?}");
    assert!(new.contains(&"POST".to_string()), "{new:?}");
    // An idle SPDY session (past two ping periods) is kept: the node answers the pings.
    let before = upgrades().len();
    idle_then_query(&dsn);
    assert!(upgrades()[before..].iter().all(|m| m == "POST"));
    // The path goes silent (a proxy that stops passing bytes, a host gone): the session is
    // pinged after 5-10 s of silence and the connection ends 5 s later, rather than never.
    frozen_session_ends(&proxy, &dsn);
    proxy.clear_faults();
    assert_eq!(forward.terminate(), 0);

    // Where a SPDY upgrade is refused (a proxy that passes only WebSocket), the connection
    // goes over a WebSocket, and so do the next ones, without trying SPDY again. A first
    // connection goes over a WebSocket anyway (it is expected to stay).
    proxy.clear_requests();
    proxy.fail_next(1, 400, crate::proxy::Matcher::new("POST", "/portforward"));
    let (ws, dsn) = listen();
    // Short connections in turn until one tries SPDY (a connection's end is noted a moment
    // after the client sees it, so the next may not know yet).
    let mut connections = 0;
    while !upgrades().contains(&"POST".to_string()) {
        assert!(connections < 10, "SPDY never tried: {:?}", upgrades());
        sessions(&dsn, 1, async |clients| pid(&clients[0]).await.unwrap());
        connections += 1;
    }
    sessions(&dsn, 2, async |clients| {
        pid(&clients[0]).await.unwrap();
        pid(&clients[1]).await.unwrap();
    });
    let methods = upgrades();
    assert_eq!(
        methods.iter().filter(|m| *m == "POST").count(),
        1,
        "one refused SPDY upgrade, never tried again: {methods:?}"
    );
    assert_eq!(
        methods.iter().filter(|m| *m == "GET").count(),
        connections + 2,
        "a WebSocket per connection: {methods:?}"
    );
    // The same on a WebSocket: idle is kept, silent ends.
    idle_then_query(&dsn);
    frozen_session_ends(&proxy, &dsn);
    proxy.clear_faults();
    assert_eq!(ws.terminate(), 0);
}

/// A session idle for 12 s (the forwarder pings after 5-10 s of quiet and gives up 5 s
/// later) answers its next query.
fn idle_then_query(dsn: &str) {
    sessions(dsn, 1, async |clients| {
        let first = pid(&clients[0]).await.unwrap();
        // Idleness is what is tested here: no condition to wait for.
        tokio::time::sleep(Duration::from_secs(12)).await;
        assert_eq!(pid(&clients[0]).await.unwrap(), first);
    });
}

/// Upgraded streams frozen by the proxy: the session's query ends in an error within 9-30 s.
fn frozen_session_ends(proxy: &crate::proxy::Proxy, dsn: &str) {
    sessions(dsn, 1, async |clients| {
        pid(&clients[0]).await.unwrap();
        proxy.freeze_upgraded();
        let asked = Instant::now();
        assert!(pid(&clients[0]).await.is_err(), "the silent session ends");
        let waited = asked.elapsed();
        assert!(
            waited >= Duration::from_secs(9) && waited < Duration::from_secs(30),
            "{waited:?}"
        );
    });
}

#[test]
fn restart_replaces_a_crash_looping_pod_and_reports_why_it_fails() {
    let scope = Scope::new("kpg-rsfail");
    let ns = scope.ns.as_str();
    install(&scope, "pg");
    // A setting the server refuses, kept on the volume: every start fails from now on.
    ok(scope.kubectl_ns(&[
        "exec",
        "pg-0",
        "-c",
        "postgres",
        "--",
        "sh",
        "-c",
        "echo 'no_such_setting = 1' >> \"$PGDATA/postgresql.conf\"",
    ]));
    crash_server(&scope, "pg-0");
    wait_pod(&scope, "pg-0", "--for=condition=Ready=false");
    let uid = jsonpath(&scope, "pod/pg-0", "{.metadata.uid}");
    // The pod is not Ready, which a StatefulSet never replaces: restart deletes it, and the
    // new pod's failure is diagnosed with the server's own words.
    let restart = scope.kpg(&["restart", "pg", "-n", ns, "--timeout", TIMEOUT]);
    expect_code(&restart, 5);
    let err = restart.stderr_text();
    assert!(err.contains("deleted pod pg-0"), "{}", restart.describe());
    assert!(err.contains("no_such_setting"), "{}", restart.describe());
    assert_ne!(jsonpath(&scope, "pod/pg-0", "{.metadata.uid}"), uid);
    // The log of the failed start is there for the asking.
    let previous = scope.kpg(&["logs", "pg", "-n", ns, "--previous"]);
    expect_code(&previous, 0);
    assert!(
        previous.stdout_text().contains("no_such_setting"),
        "{}",
        previous.describe()
    );

    // A report of the broken release: what the database cannot give is a note, not a failure.
    let bundle = scope.dir.path().join("broken.tar.gz");
    let report = scope.kpg(&["report", "pg", "-n", ns, "-f", bundle.to_str().unwrap()]);
    expect_code(&report, 0);
    assert!(
        report.stderr_text().contains("not collected: database"),
        "{}",
        report.describe()
    );
    let listing = std::process::Command::new("tar")
        .arg("-tzf")
        .arg(&bundle)
        .output()
        .unwrap();
    let listing = listing.stdout_text();
    assert!(listing.contains("/logs/pg-0.previous.log\n"), "{listing}");
    assert!(
        listing.contains("/status.json\n") && !listing.contains("pg_settings"),
        "{listing}"
    );
}

/// `logs -f` started while the server container cannot start yet (its Secret lacks a key)
/// waits for it, then follows it once the kubelet starts it.
#[test]
fn logs_follow_waits_for_a_container_that_has_not_started() {
    let scope = Scope::new("kpg-logs-wait");
    let ns = scope.ns.as_str();
    install(&scope, "pg");
    let password = jsonpath(&scope, "secret/pg-credentials", "{.data.password}");
    ok(scope.kubectl_ns(&[
        "patch",
        "secret",
        "pg-credentials",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/data/password"}]"#,
    ]));
    ok(scope.kubectl_ns(&["delete", "pod", "pg-0", "--wait=true"]));
    let not_created =
        "--for=jsonpath={.status.containerStatuses[0].state.waiting.reason}=CreateContainerConfigError";
    wait_pod(&scope, "pg-0", not_created);
    // Without -f: the kubelet's reason, exit 1, and where to look.
    let now = scope.kpg(&["logs", "pg", "-n", ns]);
    expect_code(&now, 1);
    let err = now.stderr_text();
    assert!(
        err.contains("waiting to start: CreateContainerConfigError") && err.contains("hint:"),
        "{}",
        now.describe()
    );
    let mut follow = Background::start(&scope, &["logs", "pg", "-n", ns, "-f"]);
    // Still waiting, not failed: the container has not started, and the follower lives on.
    wait_pod(&scope, "pg-0", not_created);
    assert!(
        follow.child.try_wait().unwrap().is_none(),
        "logs -f gave up on a container that has not started: {:?}",
        follow.seen
    );
    ok(scope.kubectl_ns(&[
        "patch",
        "secret",
        "pg-credentials",
        "--type=merge",
        "-p",
        &format!(r#"{{"data":{{"password":"{password}"}}}}"#),
    ]));
    follow.until(Duration::from_secs(90), "ready line", |s| {
        count(s, READY_LINE) >= 1
    });
    // Ctrl-C ends following with the documented 130 (an exit, as on Windows, where Ctrl-C is
    // no signal), not a death by SIGINT.
    assert_eq!(follow.signal("INT"), 130);
}
