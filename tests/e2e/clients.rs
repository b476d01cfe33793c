//! `verify-full` through `kubectl pg port-forward` in three clients nobody here wrote, each
//! with its own TLS stack and its own check of the server's name: psql (libpq, built here),
//! psycopg 3 (PyPI's binary wheel, which bundles its own libpq and OpenSSL) and pgjdbc (Maven
//! Central, Java's TLS and pgjdbc's hostname verifier). Each is given what the plugin printed,
//! as printed; a CA that did not sign the server's certificate is refused by each. Installed
//! once per run into the target's temp directory (pinned versions); without the registries the
//! test says SKIPPED for the two it could not install and checks psql alone.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::cluster::PluginForward;
use crate::scope::Scope;
use crate::{expect_code, OutputExt};

const PSYCOPG: &str = "psycopg[binary]==3.3.9";
const PGJDBC_VERSION: &str = "42.7.14";

/// The session's user and TLS version: one row only over TLS.
const OVER_TLS: &str =
    "SELECT current_user || ' over ' || version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl";

/// A superuser password with what URIs, shells and JDBC URLs find awkward.
const PASSWORD: &str = "p@ss:w/rd 'q' \"d\" #1 +x %41 & ?= é✓ 日本";

struct Clients {
    python: PathBuf,
    pgjdbc: PathBuf,
}

fn clients() -> Option<&'static Clients> {
    static CLIENTS: OnceLock<Option<Clients>> = OnceLock::new();
    CLIENTS
        .get_or_init(|| match install() {
            Ok(c) => Some(c),
            Err(why) => {
                eprintln!(
                    "SKIPPED: psycopg and pgjdbc could not be installed ({why}); verify-full was checked with psql only"
                );
                None
            }
        })
        .as_ref()
}

fn install() -> Result<Clients, String> {
    let jar = format!("postgresql-{PGJDBC_VERSION}.jar");
    let root = crate::tools::installed("db-clients", |dir, run| {
        crate::tools::python_venv(run, &[PSYCOPG])?;
        run(
            "mvn",
            &[
                "-q",
                "-B",
                "dependency:copy",
                &format!("-Dartifact=org.postgresql:postgresql:{PGJDBC_VERSION}"),
                &format!("-DoutputDirectory={}", dir.join("jars").display()),
                &format!("-Dmaven.repo.local={}", dir.join("m2").display()),
            ],
        )?;
        run("java", &["-version"])
    })?;
    Ok(Clients {
        python: root.join("venv/bin/python"),
        pgjdbc: root.join("jars").join(jar),
    })
}

/// The printed DSN the documented way for JDBC (the form `dsn --format jdbc` writes): the
/// scheme `jdbc:postgresql:`, the user and password moved into the query, every value kept
/// percent-encoded as printed. An IPv6 address is written as Java writes it (`[::1]` as
/// `[0:0:0:0:0:0:0:1]`): pgjdbc 42.7 compares the URL's address as text with the certificate's
/// address as Java formats it (README, port-forward).
fn jdbc_of(dsn: &str) -> String {
    let rest = dsn
        .strip_prefix("postgresql://")
        .expect("a postgresql:// DSN");
    let (userinfo, rest) = rest.split_once('@').expect("user and password");
    let (user, password) = userinfo.split_once(':').expect("a password");
    assert!(rest.contains('?'), "{dsn}");
    let rest = match rest
        .strip_prefix('[')
        .and_then(|r| r.split_once(']'))
        .and_then(|(ip, r)| Some((ip.parse::<std::net::Ipv6Addr>().ok()?, r)))
    {
        Some((ip, r)) => {
            let java: Vec<String> = ip.segments().iter().map(|s| format!("{s:x}")).collect();
            format!("[{}]{r}", java.join(":"))
        }
        None => rest.to_string(),
    };
    format!("jdbc:postgresql://{rest}&user={user}&password={password}")
}

/// The same DSN trusting another CA file.
fn with_root(dsn: &str, ca: &str) -> String {
    let (head, query) = dsn.split_once("sslrootcert=").expect("an sslrootcert");
    let rest = query.split_once('&').map(|(_, r)| format!("&{r}"));
    format!(
        "{head}sslrootcert={}{}",
        kubectl_pg::database::connection::encode(ca),
        rest.unwrap_or_default()
    )
}

