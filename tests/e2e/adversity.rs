//! What an unlucky or impatient user does to the commands that write, on one release: `report`,
//! `logs` and `dsn` with stdout on a full device or a full disk; SIGINT and SIGTERM at the steps
//! of `restart`, `user create` and `rotate-password` (each step held at the fault-injecting
//! proxy, or seen on stderr, before the signal); and two runs at once of `restart` and of
//! `user create` with one name.

use std::process::{Child, Output, Stdio};
use std::time::Duration;

use base64::Engine;

use crate::cluster::{try_connect, PortForward};
use crate::proxy::{self, Matcher, Proxy};
use crate::scope::Scope;
use crate::sinks;
use crate::{expect_code, output_within, OutputExt};

/// How long any run here may take: a restart waits for a new pod, the rest for a few answers.
const BOUND: Duration = Duration::from_secs(120);

/// How long a run may take to exit once signalled at a wait.
const AT_ONCE: Duration = Duration::from_secs(10);

const RELEASE: &str = "adv";

struct Release<'a> {
    scope: &'a Scope,
    ns: String,
}

impl Release<'_> {
    /// `kubectl pg ARGS -n NS` with extra arguments (the proxy's kubeconfig).
    fn command(&self, args: &[&str], extra: &[&str]) -> std::process::Command {
        let mut all = args.to_vec();
        all.extend(["-n", &self.ns]);
        all.extend_from_slice(extra);
        self.scope.kpg_command(&all)
    }

    fn spawn(&self, args: &[&str], extra: &[&str]) -> Child {
        self.command(args, extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        output_within(self.spawn(args, &[]), BOUND)
    }

    fn secret(&self, name: &str, key: &str) -> Option<String> {
        let out = self.scope.kubectl_ns(&[
            "get",
            "secret",
            name,
            "--ignore-not-found",
            "-o",
            &format!("jsonpath={{.data.{key}}}"),
        ]);
        expect_code(&out, 0);
        let encoded = out.stdout_text();
        (!encoded.trim().is_empty()).then(|| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .unwrap();
            String::from_utf8(bytes).unwrap()
        })
    }

    fn roles_named(&self, name: &str) -> String {
        crate::data::release_query(
            self.scope,
            &self.ns,
            RELEASE,
            &format!("select count(*) from pg_roles where rolname = '{name}'"),
        )
    }

    /// Logs in as `user` with the password its Secret holds now, through a real `kubectl
    /// port-forward`.
    fn login_with_secret(&self, user: &str, secret: &str) -> Result<(), String> {
        let password = self
            .secret(secret, "password")
            .expect("the Secret's password");
        let forward = PortForward::start(self.scope, &self.ns, &format!("{RELEASE}-0"));
        try_connect(&format!(
            "postgresql://{user}:{}@{}/learnflow?sslmode=disable",
            kubectl_pg::database::connection::encode(&password),
            forward.addr
        ))
    }

    /// Runs `args` through `proxy` with the requests `held` (method, path) matches held there;
    /// once one is, sends `signal`. A run signalled at a wait exits before the request is let go
    /// (within [`AT_ONCE`]); one signalled in the middle of a write waits for it.
    fn signalled_while_held(
        &self,
        proxy: &Proxy,
        kubeconfig: &str,
        args: &[&str],
        held: (&str, &str),
        signal: &str,
        exits_at_once: bool,
    ) -> Output {
        // No method: any (port-forward is a WebSocket GET or a SPDY POST).
        let (method, path) = held;
        proxy.clear_requests();
        proxy.hang(match method {
            "" => Matcher::path(path),
            _ => Matcher::new(method, path),
        });
        let child = self.spawn(args, &["--kubeconfig", kubeconfig]);
        let arrived = proxy.wait_for(BOUND, |r| {
            r.iter().any(|r| {
                (method.is_empty() || r.method == method) && r.path_and_query.contains(path)
            })
        });
        assert!(arrived, "{args:?} never sent {held:?}");
        signal_pid(child.id(), signal);
        let out = if exits_at_once {
            let out = output_within(child, AT_ONCE);
            proxy.clear_hang();
            out
        } else {
            proxy.clear_hang();
            output_within(child, BOUND)
        };
        proxy.clear_faults();
        out
    }
}

