//! One real PostgreSQL server per test process, started on first use and stopped when the
//! process exits; each test gets a database of its own.
//!
//! The server runs as an unprivileged user when the tests run as root (PostgreSQL refuses
//! root). It listens on a free loopback port with TLS on (a generated certificate for
//! 127.0.0.1) and password authentication over TCP.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

pub const PASSWORD: &str = "test-password-not-secret";

pub struct Server {
    pub port: u16,
    /// The CA-less self-signed certificate the server presents (PEM path), valid for 127.0.0.1.
    pub cert: PathBuf,
    /// The data directory (pg_hba.conf lives here).
    pub data: PathBuf,
    _tmp: tempfile::TempDir,
    // Closing this pipe (when the test process exits) stops the server.
    _stop: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

static SERVER: OnceLock<Server> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The shared server, started on first use.
pub fn server() -> &'static Server {
    SERVER.get_or_init(start)
}

/// A fresh, empty database on the shared server.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub fn new() -> Self {
        let server = server();
        let name = format!(
            "t{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::SeqCst)
        );
        query(&server.dsn("postgres"), &format!("CREATE DATABASE {name}"));
        Self { name }
    }

    /// A URI for this database, TLS off.
    pub fn dsn(&self) -> String {
        server().dsn(&self.name)
    }

    /// Runs SQL (several statements allowed) and returns the rows of every statement as text.
    pub fn query(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        query(&self.dsn(), sql)
    }

    /// The first column of the first row.
    pub fn scalar(&self, sql: &str) -> Option<String> {
        self.query(sql)
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .flatten()
    }
}

impl Server {
    /// Makes the server refuse connections to `db` that do not use TLS.
    pub fn require_tls(&self, db: &str) {
        let path = self.data.join("pg_hba.conf");
        let current = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("hostnossl {db} all all reject\n{current}")).unwrap();
        query(&self.dsn("postgres"), "SELECT pg_reload_conf()");
    }

    pub fn dsn(&self, db: &str) -> String {
        format!(
            "postgresql://postgres:{PASSWORD}@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }
}

/// Runs SQL through a short-lived session (application_name `e2e-admin`, so tests that
/// terminate kubectl-pg sessions never hit it).
pub fn query(dsn: &str, sql: &str) -> Vec<Vec<Option<String>>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut config: tokio_postgres::Config = dsn.parse().unwrap();
        config.application_name("e2e-admin");
        let (client, connection) = config.connect(tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        let messages = client
            .simple_query(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        kubectl_pg::migration::history::rows(&messages)
    })
}

/// The directory of `initdb`/`postgres`: `pg_config --bindir`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn bindir() -> PathBuf {
    let from_pg_config = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|d| d.join("initdb").exists());
    if let Some(dir) = from_pg_config {
        return dir;
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_string_lossy().parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, postgres) not found via pg_config or /usr/lib/postgresql/*/bin; \
             install them: apt-get install -y postgresql"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// When root, the account the server runs as, with its uid and gid.
pub fn service_account() -> Option<(String, u32, u32)> {
    if !is_root() {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("id runs");
        assert!(
            out.status.success(),
            "tests run as root need a 'postgres' user to run the server as (apt-get install -y postgresql creates it)"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some(("postgres".into(), id("-u"), id("-g")))
}

/// Builds a command run as the service account when we are root.
pub fn as_service(program: &Path) -> Command {
    match service_account() {
        Some((user, _, _)) => {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid, gid);
        }
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start() -> Server {
    let bin = bindir();
    let tmp = tempfile::Builder::new()
        .prefix("kubectl-pg-e2e-")
        .tempdir()
        .unwrap();
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");
    std::fs::write(dir.join("pwfile"), PASSWORD).unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    std::fs::write(dir.join("server.crt"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), cert.signing_key.serialize_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    if let Some((_, uid, gid)) = service_account() {
        chown_tree(&dir, uid, gid);
    }
    let out = as_service(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
        ])
        .arg(format!("--pwfile={}", dir.join("pwfile").display()))
        .output()
        .expect("initdb runs");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let postgres = bin.join("postgres");
    let settings = format!(
        "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={dir} -c max_connections=300 \
         -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c ssl=on \
         -c ssl_cert_file={dir}/server.crt -c ssl_key_file={dir}/server.key -c log_min_messages=warning",
        dir = dir.display()
    );
    // The shell stops the server (fast shutdown) and removes its files when our end of its
    // stdin closes, which happens when the test process exits.
    let script = format!(
        "'{}' -D '{}' {settings} & pid=$!; read _; kill -INT $pid; wait $pid; rm -rf '{}'",
        postgres.display(),
        data.display(),
        dir.display()
    );
    let mut child = as_service(Path::new("sh"))
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("postgres starts");
    let stdin = child.stdin.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = Vec::new();
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("database system is ready to accept connections") {
                let _ = ready_tx.send(Ok(()));
            }
            log.push(line);
        }
        let _ = ready_tx.send(Err(log.join("\n")));
    });
    match ready_rx.recv_timeout(Duration::from_secs(60)) {
        Ok(Ok(())) => {}
        Ok(Err(log)) => panic!("postgres exited during start-up:\n{log}"),
        Err(_) => panic!("postgres did not report ready within 60s"),
    }
    let _ = std::io::stderr().flush();
    Server {
        port,
        cert: dir.join("server.crt"),
        data: dir.join("data"),
        _tmp: tmp,
        _stop: Mutex::new(stdin),
        _child: Mutex::new(child),
    }
}
