//! The PostgreSQL server behind a simulated pod, started the way the official `postgres` image's
//! entrypoint does: initialise PGDATA from POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB when
//! it holds no database (and refuse without a password unless POSTGRES_HOST_AUTH_METHOD=trust),
//! skip initialisation when it does, then run the server.
//!
//! The server runs under a small shell that stops it (fast shutdown) when its stdin closes:
//! when the pod stops, the cluster is dropped, or the test process exits for any reason.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::{oneshot, watch};

use crate::pg;

/// How the container asked to be initialised (its resolved environment).
#[derive(Clone, Debug)]
pub struct InitConfig {
    pub user: String,
    pub password: String,
    pub database: String,
    /// POSTGRES_HOST_AUTH_METHOD (default scram-sha-256).
    pub host_auth: String,
    /// POSTGRES_INITDB_ARGS, split on whitespace.
    pub initdb_args: Vec<String>,
}

impl InitConfig {
    pub fn from_env(env: &[(String, String)]) -> InitConfig {
        let get = |k: &str| {
            env.iter()
                .rev()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };
        let user = get("POSTGRES_USER").unwrap_or_else(|| "postgres".into());
        InitConfig {
            database: get("POSTGRES_DB").unwrap_or_else(|| user.clone()),
            password: get("POSTGRES_PASSWORD").unwrap_or_default(),
            host_auth: get("POSTGRES_HOST_AUTH_METHOD").unwrap_or_else(|| "scram-sha-256".into()),
            initdb_args: get("POSTGRES_INITDB_ARGS")
                .map(|a| a.split_whitespace().map(str::to_string).collect())
                .unwrap_or_default(),
            user,
        }
    }
}

/// The lines the shared log of one container run receives.
pub type Log = Arc<Mutex<Vec<String>>>;

pub fn push(log: &Log, line: impl Into<String>) {
    log.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(line.into());
}

/// (uid, gid) of the account PostgreSQL runs as when we are root.
fn service() -> Option<(u32, u32)> {
    static IDS: OnceLock<Option<(u32, u32)>> = OnceLock::new();
    *IDS.get_or_init(|| pg::service_account().map(|(_, uid, gid)| (uid, gid)))
}

fn bindir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(pg::bindir)
}

/// The PostgreSQL binaries' directory, for PATH in exec sessions.
pub fn bin_path() -> PathBuf {
    bindir().to_path_buf()
}

fn command(program: &Path) -> tokio::process::Command {
    let mut c = match service() {
        Some(_) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    };
    c.kill_on_drop(false);
    c
}

/// Creates `dir` (and parents) and hands it to the service account.
pub fn make_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    if let Some((uid, gid)) = service() {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Why a container run failed before the server was up: its log says why.
#[derive(Debug)]
pub struct Failed;

/// A running server.
pub struct Postgres {
    pub port: u16,
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    exited: watch::Receiver<Option<i32>>,
}

/// The official entrypoint's refusal to initialise without a password.
const NO_PASSWORD: &str =
    "Error: Database is uninitialized and superuser password is not specified.
       You must specify POSTGRES_PASSWORD to a non-empty value for the
       superuser. For example, \"-e POSTGRES_PASSWORD=password\" on \"docker run\".

       You may also use \"POSTGRES_HOST_AUTH_METHOD=trust\" to allow all
       connections without a password. This is *not* recommended.

       See PostgreSQL documentation about \"trust\":
       https://www.postgresql.org/docs/current/auth-trust.html";

/// Runs initdb into `data_dir` as the image would (its output goes to the log).
async fn initdb(
    data_dir: &Path,
    socket_dir: &Path,
    config: &InitConfig,
    log: &Log,
) -> Result<(), Failed> {
    if config.password.is_empty() && config.host_auth != "trust" {
        for line in NO_PASSWORD.lines() {
            push(log, line);
        }
        return Err(Failed);
    }
    let pwfile = socket_dir.join("pwfile");
    std::fs::write(&pwfile, &config.password).map_err(|_| Failed)?;
    if let Some((uid, gid)) = service() {
        let _ = std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid));
    }
    let mut cmd = command(&bindir().join("initdb"));
    cmd.arg("-D")
        .arg(data_dir)
        .arg(format!("--username={}", config.user))
        .arg(format!("--pwfile={}", pwfile.display()))
        .args([
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth-local=trust",
        ])
        .arg(format!("--auth-host={}", config.host_auth))
        .args(&config.initdb_args)
        .stdin(Stdio::null());
    let out = cmd.output().await.map_err(|_| Failed)?;
    let _ = std::fs::remove_file(&pwfile);
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        push(log, line);
    }
    if out.status.success() {
        Ok(())
    } else {
        Err(Failed)
    }
}

