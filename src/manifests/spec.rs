//! What to deploy: the seed's Helm-style values (dev and prod profiles), each overridable by
//! its flag, validated before any API call.

use crate::cli::{InstallArgs, Profile};
use crate::cluster::release::{validate_namespace, validate_release};
use crate::error::Error;

/// The PostgreSQL majors we deploy, each pinned to an exact image tag.
pub const IMAGES: &[(u32, &str)] = &[
    (14, "postgres:14.20"),
    (15, "postgres:15.15"),
    (16, "postgres:16.11"),
    (17, "postgres:17.7"),
    (18, "postgres:18.1"),
];

/// The newest stable major, the default of `--postgres-version`.
pub const DEFAULT_MAJOR: u32 = 18;

/// The pinned image of a major.
pub fn pinned_image(major: u32) -> Option<&'static str> {
    IMAGES
        .iter()
        .find(|(m, _)| *m == major)
        .map(|(_, image)| *image)
}

/// Everything the manifests are made from.
#[derive(Debug, Clone)]
pub struct InstallSpec {
    pub release: String,
    pub namespace: String,
    pub major: u32,
    pub image: String,
    pub database: String,
    pub username: String,
    pub storage_size: String,
    pub storage_class: Option<String>,
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub service_type: String,
    /// A Secret the user manages; the credentials come from it and we never touch it.
    pub existing_secret: Option<String>,
}

impl InstallSpec {
    /// Applies the profile, then the flags, then validates everything.
    pub fn from_args(args: &InstallArgs, release: &str, namespace: &str) -> Result<Self, Error> {
        validate_release(release)?;
        validate_namespace(namespace)?;
        let prod = args.profile == Profile::Prod;
        let major = args.postgres_version;
        let pinned = pinned_image(major).ok_or_else(|| Error::InvalidInput {
            message: format!("unsupported --postgres-version {major}"),
            hint: Some(format!(
                "supported majors: {}",
                IMAGES
                    .iter()
                    .map(|(m, _)| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })?;
        let pick = |flag: &Option<String>, prod_value: &str| -> Option<String> {
            flag.clone()
                .or_else(|| prod.then(|| prod_value.to_string()))
        };
        let spec = Self {
            release: release.to_string(),
            namespace: namespace.to_string(),
            major,
            image: args.image.clone().unwrap_or_else(|| pinned.to_string()),
            database: args.database.clone(),
            username: args.username.clone(),
            storage_size: args
                .storage_size
                .clone()
                .unwrap_or_else(|| if prod { "20Gi" } else { "8Gi" }.to_string()),
            storage_class: args.storage_class.clone().filter(|c| !c.is_empty()),
            cpu_request: pick(&args.cpu_request, "500m"),
            memory_request: pick(&args.memory_request, "512Mi"),
            cpu_limit: pick(&args.cpu_limit, "2000m"),
            memory_limit: pick(&args.memory_limit, "2Gi"),
            service_type: args
                .service_type
                .clone()
                .unwrap_or_else(|| if prod { "LoadBalancer" } else { "ClusterIP" }.to_string()),
            existing_secret: args.existing_secret.clone(),
        };
        spec.validate(prod)?;
        Ok(spec)
    }

    fn validate(&self, prod: bool) -> Result<(), Error> {
        if prod && self.existing_secret.is_none() {
            return Err(Error::InvalidInput {
                message: "--profile prod needs --existing-secret: production credentials are managed outside kubectl-pg".into(),
                hint: Some(
                    "kubectl create secret generic pg-credentials --from-literal=username=postgres --from-literal=password=… --from-literal=database=learnflow"
                        .into(),
                ),
            });
        }
        check_quantity("--storage-size", &self.storage_size)?;
        for (flag, value) in [
            ("--cpu-request", &self.cpu_request),
            ("--memory-request", &self.memory_request),
            ("--cpu-limit", &self.cpu_limit),
            ("--memory-limit", &self.memory_limit),
        ] {
            if let Some(v) = value {
                check_quantity(flag, v)?;
            }
        }
        for (request, limit, what) in [
            (&self.cpu_request, &self.cpu_limit, "cpu"),
            (&self.memory_request, &self.memory_limit, "memory"),
        ] {
            if let (Some(r), Some(l)) = (request, limit) {
                if quantity_value(r) > quantity_value(l) {
                    return Err(Error::invalid(format!(
                        "--{what}-request {r} is above --{what}-limit {l}"
                    )));
                }
            }
        }
        if !matches!(
            self.service_type.as_str(),
            "ClusterIP" | "NodePort" | "LoadBalancer"
        ) {
            return Err(Error::invalid(format!(
                "invalid --service-type {:?}: use ClusterIP, NodePort or LoadBalancer",
                self.service_type
            )));
        }
        for (flag, value) in [
            ("--database", &self.database),
            ("--username", &self.username),
        ] {
            let ok = !value.is_empty()
                && value.len() <= 63
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !value.as_bytes()[0].is_ascii_digit();
            if !ok {
                return Err(Error::invalid(format!(
                    "invalid {flag} {value:?}: letters, digits and '_', not starting with a digit, at most 63 characters"
                )));
            }
        }
        if self.username.starts_with("pg_") {
            return Err(Error::invalid(format!(
                "invalid --username {:?}: names starting with pg_ are reserved by PostgreSQL",
                self.username
            )));
        }
        if matches!(self.database.as_str(), "template0" | "template1") {
            return Err(Error::invalid(format!(
                "invalid --database {:?}: the template databases cannot hold an application",
                self.database
            )));
        }
        if let Some(secret) = &self.existing_secret {
            check_subdomain(secret)?;
        }
        if let Some(class) = &self.storage_class {
            check_subdomain(class)?;
        }
        Ok(())
    }

    /// The Secret holding the credentials: ours (`R-credentials`) or the user's.
    pub fn secret_name(&self) -> String {
        self.existing_secret
            .clone()
            .unwrap_or_else(|| crate::cluster::release::secret_name(&self.release))
    }
}

fn check_subdomain(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|part| crate::cluster::release::validate_label("name", part, 63).is_ok());
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "invalid name {name:?}: must be a DNS-1123 subdomain"
        )))
    }
}

