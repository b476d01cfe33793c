//! Commands on a terminal: a pseudo-terminal from util-linux's `script`, typed into as a user
//! would, each answer after its prompt.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::scope::Scope;

const WITHIN: Duration = Duration::from_secs(120);

/// A command running on its own pseudo-terminal (stdin, stdout and stderr), and what it printed.
struct Terminal {
    script: Child,
    output: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Terminal {
    /// Runs `command` (its program, arguments and environment) on a new pseudo-terminal.
    fn run(command: &Command) -> Terminal {
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
        let mut line = format!("exec {}", quote(command.get_program()));
        for arg in command.get_args() {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        let mut script = Command::new("script");
        // -e: the command's exit code; -E never: stdin is a pipe, the command still gets a tty.
        script.args(["-q", "-e", "-E", "never", "-c", &line, "/dev/null"]);
        for (key, value) in command.get_envs() {
            match value {
                Some(v) => script.env(key, v),
                None => script.env_remove(key),
            };
        }
        let mut script = script
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("util-linux script runs");
        let mut stdout = script.stdout.take().unwrap();
        let (send, output) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 || send.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Terminal {
            script,
            output,
            seen: String::new(),
        }
    }

    /// Reads what the command prints until `text` appeared.
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + WITHIN;
        while !self.seen.contains(text) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!(
                    "no {text:?} within {WITHIN:?}; the terminal shows:\n{}",
                    self.seen
                ),
            }
        }
    }

    /// Waits until the command (one of its threads) is blocked reading its terminal: after a
    /// prompt, its echo setting is then the one it reads with.
    fn until_reading(&self) {
        let children = format!("/proc/{0}/task/{0}/children", self.script.id());
        let deadline = Instant::now() + WITHIN;
        loop {
            let pid = std::fs::read_to_string(&children).unwrap_or_default();
            let pid = pid.split_whitespace().next().unwrap_or("0").to_string();
            // Any of its threads (a prompt may read on a thread of its own).
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten();
            let reading = tasks.flatten().any(|task| {
                let syscall =
                    std::fs::read_to_string(task.path().join("syscall")).unwrap_or_default();
                // read(2) is syscall 0 on x86-64, 63 on aarch64.
                let number = syscall.split_whitespace().next().unwrap_or("");
                number
                    == if cfg!(target_arch = "aarch64") {
                        "63"
                    } else {
                        "0"
                    }
            });
            if reading {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the command never read its terminal:\n{}",
                self.seen
            );
            std::thread::yield_now();
        }
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.script.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Ctrl-C, as typed: the terminal sends SIGINT to the command.
    fn interrupt(&mut self) {
        let stdin = self.script.stdin.as_mut().unwrap();
        stdin.write_all(b"\x03").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits for the command to exit: its exit code and everything the terminal showed.
    fn finish(mut self) -> (i32, String) {
        let deadline = Instant::now() + WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = self.script.kill();
                    panic!("still running after {WITHIN:?}:\n{}", self.seen);
                }
            }
        }
        let status = self.script.wait().unwrap();
        (status.code().unwrap_or(-1), self.seen)
    }
}

fn secret_password(scope: &Scope) -> String {
    use base64::Engine;
    let out = scope.kubectl_ns(&[
        "get",
        "secret",
        "pg-credentials",
        "-o",
        "jsonpath={.data.password}",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

fn exists(scope: &Scope, what: &str) -> bool {
    scope.kubectl_ns(&["get", what]).status.success()
}

/// `install --password-stdin` asks twice without echo; Ctrl-C at `rotate-password`'s question
/// ends it; `uninstall --delete-data` asks y/N, and only yes deletes.
#[test]
fn prompts_on_a_terminal() {
    let scope = Scope::new("kpg-tty");
    let ns = scope.ns.clone();
    let install = |first: &str, again: &str| {
        let mut t = Terminal::run(&scope.kpg_command(&[
            "install",
            "pg",
            "-n",
            &ns,
            "--password-stdin",
            "--timeout",
            "120s",
        ]));
        t.expect("Password for the release's superuser: ");
        t.until_reading();
        t.type_line(first);
        t.expect("Again: ");
        t.until_reading();
        t.type_line(again);
        t.finish()
    };
    let (code, shown) = install("a-terminal-password-0001", "a-terminal-password-0002");
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("the two passwords differ"), "{shown}");
    assert!(!shown.contains("a-terminal-password"), "echoed:\n{shown}");
    assert!(!exists(&scope, "statefulset/pg"), "nothing is created");

    let (code, shown) = install("a-terminal-password-0003", "a-terminal-password-0003");
    assert_eq!(code, 0, "{shown}");
    assert!(!shown.contains("a-terminal-password"), "echoed:\n{shown}");
    assert_eq!(secret_password(&scope), "a-terminal-password-0003");

    // Ctrl-C at rotate-password's question ends it at once, having changed nothing.
    let mut t = Terminal::run(&scope.kpg_command(&["rotate-password", "pg", "-n", &ns]));
    t.expect("[y/N] ");
    t.until_reading();
    t.interrupt();
    let (code, shown) = t.finish();
    assert_eq!(code, 130, "{shown}");
    assert_eq!(secret_password(&scope), "a-terminal-password-0003");

    let uninstall = |answer: &str| {
        let mut t =
            Terminal::run(&scope.kpg_command(&["uninstall", "pg", "-n", &ns, "--delete-data"]));
        t.expect("[y/N] ");
        t.type_line(answer);
        t.finish()
    };
    let (code, shown) = uninstall("n");
    assert_eq!(code, 1, "{shown}");
    assert!(shown.contains("cancelled: nothing was changed"), "{shown}");
    assert!(exists(&scope, "statefulset/pg") && exists(&scope, "pvc/data-pg-0"));
    let (code, shown) = uninstall("y");
    assert_eq!(code, 0, "{shown}");
    assert!(!exists(&scope, "pvc/data-pg-0"), "{shown}");
}