fn signal_pid(pid: u32, signal: &str) {
    let sent = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn full_outputs_signals_and_twin_runs() {
    let scope = Scope::new("kpg-adversity");
    let release = Release {
        scope: &scope,
        ns: scope.ns.clone(),
    };
    crate::data::installed(crate::data::spawn_install(
        &scope,
        &release.ns,
        RELEASE,
        &[],
    ));

    full_outputs(&release);
    let (proxy, kubeconfig) = proxy::in_front_of(&scope);
    restart_interrupted(&release, &proxy, &kubeconfig);
    user_create_interrupted(&release, &proxy, &kubeconfig);
    rotation_interrupted(&release, &proxy, &kubeconfig);
    drop(proxy);
    twin_runs(&release);
}

/// `report`, `logs` and `dsn` whose stdout is a full device, or a file on a full tmpfs (and
/// `report -f` into that tmpfs): exit 1 with the reason, within the bound, and no report file
/// left behind; `report -f` onto the device writes through it and leaves it a device.
fn full_outputs(release: &Release) {
    let commands: [&[&str]; 5] = [
        &["report", RELEASE, "-f", "-"],
        &["logs", RELEASE],
        &["logs", RELEASE, "-f"],
        &["dsn", RELEASE],
        &["dsn", RELEASE, "--format", "env"],
    ];
    let dev = tempfile::tempdir().unwrap();
    if let Some(full) = sinks::full_device(dev.path()) {
        for args in commands {
            let child = release
                .command(args, &[])
                .stdin(Stdio::null())
                .stdout(sinks::open(&full))
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let out = output_within(child, BOUND);
            sinks::refused_for_space(&format!("{args:?} > a full device"), &out, false);
        }
        let out = release.run(&["report", RELEASE, "-f", full.to_str().unwrap()]);
        expect_code(&out, 1);
        use std::os::unix::fs::FileTypeExt;
        assert!(
            std::fs::metadata(&full)
                .unwrap()
                .file_type()
                .is_char_device(),
            "report -f onto a device left it a device"
        );
    }

    for args in commands {
        let mount = tempfile::tempdir().unwrap();
        let child =
            sinks::on_full_tmpfs(&release.command(args, &[]), mount.path(), true, Some("out"));
        let out = output_within(child, BOUND);
        if !sinks::refused_for_space(&format!("{args:?} > a full tmpfs"), &out, false) {
            return;
        }
    }
    let mount = tempfile::tempdir().unwrap();
    let target = mount.path().join("r.tar.gz");
    let report = release.command(&["report", RELEASE, "-f", target.to_str().unwrap()], &[]);
    let out = output_within(
        sinks::on_full_tmpfs(&report, mount.path(), true, None),
        BOUND,
    );
    sinks::refused_for_space("report -f into a full tmpfs", &out, true);
}

/// `restart`: SIGINT while its annotation is held (exit 130 at once, nothing changed), SIGTERM
/// while it waits for the new pod (exit 143 at once, the restart goes on); a rerun restarts and
/// the Secret's password logs in.
fn restart_interrupted(release: &Release, proxy: &Proxy, kubeconfig: &str) {
    let template = |r: &Release| {
        let out = r.scope.kubectl_ns(&[
            "get",
            &format!("sts/{RELEASE}"),
            "-o",
            "jsonpath={.spec.template.metadata.annotations}",
        ]);
        expect_code(&out, 0);
        out.stdout_text()
    };
    let before = template(release);
    let out = release.signalled_while_held(
        proxy,
        kubeconfig,
        &["restart", RELEASE],
        ("PATCH", &format!("/statefulsets/{RELEASE}")),
        "INT",
        true,
    );
    expect_code(&out, 130);
    assert!(
        out.stderr_text().contains("interrupted"),
        "{}",
        out.describe()
    );

    let args = ["restart", RELEASE, "-n", &release.ns];
    let (code, stderr) =
        crate::upgrade::interrupted_at(release.scope, &args, "restarting release", "TERM");
    assert_eq!(code, Some(143), "{stderr}");
    assert!(
        stderr.contains("is restarting in the cluster all the same"),
        "{stderr}"
    );
    assert_ne!(template(release), before, "the annotation was written");

    let out = release.run(&["restart", RELEASE]);
    expect_code(&out, 0);
    release
        .login_with_secret("postgres", &format!("{RELEASE}-credentials"))
        .unwrap();
}

/// `user create`: SIGTERM while its session's port-forward is held (exit 143 at once, nothing
/// made); SIGINT while its Secret is held, after the role was made (exit 130 once the write
/// ends, both taken back). A rerun makes the user, whose Secret's password logs in.
fn user_create_interrupted(release: &Release, proxy: &Proxy, kubeconfig: &str) {
    let create = ["user", "create", "sig", "--release", RELEASE];
    let out = release.signalled_while_held(
        proxy,
        kubeconfig,
        &create,
        ("", "/portforward"),
        "TERM",
        true,
    );
    expect_code(&out, 143);
    assert_eq!(
        release.secret(&format!("{RELEASE}-user-sig"), "password"),
        None
    );
    assert_eq!(release.roles_named("sig"), "0");

    let out = release.signalled_while_held(
        proxy,
        kubeconfig,
        &create,
        ("POST", "/secrets"),
        "INT",
        false,
    );
    expect_code(&out, 130);
    assert!(
        out.stderr_text()
            .contains("taken back, nothing was created"),
        "{}",
        out.describe()
    );
    assert_eq!(
        release.secret(&format!("{RELEASE}-user-sig"), "password"),
        None
    );
    assert_eq!(release.roles_named("sig"), "0", "{}", out.describe());

    let out = release.run(&create);
    expect_code(&out, 0);
    release
        .login_with_secret("sig", &format!("{RELEASE}-user-sig"))
        .unwrap();

    // A second signal while the Secret is held: exit 130 at once, naming what may be left,
    // which `user delete` removes.
    proxy.clear_requests();
    proxy.hang(Matcher::new("POST", "/secrets"));
    let mut child = release.spawn(
        &["user", "create", "sig2", "--release", RELEASE],
        &["--kubeconfig", kubeconfig],
    );
    let lines = stderr_lines(&mut child);
    assert!(proxy.wait_for(BOUND, |r| r
        .iter()
        .any(|r| r.method == "POST" && r.path_and_query.contains("/secrets"))));
    signal_pid(child.id(), "INT");
    let mut said = acknowledged(&lines);
    signal_pid(child.id(), "INT");
    let out = output_within(child, AT_ONCE);
    proxy.clear_faults();
    expect_code(&out, 130);
    said.extend(lines.iter());
    assert!(
        said.iter().any(|l| l.contains("interrupted again")),
        "{said:?}"
    );
    let out = release.run(&["user", "delete", "sig2", "--release", RELEASE, "--yes"]);
    expect_code(&out, 0);
    assert_eq!(
        release.secret(&format!("{RELEASE}-user-sig2"), "password"),
        None
    );
    assert_eq!(release.roles_named("sig2"), "0");
}

/// The stderr lines up to the one where a run acknowledges a signal while it finishes a write
/// (within [`AT_ONCE`]).
fn acknowledged(lines: &std::sync::mpsc::Receiver<String>) -> Vec<String> {
    let mut said = Vec::new();
    while !said
        .iter()
        .any(|l: &String| l.contains("finishing the write in flight"))
    {
        match lines.recv_timeout(AT_ONCE) {
            Ok(line) => said.push(line),
            Err(e) => panic!("the signal is not acknowledged ({e}): {said:?}"),
        }
    }
    said
}

/// The child's stderr lines as they come (the channel ends with the child's stderr).
fn stderr_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `rotate-password`: SIGINT while it waits for another rotation's lock (exit 130 at once; the
/// other one finishes; an application user's, as the superuser's session of the second run
/// needs the password the first has not written yet); SIGINT while its ALTER ROLE waits on a
/// transaction of ours (exit 130 once it ends, the old password set again); SIGTERM while the
/// superuser's Secret write is held (exit 143 once the write ends, the rotation stands). The
/// Secret's password logs in after each, and after a rerun.
fn rotation_interrupted(release: &Release, proxy: &Proxy, kubeconfig: &str) {
    let user_secret = format!("{RELEASE}-user-sig");
    let rotate_user = ["rotate-password", RELEASE, "--db-user", "sig", "--yes"];
    // The first holds the role's lock while its Secret write is held.
    proxy.clear_requests();
    proxy.hang(Matcher::new("PATCH", &format!("/secrets/{user_secret}")));
    let first = release.spawn(&rotate_user, &["--kubeconfig", kubeconfig]);
    assert!(proxy.wait_for(BOUND, |r| r
        .iter()
        .any(|r| r.method == "PATCH" && r.path_and_query.contains(&user_secret))));
    let mut args = rotate_user.to_vec();
    args.extend(["-n", &release.ns]);
    let (code, stderr) =
        crate::upgrade::interrupted_at(release.scope, &args, "waiting for it to finish", "INT");
    assert_eq!(code, Some(130), "{stderr}");
    proxy.clear_faults();
    expect_code(&output_within(first, BOUND), 0);
    release.login_with_secret("sig", &user_secret).unwrap();

    // SIGINT while its ALTER ROLE waits for a transaction of ours on the same role: the
    // statement finishes once we roll back, then the role gets its old password again.
    let before = release.secret(&user_secret, "password");
    let pod = format!("{RELEASE}-0");
    let mut holder = std::process::Command::new(&release.scope.plane.kubectl)
        .env("KUBECONFIG", &release.scope.plane.kubeconfig)
        .args([
            "exec",
            "-i",
            "-n",
            &release.ns,
            &pod,
            "-c",
            "postgres",
            "--",
        ])
        .args(["psql", "-U", "postgres", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut to_holder = holder.stdin.take().unwrap();
    use std::io::Write;
    writeln!(
        to_holder,
        "BEGIN; ALTER ROLE sig PASSWORD 'held-by-the-test-0000';"
    )
    .unwrap();
    to_holder.flush().unwrap();
    let mut child = release.spawn(&rotate_user, &[]);
    let lines = stderr_lines(&mut child);
    crate::data::wait_until(BOUND, "the rotation's ALTER ROLE waits on our lock", || {
        crate::data::release_query(
            release.scope,
            &release.ns,
            RELEASE,
            "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query like 'ALTER ROLE%'",
        ) == "1"
    });
    signal_pid(child.id(), "INT");
    let mut said = acknowledged(&lines);
    writeln!(to_holder, "ROLLBACK;").unwrap();
    drop(to_holder);
    let _ = holder.wait();
    let out = output_within(child, BOUND);
    said.extend(lines.iter());
    expect_code(&out, 130);
    assert!(
        said.iter()
            .any(|l| l.contains("has its old password again")),
        "{said:?}"
    );
    assert_eq!(release.secret(&user_secret, "password"), before);
    release.login_with_secret("sig", &user_secret).unwrap();

    let secret = format!("{RELEASE}-credentials");
    let rotate = ["rotate-password", RELEASE, "--yes"];
    let before = release.secret(&secret, "password");
    let out = release.signalled_while_held(
        proxy,
        kubeconfig,
        &rotate,
        ("PATCH", &format!("/secrets/{secret}")),
        "TERM",
        false,
    );
    expect_code(&out, 143);
    assert!(
        out.stderr_text().contains("interrupted"),
        "{}",
        out.describe()
    );
    release
        .login_with_secret("postgres", &secret)
        .unwrap_or_else(|e| {
            panic!(
                "the Secret and the server disagree after SIGTERM: {e}\n{}",
                out.describe()
            )
        });
    let out = release.run(&rotate);
    expect_code(&out, 0);
    assert_ne!(release.secret(&secret, "password"), before);
    release.login_with_secret("postgres", &secret).unwrap();
}

/// Two `restart`s at once both end, and the release is healthy after; two `user create` of
/// one name at once, four times: one makes the user, the other is refused with exit 1 and
/// says it exists (never the catalog's unique index, never "delete it" without the caveat),
/// and the Secret's password logs in.
fn twin_runs(release: &Release) {
    let both = |args: &[&str]| {
        let (a, b) = (release.spawn(args, &[]), release.spawn(args, &[]));
        [output_within(a, BOUND), output_within(b, BOUND)]
    };
    for out in both(&["restart", RELEASE]) {
        expect_code(&out, 0);
    }
    let status = release.run(&["status", RELEASE, "-o", "json"]);
    expect_code(&status, 0);
    assert_eq!(
        crate::data::json(&status)["phase"],
        "Healthy",
        "{}",
        status.describe()
    );
    release
        .login_with_secret("postgres", &format!("{RELEASE}-credentials"))
        .unwrap();

    // Each round may meet the other run at another step: its Secret, its role, or its CREATE.
    for round in 0..4 {
        let name = format!("twin{round}");
        let outs = both(&["user", "create", &name, "--release", RELEASE]);
        let codes: Vec<i32> = outs.iter().map(OutputExt::code).collect();
        let (won, lost): (Vec<_>, Vec<_>) = outs.iter().partition(|o| o.code() == 0);
        assert_eq!(won.len(), 1, "one wins: {codes:?}\n{outs:?}");
        expect_code(lost[0], 1);
        let said = lost[0].stderr_text();
        eprintln!("twin user create, round {round}, the loser: {said}");
        assert!(said.contains("exists"), "{}", lost[0].describe());
        // Never told to delete what the winner may be making (its role before its Secret).
        assert!(
            !said.contains("user delete") || said.contains("unless another"),
            "{}",
            lost[0].describe()
        );
        assert!(
            !said.contains("unique constraint"),
            "{}",
            lost[0].describe()
        );
        release
            .login_with_secret(&name, &format!("{RELEASE}-user-{name}"))
            .unwrap();
    }
}