/// Runs `command` without any libpq setting from the environment.
fn run(command: &mut Command) -> Output {
    command
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGPASSWORD")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

/// Each client's answer to [`OVER_TLS`] through the forward (DSN, export line): psql with the
/// DSN as its argument, psycopg with DATABASE_URL from the export line `eval`ed by sh, pgjdbc
/// with the DSN as a JDBC URL.
fn ask_each(scope: &Scope, dsn: &str, export: &str) -> Vec<(&'static str, Output)> {
    let psql = scope.plane.postgres.join("clients/bin/psql");
    let mut answers = vec![(
        "psql",
        run(Command::new(psql).args(["-X", "-At", dsn, "-c", OVER_TLS])),
    )];
    let Some(clients) = clients() else {
        return answers;
    };
    answers.push((
        "psycopg",
        run(Command::new("sh")
            .args([
                "-c",
                "eval \"$1\" && exec \"$2\" -c \"$3\"",
                "sh",
                export,
            ])
            .arg(&clients.python)
            .arg(format!(
                "import os, psycopg\nwith psycopg.connect(os.environ['DATABASE_URL']) as c:\n    print(c.execute({OVER_TLS:?}).fetchone()[0])"
            ))),
    ));
    let java_file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/clients/Query.java");
    answers.push((
        "pgjdbc",
        run(Command::new("java")
            .arg("-cp")
            .arg(&clients.pgjdbc)
            .args([java_file, OVER_TLS])
            .env("JDBC_URL", jdbc_of(dsn))),
    ));
    answers
}

/// A `--tls` ClusterIP release: no outside address is in its certificate, so only the loopback
/// names make port-forward's `verify-full` pass. On 127.0.0.1 and on ::1, psql, psycopg and
/// pgjdbc each open a TLS session as the DSN's user with exactly what port-forward printed,
/// and each refuses the server when trusting a CA with the same name as the release's (made
/// by the plugin's own code) but another key. `dsn --ca-file` on a full disk leaves no half
/// certificate.
#[test]
fn verify_full_through_port_forward_in_psql_psycopg_and_pgjdbc() {
    let scope = Scope::new("kpg-clients");
    let ns = scope.ns.clone();
    let installed = scope.kpg_stdin(
        &[
            "install",
            "c",
            "-n",
            &ns,
            "--tls",
            "--password-stdin",
            "--timeout",
            "120s",
        ],
        &format!("{PASSWORD}\n"),
    );
    expect_code(&installed, 0);
    // Installed while the release starts.
    let _ = clients();
    let impostor = kubectl_pg::manifests::certs::issue(
        "c",
        &ns,
        &["localhost".into(), "127.0.0.1".into(), "::1".into()],
        None,
        kubectl_pg::manifests::certs::today(),
    )
    .unwrap();
    let wrong_ca = scope.dir.path().join("impostor-ca.crt");
    std::fs::write(&wrong_ca, &impostor.ca_crt).unwrap();

    // `dsn --ca-file` on a full disk: exit 1, and no half certificate under the name.
    let mount = tempfile::tempdir().unwrap();
    let target = mount.path().join("ca.crt");
    let dsn = scope.kpg_command(&["dsn", "c", "-n", &ns, "--ca-file", target.to_str().unwrap()]);
    let out = crate::output_within(
        crate::sinks::on_full_tmpfs(&dsn, mount.path(), true, None),
        std::time::Duration::from_secs(60),
    );
    crate::sinks::refused_for_space("dsn --ca-file into a full tmpfs", &out, true);

    for (listen, host) in [("127.0.0.1:0", "@127.0.0.1:"), ("[::1]:0", "@[::1]:")] {
        let forward = PluginForward::start(&scope, &ns, "c", listen);
        assert!(
            forward.dsn.contains(host)
                && forward
                    .dsn
                    .contains("/learnflow?sslmode=verify-full&sslrootcert=%2F"),
            "{}",
            forward.dsn
        );
        for (client, out) in ask_each(&scope, &forward.dsn, &forward.export) {
            expect_code(&out, 0);
            let said = out.stdout_text();
            assert!(
                said.trim().starts_with("postgres over TLSv1."),
                "{client} on {listen}: {}",
                out.describe()
            );
        }
        let wrong = with_root(&forward.dsn, wrong_ca.to_str().unwrap());
        let wrong_export = format!(
            "export DATABASE_URL={}",
            kubectl_pg::database::connection::shell_quote(&wrong)
        );
        for (client, out) in ask_each(&scope, &wrong, &wrong_export) {
            assert_ne!(out.code(), 0, "{client} on {listen}: {}", out.describe());
            let err = out.stderr_text();
            assert!(
                err.contains("certificate verify failed")
                    || err.contains("PKIX path validation failed"),
                "{client} on {listen} refuses for the certificate: {}",
                out.describe()
            );
            assert!(!out.stdout_text().contains("over TLS"), "{client}");
        }
    }
}
