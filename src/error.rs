//! The one error type of the crate and its mapping to the documented exit codes.

use std::fmt;

/// Everything that can stop a command. `main` turns it into one `error:` line, optional
/// `hint:` lines, and the exit code of [`Error::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad flags or arguments (exit 1).
    #[error("{message}")]
    InvalidInput {
        message: String,
        hint: Option<String>,
    },

    /// A migration file that cannot be used: malformed name, duplicate version, bad encoding (exit 1).
    #[error("{path}: {message}")]
    MigrationFile {
        path: String,
        message: String,
        hint: Option<String>,
    },

    /// A local file operation failed (exit 1).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// The database could not be reached, or the connection was lost for good (exit 8).
    #[error("cannot connect to the database at {target}: {reason}")]
    Connection { target: String, reason: String },

    /// A migration could not be applied, or the history forbids running (exit 7).
    #[error("{message}")]
    Migration { message: String, hints: Vec<String> },

    /// Applied migrations whose files changed since (exit 7).
    #[error("checksum drift: {} applied migration(s) changed since they were applied", .0.len())]
    Drift(Vec<Drift>),

    /// Another runner held the migration lock past `--lock-timeout` (exit 7).
    #[error("timed out after {waited} waiting for the migration lock{}", holder_text(.holder))]
    LockTimeout {
        waited: String,
        holder: Option<LockHolder>,
    },

    /// No usable kubeconfig, context, cluster or user (exit 2).
    #[error("{message}")]
    Kubeconfig {
        message: String,
        hint: Option<String>,
    },

    /// The API server could not be reached or refused our credentials (exit 2).
    #[error("cannot reach Kubernetes (context {context:?}, server {server}): {reason}")]
    ClusterUnreachable {
        context: String,
        server: String,
        reason: String,
        hint: Option<String>,
    },

    /// RBAC denied a request (exit 6 for writes: the user may not create what is needed; 2 for reads).
    #[error(
        "forbidden: {user} cannot {verb} {resource}{} (context {context:?})",
        where_text(namespace)
    )]
    Forbidden {
        verb: String,
        resource: String,
        namespace: String,
        user: String,
        context: String,
    },

    /// The release, or a part of it, does not exist (exit 1).
    #[error("{message}")]
    NotFound {
        message: String,
        hint: Option<String>,
    },

    /// An API error we did not expect (exit 1).
    #[error("Kubernetes API error while trying to {action}: {message}")]
    Api { action: String, message: String },

    /// A release did not reach the wanted state: timeout (4), health (5), resources (6), or
    /// a bad image or configuration (1); the code comes from the diagnosis.
    #[error("{message}")]
    Deployment {
        message: String,
        hints: Vec<String>,
        code: u8,
    },

    /// A child process (psql) ended with this code; it already said why.
    #[error("exited with code {0}")]
    Exit(u8),

    /// A tool run in the pod (pg_dump, pg_restore, psql) failed; its own words (exit 1).
    #[error("{tool} failed: {message}")]
    Tool {
        tool: String,
        message: String,
        hints: Vec<String>,
    },

    /// An unexpected database error outside a migration (exit 1).
    #[error("{context}: {message}")]
    Database { context: String, message: String },
}

/// An applied migration whose file no longer matches the recorded checksum.
#[derive(Debug, Clone)]
pub struct Drift {
    pub migration: String,
    pub recorded: String,
    pub current: String,
}

/// The session holding the migration lock, from `pg_stat_activity`.
#[derive(Debug, Clone)]
pub struct LockHolder {
    pub pid: i32,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub since: String,
}

impl fmt::Display for LockHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let app = if self.application_name.is_empty() {
            "unnamed client"
        } else {
            &self.application_name
        };
        let addr = self.client_addr.as_deref().unwrap_or("local socket");
        write!(
            f,
            "pid {} ({app}, from {addr}, connected since {})",
            self.pid, self.since
        )
    }
}

fn holder_text(holder: &Option<LockHolder>) -> String {
    match holder {
        Some(h) => format!(": held by {h}"),
        None => String::new(),
    }
}