/// Checks a Kubernetes quantity (`8Gi`, `500m`, `1.5`, `2e3`).
pub fn check_quantity(flag: &str, value: &str) -> Result<(), Error> {
    if quantity_value(value).is_some_and(|v| v > 0.0) {
        return Ok(());
    }
    Err(Error::InvalidInput {
        message: format!("invalid {flag} {value:?}: not a positive Kubernetes quantity"),
        hint: Some("examples: 8Gi, 500Mi, 500m, 2".into()),
    })
}

/// The value of a quantity in base units, `None` when it is not one.
pub fn quantity_value(value: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, factor)| value.strip_suffix(suffix).map(|n| (n, *factor)))
        .unwrap_or((value, 1.0));
    let valid_chars = !number.is_empty()
        && number.bytes().all(|b| {
            b.is_ascii_digit() || b == b'.' || b == b'e' || b == b'E' || b == b'+' || b == b'-'
        });
    if !valid_chars || number.starts_with('-') {
        return None;
    }
    number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(|v| v * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(quantity_value("8Gi"), Some(8.0 * 1073741824.0));
        assert_eq!(quantity_value("500m"), Some(0.5));
        assert_eq!(quantity_value("2"), Some(2.0));
        for bad in ["", "Gi", "8GB", "-1Gi", "abc", "1.2.3"] {
            assert!(check_quantity("--storage-size", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reserved_names_are_refused() {
        let spec = |username: &str, database: &str| InstallSpec {
            release: "pg".into(),
            namespace: "db".into(),
            major: 18,
            image: "postgres:18".into(),
            database: database.into(),
            username: username.into(),
            storage_size: "8Gi".into(),
            storage_class: None,
            cpu_request: None,
            memory_request: None,
            cpu_limit: None,
            memory_limit: None,
            service_type: "ClusterIP".into(),
            existing_secret: None,
        };
        assert!(spec("app", "learnflow").validate(false).is_ok());
        for (user, db) in [
            ("pg_app", "learnflow"),
            ("app", "template0"),
            ("app", "template1"),
        ] {
            let err = spec(user, db).validate(false).unwrap_err().to_string();
            assert!(
                err.contains(if user == "app" {
                    "--database"
                } else {
                    "--username"
                }),
                "{err}"
            );
        }
    }

    #[test]
    fn every_supported_major_is_pinned_to_an_exact_tag() {
        for (major, image) in IMAGES {
            let tag = image.split(':').nth(1).unwrap();
            assert!(tag.starts_with(&format!("{major}.")), "{image}");
            assert_ne!(tag, "latest");
        }
        assert!(pinned_image(DEFAULT_MAJOR).is_some());
    }
}
