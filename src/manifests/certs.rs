//! The release's TLS material (Secret `R-tls`): a CA of its own and a server certificate it
//! signs, whose SANs are the Service's DNS names and, once known, its outside addresses. What a
//! renewal needs to know (expiry, SANs) is recorded as annotations, so nothing has to parse a
//! certificate; the CA key stays in the Secret (never mounted) so a renewed server certificate
//! chains to the CA clients already trust.

use k8s_openapi::jiff::civil::Date;
use k8s_openapi::jiff::{Span, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::error::Error;

/// Where the server reads its certificate and key.
pub const TLS_MOUNT: &str = "/etc/postgresql/tls";
/// The Secret annotation holding the server certificate's last valid day (`YYYY-MM-DD`).
pub const ANNOTATION_NOT_AFTER: &str = "kubectl-pg.io/tls-not-after";
/// The Secret annotation holding the server certificate's SANs, comma-separated.
pub const ANNOTATION_SANS: &str = "kubectl-pg.io/tls-sans";
/// The pod template annotation that changes with the certificate, so a renewal restarts the
/// server with it.
pub const ANNOTATION_CHECKSUM: &str = "kubectl-pg.io/tls-checksum";
/// How long a server certificate is valid.
pub const SERVER_DAYS: i64 = 397;
/// How long the CA is valid.
pub const CA_DAYS: i64 = 3650;
/// `install --upgrade` renews a server certificate this close to its expiry.
pub const RENEW_DAYS: i64 = 30;

/// `R-tls`
pub fn secret_name(release: &str) -> String {
    format!("{release}-tls")
}

/// The names a client inside the cluster can use for the release (`R`, `R.N`, `R.N.svc`,
/// `R.N.svc.DOMAIN`, the pod's stable name), the loopback names a port-forward is reached at
/// (`localhost`, `127.0.0.1`, `::1`), then `extra` (outside addresses), without repeats.
///
/// Loopback in the certificate is sound here: the CA is the release's own, trusted only by
/// clients given it (`sslrootcert`), and the key never leaves the pod, so whatever answers on
/// a client's loopback proves it is this release's server, as a port-forward carries it.
pub fn sans(release: &str, namespace: &str, domain: &str, extra: &[String]) -> Vec<String> {
    let mut names = vec![
        release.to_string(),
        format!("{release}.{namespace}"),
        format!("{release}.{namespace}.svc"),
        format!("{release}.{namespace}.svc.{domain}"),
        format!("{release}-0.{release}-hl.{namespace}.svc.{domain}"),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    for e in extra {
        if !e.is_empty() && !names.contains(e) {
            names.push(e.clone());
        }
    }
    names
}

/// A CA and a server certificate, in PEM.
#[derive(Clone)]
pub struct TlsMaterial {
    pub ca_crt: String,
    pub ca_key: String,
    pub tls_crt: String,
    pub tls_key: String,
    pub not_after: Date,
    pub sans: Vec<String>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("not_after", &self.not_after)
            .field("sans", &self.sans)
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Changes with the server certificate: the pod template's annotation.
    pub fn checksum(&self) -> String {
        Sha256::digest(self.tls_crt.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

fn tls_error(e: rcgen::Error) -> Error {
    Error::invalid(format!("cannot make the TLS certificates: {e}"))
}

/// Today, in UTC.
pub fn today() -> Date {
    Timestamp::now()
        .to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC)
        .date()
}

/// A day as rcgen takes it (midnight UTC).
macro_rules! rcgen_date {
    ($date:expr) => {{
        let date: Date = $date;
        rcgen::date_time_ymd(i32::from(date.year()), date.month() as u8, date.day() as u8)
    }};
}

fn plus_days(date: Date, days: i64) -> Date {
    date.checked_add(Span::new().days(days)).unwrap_or(date)
}

/// The CA's parameters: the same for a release every time, so a CA key read back signs
/// certificates its old CA certificate verifies.
fn ca_params(release: &str, namespace: &str, today: Date) -> Result<CertificateParams, Error> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls_error)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kubectl-pg");
    dn.push(
        DnType::CommonName,
        format!("kubectl-pg CA {namespace}/{release}"),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = rcgen_date!(plus_days(today, -1));
    params.not_after = rcgen_date!(plus_days(today, CA_DAYS));
    Ok(params)
}

/// Issues a server certificate for `sans`, signed by the CA given (PEM certificate and key),
/// or by a new CA.
pub fn issue(
    release: &str,
    namespace: &str,
    sans: &[String],
    ca: Option<(&str, &str)>,
    today: Date,
) -> Result<TlsMaterial, Error> {
    let (ca_crt, ca_key) = match ca {
        Some((crt, key)) => (crt.to_string(), KeyPair::from_pem(key).map_err(tls_error)?),
        None => {
            let key = KeyPair::generate().map_err(tls_error)?;
            let cert = ca_params(release, namespace, today)?
                .self_signed(&key)
                .map_err(tls_error)?;
            (cert.pem(), key)
        }
    };
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params(release, namespace, today)?, ca_key);
    let mut params = CertificateParams::new(sans.to_vec()).map_err(tls_error)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kubectl-pg");
    dn.push(
        DnType::CommonName,
        sans.get(3).cloned().unwrap_or_else(|| release.to_string()),
    );
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let not_after = plus_days(today, SERVER_DAYS);
    params.not_before = rcgen_date!(plus_days(today, -1));
    params.not_after = rcgen_date!(not_after);
    let key = KeyPair::generate().map_err(tls_error)?;
    let cert = params.signed_by(&key, &issuer).map_err(tls_error)?;
    Ok(TlsMaterial {
        ca_crt,
        ca_key: ca_key_pem,
        tls_crt: cert.pem(),
        tls_key: key.serialize_pem(),
        not_after,
        sans: sans.to_vec(),
    })
}

/// What a live `R-tls` Secret holds, from its keys and annotations; None when a piece is
/// missing (then a new CA and certificate are made).
pub fn from_secret(
    values: &std::collections::BTreeMap<String, String>,
    annotations: Option<&std::collections::BTreeMap<String, String>>,
) -> Option<TlsMaterial> {
    let get = |k: &str| values.get(k).filter(|v| !v.is_empty()).cloned();
    let annotations = annotations?;
    Some(TlsMaterial {
        ca_crt: get("ca.crt")?,
        ca_key: get("ca.key")?,
        tls_crt: get("tls.crt")?,
        tls_key: get("tls.key")?,
        not_after: annotations.get(ANNOTATION_NOT_AFTER)?.parse().ok()?,
        sans: annotations
            .get(ANNOTATION_SANS)?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// Why a live certificate must be renewed: it expires within [`RENEW_DAYS`], or lacks a name
/// the release now has (a LoadBalancer's address once known). None: keep it.
pub fn renewal_reason(live: &TlsMaterial, wanted: &[String], today: Date) -> Option<String> {
    if live.not_after < plus_days(today, RENEW_DAYS) {
        return Some(format!("it expires on {}", live.not_after));
    }
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|w| !live.sans.contains(w))
        .map(String::as_str)
        .collect();
    (!missing.is_empty()).then(|| format!("it does not name {}", missing.join(", ")))
}

/// `Secret R-tls` (`kubernetes.io/tls`: tls.crt, tls.key, and ca.crt, ca.key).
pub fn secret(labels: Value, release: &str, namespace: &str, tls: &TlsMaterial) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(release),
            "namespace": namespace,
            "labels": labels,
            "annotations": {
                ANNOTATION_NOT_AFTER: tls.not_after.to_string(),
                ANNOTATION_SANS: tls.sans.join(","),
            },
        },
        "type": "kubernetes.io/tls",
        "stringData": {
            "ca.crt": tls.ca_crt,
            "ca.key": tls.ca_key,
            "tls.crt": tls.tls_crt,
            "tls.key": tls.tls_key,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_the_service() {
        let names = sans(
            "pg",
            "db",
            "cluster.local",
            &["203.0.113.7".into(), "pg".into()],
        );
        assert_eq!(names[3], "pg.db.svc.cluster.local");
        assert!(names.contains(&"203.0.113.7".to_string()));
        assert_eq!(names.iter().filter(|n| *n == "pg").count(), 1);
    }

    #[test]
    fn issues_renews_with_the_same_ca_and_reads_back() {
        let today = today();
        let names = sans("pg", "db", "cluster.local", &[]);
        let first = issue("pg", "db", &names, None, today).unwrap();
        assert!(first.ca_crt.contains("BEGIN CERTIFICATE"));
        assert!(first.tls_key.contains("PRIVATE KEY"));
        assert_eq!(first.not_after, plus_days(today, SERVER_DAYS));
        let renewed = issue(
            "pg",
            "db",
            &names,
            Some((&first.ca_crt, &first.ca_key)),
            today,
        )
        .unwrap();
        assert_eq!(renewed.ca_crt, first.ca_crt);
        assert_ne!(renewed.tls_crt, first.tls_crt);
        assert_ne!(renewed.checksum(), first.checksum());
        // The renewed certificate chains to the CA clients already have.
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile_certs(&first.ca_crt) {
            roots.add(cert).unwrap();
        }
        let leaf = rustls_pemfile_certs(&renewed.tls_crt).remove(0);
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let name = rustls::pki_types::ServerName::try_from("pg.db.svc.cluster.local").unwrap();
        verifier
            .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
            .unwrap();
        // A port-forward's loopback addresses, as IP SANs.
        for local in ["127.0.0.1", "::1", "localhost"] {
            let name = rustls::pki_types::ServerName::try_from(local).unwrap();
            verifier
                .verify_server_cert(&leaf, &[], &name, &[], rustls::pki_types::UnixTime::now())
                .unwrap();
        }
        let wrong = rustls::pki_types::ServerName::try_from("other.db.svc").unwrap();
        assert!(verifier
            .verify_server_cert(&leaf, &[], &wrong, &[], rustls::pki_types::UnixTime::now())
            .is_err());

        let object = secret(json!({}), "pg", "db", &first);
        let values = object["stringData"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let annotations = object["metadata"]["annotations"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        let back = from_secret(&values, Some(&annotations)).unwrap();
        assert_eq!(back.not_after, first.not_after);
        assert_eq!(back.sans, names);
    }

    fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn renews_before_expiry_or_for_a_new_name() {
        let today = today();
        let names = sans("pg", "db", "cluster.local", &[]);
        let mut live = TlsMaterial {
            ca_crt: String::new(),
            ca_key: String::new(),
            tls_crt: String::new(),
            tls_key: String::new(),
            not_after: plus_days(today, 200),
            sans: names.clone(),
        };
        assert_eq!(renewal_reason(&live, &names, today), None);
        let mut more = names.clone();
        more.push("198.51.100.4".into());
        assert!(renewal_reason(&live, &more, today)
            .unwrap()
            .contains("198.51.100.4"));
        live.not_after = plus_days(today, 10);
        assert!(renewal_reason(&live, &names, today)
            .unwrap()
            .contains("expires"));
    }
}