impl Error {
    /// The exit code of the seed's table (`0`–`8`).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::InvalidInput { .. }
            | Error::MigrationFile { .. }
            | Error::Io { .. }
            | Error::Database { .. }
            | Error::Tool { .. }
            | Error::NotFound { .. }
            | Error::Api { .. } => 1,
            Error::Kubeconfig { .. } | Error::ClusterUnreachable { .. } => 2,
            Error::Forbidden { verb, .. } => match verb.as_str() {
                "create" | "update" | "patch" | "delete" => 6,
                _ => 2,
            },
            Error::Migration { .. } | Error::Drift(_) | Error::LockTimeout { .. } => 7,
            Error::Connection { .. } => 8,
            Error::Exit(code) | Error::Deployment { code, .. } => *code,
        }
    }

    /// Lines that tell the user how to go on, printed after the error as `hint: …`.
    pub fn hints(&self) -> Vec<String> {
        match self {
            Error::InvalidInput { hint, .. }
            | Error::MigrationFile { hint, .. }
            | Error::Kubeconfig { hint, .. }
            | Error::ClusterUnreachable { hint, .. }
            | Error::NotFound { hint, .. } => hint.iter().cloned().collect(),
            Error::Forbidden { verb, resource, namespace, .. } if namespace.is_empty() => vec![format!(
                "{resource} are cluster-wide: ask a cluster admin for a ClusterRole allowing {verb} on them, bound with a ClusterRoleBinding (check: kubectl auth can-i {verb} {resource})"
            )],
            Error::Forbidden { verb, resource, namespace, .. } => vec![format!(
                "ask a cluster admin for a Role allowing {verb} on {resource} in {namespace} (check: kubectl auth can-i {verb} {resource} -n {namespace})"
            )],
            Error::Migration { hints, .. }
            | Error::Deployment { hints, .. }
            | Error::Tool { hints, .. } => hints.clone(),
            Error::Drift(drifts) => {
                let mut hints: Vec<String> = drifts
                    .iter()
                    .map(|d| format!("{}: recorded {} now {}", d.migration, d.recorded, d.current))
                    .collect();
                hints.push(
                    "restore the applied files, or accept the change with `kubectl pg migrate repair --version V --yes`"
                        .into(),
                );
                hints
            }
            Error::LockTimeout { holder, .. } => {
                let mut hints = vec!["another `kubectl pg migrate` is running; wait for it or raise --lock-timeout".to_string()];
                if let Some(h) = holder {
                    hints.push(format!("to stop it: SELECT pg_terminate_backend({})", h.pid));
                }
                hints
            }
            Error::Connection { target, .. } if target.contains("port-forward") || target.starts_with("release ") => vec![
                "check the release's pod: kubectl pg status, or kubectl get pods -l app.kubernetes.io/name=postgresql".into(),
            ],
            Error::Connection { .. } => vec![
                "check the address, credentials and sslmode in --dsn / DATABASE_URL, and that the server is running"
                    .into(),
            ],
            Error::Io { .. } | Error::Database { .. } | Error::Api { .. } | Error::Exit(_) => Vec::new(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidInput {
            message: message.into(),
            hint: None,
        }
    }

    pub fn migration(message: impl Into<String>) -> Self {
        Error::Migration {
            message: message.into(),
            hints: Vec::new(),
        }
    }
}

/// ` in namespace "N"`, or ` (cluster-wide)` for a resource that lives in no namespace.
fn where_text(namespace: &str) -> String {
    if namespace.is_empty() {
        " (cluster-wide)".into()
    } else {
        format!(" in namespace {namespace:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_seed_table() {
        assert_eq!(Error::invalid("x").exit_code(), 1);
        assert_eq!(Error::migration("x").exit_code(), 7);
        assert_eq!(Error::Drift(vec![]).exit_code(), 7);
        let conn = Error::Connection {
            target: "h".into(),
            reason: "r".into(),
        };
        assert_eq!(conn.exit_code(), 8);
    }

    #[test]
    fn lock_timeout_names_the_holder() {
        let e = Error::LockTimeout {
            waited: "1s".into(),
            holder: Some(LockHolder {
                pid: 42,
                application_name: "kubectl-pg".into(),
                client_addr: Some("10.0.0.7".into()),
                since: "2026-11-25 10:00:00+00".into(),
            }),
        };
        let text = e.to_string();
        assert!(
            text.contains("pid 42") && text.contains("10.0.0.7") && text.contains("kubectl-pg"),
            "{text}"
        );
        assert!(e
            .hints()
            .iter()
            .any(|h| h.contains("pg_terminate_backend(42)")));
    }
}
