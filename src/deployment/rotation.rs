//! A CloudNativePG Cluster's owner password, rotated the operator's way: the new password goes
//! into the Cluster's application Secret (every key that carries it), and the instance manager
//! of the primary sets it in the database. The Secret is the one source, so the database and
//! the Secret never disagree for longer than the operator takes to apply it, whatever stops
//! this command: a rerun simply rotates again.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, Patch, PatchParams};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::cluster::release;
use crate::cluster::tunnel::TunnelConnector;
use crate::cluster::Cluster;
use crate::database::{connect_with_retry, is_password_refused};
use crate::deployment::cnpg::{self, CnpgCluster};
use crate::deployment::kind::Release;
use crate::error::Error;
use crate::manifests::render::FIELD_MANAGER;

/// The keys of an application Secret that carry the password besides `password` itself.
const DERIVED: [&str; 5] = ["pgpass", "uri", "jdbc-uri", "fqdn-uri", "fqdn-jdbc-uri"];

/// What was rotated.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub role: String,
    pub secret: String,
}

/// Checks, before any write, that kubectl-pg may rotate this Cluster's owner password: a
/// Cluster it made, whose Secret is the operator's (not one named with `--existing-secret`).
pub fn check(c: &CnpgCluster) -> Result<(), Error> {
    let ns = &c.namespace;
    if !cnpg::made_by_us(c) {
        return Err(Error::InvalidInput {
            message: format!(
                "Cluster {:?} was not made by kubectl-pg: rotate-password will not write its Secret",
                c.name
            ),
            hint: Some(format!(
                "its owners rotate it by writing a new password into Secret {} (kubectl edit secret {0} -n {ns}): the operator sets it in the database",
                c.app_secret()
            )),
        });
    }
    if c.existing_secret().is_some() {
        return Err(Error::InvalidInput {
            message: format!(
                "Cluster {} takes its owner's credentials from --existing-secret {}: kubectl-pg never writes that Secret",
                c.name,
                c.app_secret()
            ),
            hint: Some(format!(
                "write the new password into Secret {} yourself: the operator sets it in the database",
                c.app_secret()
            )),
        });
    }
    Ok(())
}

/// Writes `new` into the Cluster's application Secret (the resourceVersion read is the
/// precondition; a conflict reads it again), then waits until the primary takes the new
/// password, through a tunnel, within `timeout` (exit 4 past it: the operator goes on).
pub async fn through_operator(
    cluster: &Cluster,
    found: &Release,
    c: &CnpgCluster,
    new: &str,
    timeout: Duration,
) -> Result<Rotated, Error> {
    check(c)?;
    let secrets: Api<Secret> = Api::namespaced(cluster.client.clone(), &c.namespace);
    let name = c.app_secret();
    let mut written = None;
    for _ in 0..4 {
        let secret = secrets
            .get(&name)
            .await
            .map_err(|e| cluster.error("get", "secrets", e))?;
        let owned = secret
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Cluster" && Some(&o.uid) == c.object.metadata.uid.as_ref());
        if !owned {
            return Err(Error::InvalidInput {
                message: format!(
                    "Secret {name} is not the one the operator made for Cluster {}: it is left alone",
                    c.name
                ),
                hint: None,
            });
        }
        let values = release::secret_values(&secret);
        let data = with_password(&values, new).map_err(|key| Error::InvalidInput {
            message: format!(
                "key {key} of Secret {name} does not hold the password in a form kubectl-pg knows: nothing was changed"
            ),
            hint: Some(format!(
                "write the new password into every key of Secret {name} yourself: the operator sets it in the database"
            )),
        })?;
        // A merge patch (the verb the caveats grant on Secrets) with the version read as its
        // precondition.
        let patch = Secret {
            metadata: ObjectMeta {
                resource_version: secret.metadata.resource_version.clone(),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..Default::default()
        };
        match secrets.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => {
                written = Some(values.get("username").cloned().unwrap_or_default());
                break;
            }
            // Someone wrote it meanwhile (another rotation): start again from what is there.
            Err(kube::Error::Api(s)) if s.code == 409 => continue,
            Err(e) => return Err(cluster.error("patch", "secrets", e)),
        }
    }
    let role = written.ok_or_else(|| {
        Error::invalid(format!(
            "Secret {name} kept changing under this rotation: run it again"
        ))
    })?;
    crate::note!(
        "wrote the new password into Secret {name}: waiting for the operator to set it for role {role}"
    );
    wait_accepted(cluster, found, c, new, timeout).await?;
    Ok(Rotated { role, secret: name })
}

/// Waits until the primary accepts the password the Secret holds: tried at once, then on each
/// change of the Cluster (the operator records the Secret's version in its status), at least
/// every two seconds. Another rotation that wrote the Secret after this one supersedes it: its
/// password is then the one waited for, as the Secret is the one source.
async fn wait_accepted(
    cluster: &Cluster,
    found: &Release,
    c: &CnpgCluster,
    new: &str,
    timeout: Duration,
) -> Result<(), Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut changes = found.changes(cluster);
    let mut said = false;
    loop {
        let current = found.current(cluster).await?;
        let target = current.target(cluster).await?;
        if target.credentials.password != new && !said {
            crate::note!(
                "another rotation wrote Secret {} meanwhile: waiting for its password instead",
                c.app_secret()
            );
            said = true;
        }
        let last = match connect_with_retry(&TunnelConnector::new(cluster, &target)).await {
            Ok(_) => return Ok(()),
            Err(e) if is_password_refused(&e) => e,
            Err(e) => return Err(e),
        };
        tokio::select! {
            _ = changes.next() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = tokio::time::sleep_until(deadline) => {
                return Err(Error::Deployment {
                    message: format!(
                        "the primary of Cluster {} does not take the new password after {}s ({last})",
                        c.name,
                        timeout.as_secs()
                    ),
                    hints: vec![format!(
                        "Secret {} holds it and the operator sets it: see kubectl describe cluster {} -n {}",
                        c.app_secret(),
                        c.name,
                        c.namespace
                    )],
                    code: 4,
                });
            }
        }
    }
}