impl Postgres {
    /// Initialises PGDATA if needed, starts the server and waits until it accepts connections
    /// (and, after a fresh initialisation, until POSTGRES_DB exists).
    pub async fn start(
        data_dir: &Path,
        socket_dir: &Path,
        config: &InitConfig,
        log: &Log,
    ) -> Result<Postgres, Failed> {
        let fresh = !data_dir.join("PG_VERSION").exists();
        if fresh {
            if let Some(parent) = data_dir.parent() {
                make_dir(parent, 0o755).map_err(|_| Failed)?;
            }
            initdb(data_dir, socket_dir, config, log).await?;
        } else {
            push(log, "");
            push(
                log,
                "PostgreSQL Database directory appears to contain a database; Skipping initialization",
            );
            push(log, "");
        }
        let port = pg::free_port();
        // fsync off keeps starts fast; synchronous_commit stays on so a commit the client saw
        // survives a killed server (crash recovery replays it), as on a real pod.
        let settings = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}' \
             -c fsync=off -c full_page_writes=off \
             -c max_connections=50 -c shared_buffers=16MB -c logging_collector=off \
             -c log_line_prefix='%m [%p] '",
            socket_dir.display()
        );
        // stdin is duplicated to fd 3 first: a background job's stdin would be /dev/null.
        let script = format!(
            "exec 3<&0; '{postgres}' -D '{data}' {settings} </dev/null 3<&- 1>&2 & pid=$!; \
             echo \"pid $pid\"; (read _ <&3; kill -INT $pid) >/dev/null 2>&1 </dev/null & \
             wait $pid; echo \"exit $?\"",
            postgres = bindir().join("postgres").display(),
            data = data_dir.display(),
        );
        let mut child = command(Path::new("sh"))
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|_| Failed)?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr = child.stderr.take().expect("stderr piped");
        let (ready_tx, ready_rx) = oneshot::channel();
        let (pid_tx, pid_rx) = oneshot::channel();
        let (exit_tx, exited) = watch::channel(None);
        let log_lines = log.clone();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("database system is ready to accept connections") {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                push(&log_lines, line);
            }
        });
        tokio::spawn(async move {
            let mut pid_tx = Some(pid_tx);
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(pid) = line.strip_prefix("pid ") {
                    if let (Some(tx), Ok(pid)) = (pid_tx.take(), pid.trim().parse::<u32>()) {
                        let _ = tx.send(pid);
                    }
                } else if let Some(code) = line.strip_prefix("exit ") {
                    let _ = exit_tx.send(Some(code.trim().parse().unwrap_or(1)));
                }
            }
            // The shell is gone without a word: treat as a crash.
            exit_tx.send_if_modified(|v| {
                if v.is_none() {
                    *v = Some(1);
                    true
                } else {
                    false
                }
            });
        });
        let pid = pid_rx.await.map_err(|_| Failed)?;
        let server = Postgres {
            port,
            socket_dir: socket_dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            child,
            stdin,
            pid,
            exited,
        };
        let mut exited = server.exited.clone();
        let up = tokio::select! {
            r = ready_rx => r.is_ok(),
            _ = exited.wait_for(Option::is_some) => false,
            _ = tokio::time::sleep(Duration::from_secs(60)) => false,
        };
        if !up {
            server.stop().await;
            return Err(Failed);
        }
        if fresh && config.database != "postgres" {
            if let Err(e) = server.create_database(config).await {
                push(log, format!("psql: error: {e}"));
                server.stop().await;
                return Err(Failed);
            }
            push(log, "CREATE DATABASE");
            push(log, "");
        }
        if fresh {
            push(log, "");
            push(log, "PostgreSQL init process complete; ready for start up.");
            push(log, "");
        }
        Ok(server)
    }

    async fn create_database(&self, config: &InitConfig) -> Result<(), tokio_postgres::Error> {
        let mut pg = tokio_postgres::Config::new();
        pg.host_path(&self.socket_dir)
            .port(self.port)
            .user(&config.user)
            .dbname("postgres");
        let (client, connection) = pg.connect(tokio_postgres::NoTls).await?;
        let conn = tokio::spawn(connection);
        let quoted = config.database.replace('"', "\"\"");
        let result = client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await;
        drop(client);
        let _ = conn.await;
        result
    }

    /// Resolves when the server exits, with the shell's exit status for it.
    pub fn exited(&self) -> watch::Receiver<Option<i32>> {
        self.exited.clone()
    }

    /// Immediate shutdown, as if the container's process had been killed.
    pub fn kill(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-QUIT", &self.pid.to_string()])
            .status();
    }

    /// Fast shutdown; waits for the server to exit.
    pub async fn stop(mut self) {
        self.stdin.take();
        let waited = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
        if waited.is_err() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
            let _ = self.child.kill().await;
        }
    }
}