/// Go's `url.UserPassword` escaping: what CloudNativePG's `uri` keys hold.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=');

/// Go's `url.QueryEscape`: what the `jdbc-uri` keys hold (a space is `+`).
fn query_escape(s: &str) -> String {
    const QUERY: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b' ');
    utf8_percent_encode(s, QUERY).to_string().replace(' ', "+")
}

/// `value` with the password in its place replaced: after the user in a URI (`:P@`), as the
/// `password=` parameter of a JDBC URI, or as the last field of a pgpass line. Only there, so
/// a password that is also, say, the user's name leaves the name alone.
fn swap(value: &str, olds: &[String; 3], news: &[String; 3]) -> Option<String> {
    const PLACES: [(&str, &str); 5] = [
        (":", "@"),
        ("password=", "&"),
        ("password=", ""),
        (":", "\n"),
        (":", ""),
    ];
    for (old, new) in olds.iter().zip(news) {
        if old.is_empty() {
            continue;
        }
        for (before, after) in PLACES {
            let find = format!("{before}{old}{after}");
            let put = format!("{before}{new}{after}");
            if after.is_empty() {
                if let Some(head) = value.strip_suffix(&find) {
                    return Some(format!("{head}{put}"));
                }
            } else if value.contains(&find) {
                return Some(value.replacen(&find, &put, 1));
            }
        }
    }
    None
}

/// The Secret's data with `new` in place of its password in every key that carries it; the
/// key whose password cannot be found is the error (nothing is then written).
fn with_password(
    values: &BTreeMap<String, String>,
    new: &str,
) -> Result<BTreeMap<String, ByteString>, String> {
    let old = values.get("password").cloned().unwrap_or_default();
    let forms = |p: &str| {
        [
            utf8_percent_encode(p, USERINFO).to_string(),
            query_escape(p),
            p.to_string(),
        ]
    };
    let (olds, news) = (forms(&old), forms(new));
    let mut out = BTreeMap::new();
    for (key, value) in values {
        let value = if key == "password" {
            new.to_string()
        } else if DERIVED.contains(&key.as_str()) {
            swap(value, &olds, &news).ok_or_else(|| key.clone())?
        } else {
            value.clone()
        };
        out.insert(key.clone(), ByteString(value.into_bytes()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(data: &BTreeMap<String, ByteString>, key: &str) -> String {
        String::from_utf8(data[key].0.clone()).unwrap()
    }

    #[test]
    fn every_key_that_carries_the_password_gets_the_new_one() {
        let old = "p@ss w:rd";
        let values: BTreeMap<String, String> = [
            ("username", "app"),
            ("password", old),
            ("pgpass", "pg-rw:5432:app:app:p@ss w:rd\n"),
            ("uri", "postgresql://app:p%40ss%20w%3Ard@pg-rw.ns:5432/app"),
            (
                "jdbc-uri",
                "jdbc:postgresql://pg-rw.ns:5432/app?password=p%40ss+w%3Ard&user=app",
            ),
            ("dbname", "app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let data = with_password(&values, "Fresh123").unwrap();
        assert_eq!(text(&data, "password"), "Fresh123");
        assert_eq!(text(&data, "pgpass"), "pg-rw:5432:app:app:Fresh123\n");
        assert_eq!(
            text(&data, "uri"),
            "postgresql://app:Fresh123@pg-rw.ns:5432/app"
        );
        assert_eq!(
            text(&data, "jdbc-uri"),
            "jdbc:postgresql://pg-rw.ns:5432/app?password=Fresh123&user=app"
        );
        assert_eq!(text(&data, "dbname"), "app");
        assert!(data.values().all(|v| {
            let v = String::from_utf8_lossy(&v.0);
            !v.contains("w%3Ard") && !v.contains("w:rd")
        }));
        // A password equal to the user's name: only the password's place changes.
        let same: BTreeMap<String, String> = [
            ("username", "app"),
            ("password", "app"),
            ("uri", "postgresql://app:app@pg-rw.ns:5432/app"),
            ("pgpass", "pg-rw:5432:app:app:app\n"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let data = with_password(&same, "New").unwrap();
        assert_eq!(text(&data, "uri"), "postgresql://app:New@pg-rw.ns:5432/app");
        assert_eq!(text(&data, "pgpass"), "pg-rw:5432:app:app:New\n");
    }

    #[test]
    fn a_key_without_the_password_stops_the_rotation() {
        let values: BTreeMap<String, String> = [
            ("password", "old"),
            ("uri", "postgresql://app:other@pg-rw/app"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(with_password(&values, "new").unwrap_err(), "uri");
    }
}
