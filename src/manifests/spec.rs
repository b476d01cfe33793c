//! What to deploy: the seed's Helm-style values (dev and prod profiles), each overridable by
//! its flag, validated before any API call.

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

/// Where the data volume is mounted and where PGDATA lives in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataLayout {
    /// Up to 17, as the official images ship: the volume at `/var/lib/postgresql/data`,
    /// PGDATA in its subdirectory `pgdata` (initdb refuses a directory holding `lost+found`).
    Legacy,
    /// 18's layout, for any major: the volume at `/var/lib/postgresql`, PGDATA in
    /// `N/docker` under it. One directory per major, so an upgrade keeps the old one beside.
    Versioned,
}

impl DataLayout {
    /// What a new release of `major` gets: the image's own layout.
    pub fn default_for(major: u32) -> Self {
        if major >= 18 {
            DataLayout::Versioned
        } else {
            DataLayout::Legacy
        }
    }

    /// The volume's mount path in the container.
    pub fn mount(self) -> &'static str {
        match self {
            DataLayout::Legacy => "/var/lib/postgresql/data",
            DataLayout::Versioned => "/var/lib/postgresql",
        }
    }

    /// PGDATA relative to the volume's root.
    pub fn data_dir(self, major: u32) -> String {
        match self {
            DataLayout::Legacy => "pgdata".into(),
            DataLayout::Versioned => format!("{major}/docker"),
        }
    }

    /// PGDATA as the container sees it.
    pub fn pgdata(self, major: u32) -> String {
        format!("{}/{}", self.mount(), self.data_dir(major))
    }

    /// The PGDATA variable to set, None where the image's default is the same (18+).
    pub fn pgdata_env(self, major: u32) -> Option<String> {
        match self {
            DataLayout::Versioned if major >= 18 => None,
            _ => Some(self.pgdata(major)),
        }
    }

    /// The name annotations use.
    pub fn name(self) -> &'static str {
        match self {
            DataLayout::Legacy => "legacy",
            DataLayout::Versioned => "versioned",
        }
    }

    /// The layout whose mount path this is.
    pub fn from_mount(mount: &str) -> Self {
        if mount.trim_end_matches('/') == "/var/lib/postgresql" {
            DataLayout::Versioned
        } else {
            DataLayout::Legacy
        }
    }

    /// The layout of [`DataLayout::name`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "legacy" => Some(DataLayout::Legacy),
            "versioned" => Some(DataLayout::Versioned),
            _ => None,
        }
    }
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
    /// The cluster's DNS domain, for the hosts in the Secret, `dsn` and `status`.
    pub cluster_domain: String,
    /// `--load-balancer-source-ranges`: the client CIDRs a LoadBalancer lets in (empty: all).
    pub source_ranges: Vec<String>,
    /// `--tls`, or a release that served TLS already: TLS even on a ClusterIP Service.
    pub tls: bool,
    /// The server certificate's checksum, once install has made or read `R-tls`: the pod
    /// template carries it, so a renewed certificate restarts the server.
    pub tls_checksum: Option<String>,
    /// Where the volume is mounted and PGDATA lives (read back from a live release).
    pub layout: DataLayout,
}

/// What the user asked for on the command line: each field is set only when its flag was
/// given, so an upgrade can tell a flag from a default.
#[derive(Debug, Clone, Default)]
pub struct Requested {
    /// `--profile prod` (Some(true)) or `--profile dev` (Some(false)).
    pub prod: Option<bool>,
    pub major: Option<u32>,
    pub image: Option<String>,
    pub database: Option<String>,
    pub username: Option<String>,
    pub storage_size: Option<String>,
    pub storage_class: Option<String>,
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
    pub service_type: Option<String>,
    pub existing_secret: Option<String>,
    pub cluster_domain: Option<String>,
    /// `--tls`
    pub tls: Option<bool>,
    /// `--load-balancer-source-ranges`
    pub source_ranges: Option<Vec<String>>,
}

fn unsupported_major(major: u32) -> Error {
    Error::InvalidInput {
        message: format!("unsupported --postgres-version {major}"),
        hint: Some(format!(
            "supported majors: {}",
            IMAGES
                .iter()
                .map(|(m, _)| m.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The major an image's tag names (`postgres:16.4-bookworm` → 16), when it names one.
pub fn image_major(image: &str) -> Option<u32> {
    let name = image.split('@').next()?;
    let (_, tag) = name.rsplit_once(':').filter(|(n, _)| !n.ends_with('/'))?;
    tag.split(['.', '-']).next()?.parse().ok()
}

impl InstallSpec {
    /// A new release: the profile, then the flags, then validates everything.
    pub fn from_request(req: &Requested, release: &str, namespace: &str) -> Result<Self, Error> {
        validate_release(release)?;
        validate_namespace(namespace)?;
        let prod = req.prod.unwrap_or(false);
        let major = req.major.unwrap_or(DEFAULT_MAJOR);
        let pinned = pinned_image(major).ok_or_else(|| unsupported_major(major))?;
        let pick = |flag: &Option<String>, prod_value: &str| -> Option<String> {
            flag.clone()
                .or_else(|| prod.then(|| prod_value.to_string()))
        };
        let spec = Self {
            release: release.to_string(),
            namespace: namespace.to_string(),
            major,
            image: req.image.clone().unwrap_or_else(|| pinned.to_string()),
            database: req.database.clone().unwrap_or_else(|| "learnflow".into()),
            username: req.username.clone().unwrap_or_else(|| "postgres".into()),
            storage_size: req
                .storage_size
                .clone()
                .unwrap_or_else(|| if prod { "20Gi" } else { "8Gi" }.to_string()),
            storage_class: req.storage_class.clone().filter(|c| !c.is_empty()),
            cpu_request: pick(&req.cpu_request, "500m"),
            memory_request: pick(&req.memory_request, "512Mi"),
            cpu_limit: pick(&req.cpu_limit, "2000m"),
            memory_limit: pick(&req.memory_limit, "2Gi"),
            service_type: req
                .service_type
                .clone()
                .unwrap_or_else(|| if prod { "LoadBalancer" } else { "ClusterIP" }.to_string()),
            existing_secret: req.existing_secret.clone(),
            cluster_domain: req
                .cluster_domain
                .clone()
                .unwrap_or_else(|| crate::cluster::release::DEFAULT_CLUSTER_DOMAIN.into()),
            source_ranges: req.source_ranges.clone().unwrap_or_default(),
            tls: req.tls.unwrap_or(false),
            tls_checksum: None,
            layout: DataLayout::default_for(major),
        };
        spec.validate(prod)?;
        Ok(spec)
    }

    /// `install --upgrade`: the deployed release's values, each overridden only by a flag that
    /// was given. The major and the data volume never change here: those are refused with the
    /// command that does change them.
    pub fn for_upgrade(req: &Requested, live: &InstallSpec) -> Result<Self, Error> {
        let upgrade_hint = |major: u32| {
            format!(
                "a major upgrade keeps the data: kubectl pg upgrade {} -n {} --postgres-version {major}",
                live.release, live.namespace
            )
        };
        let asked_major = req
            .major
            .or_else(|| req.image.as_deref().and_then(image_major));
        if let Some(major) = asked_major.filter(|m| *m != live.major) {
            pinned_image(major).ok_or_else(|| unsupported_major(major))?;
            return Err(Error::InvalidInput {
                message: format!(
                    "release {} runs PostgreSQL {}: --upgrade never changes the major version (asked for {major})",
                    live.release, live.major
                ),
                hint: Some(upgrade_hint(major)),
            });
        }
        // A new size grows the claim itself (install checks it against the claim's class and
        // request); the volumeClaimTemplates, immutable, keep the size the release was made with.
        if let Some(size) = &req.storage_size {
            check_quantity("--storage-size", size)?;
        }
        if let Some(class) = req
            .storage_class
            .as_ref()
            .filter(|c| live.storage_class.as_ref() != Some(*c))
        {
            return Err(Error::InvalidInput {
                message: format!(
                    "the data volume's StorageClass is {}: --upgrade cannot change it to {class:?}",
                    live.storage_class
                        .as_deref()
                        .unwrap_or("the cluster default")
                ),
                hint: Some(
                    "move the data with kubectl pg dump and kubectl pg restore into a new release"
                        .into(),
                ),
            });
        }
        let prod = req.prod.unwrap_or(false);
        let profile = |flag: &Option<String>, live: &Option<String>, prod_value: &str| {
            flag.clone().or_else(|| {
                if req.prod == Some(true) {
                    Some(prod_value.to_string())
                } else {
                    live.clone()
                }
            })
        };
        let spec = Self {
            release: live.release.clone(),
            namespace: live.namespace.clone(),
            major: live.major,
            image: req.image.clone().unwrap_or_else(|| {
                if req.major.is_some() {
                    pinned_image(live.major).unwrap_or(&live.image).to_string()
                } else {
                    live.image.clone()
                }
            }),
            database: req
                .database
                .clone()
                .unwrap_or_else(|| live.database.clone()),
            username: req
                .username
                .clone()
                .unwrap_or_else(|| live.username.clone()),
            storage_size: live.storage_size.clone(),
            storage_class: live.storage_class.clone(),
            cpu_request: profile(&req.cpu_request, &live.cpu_request, "500m"),
            memory_request: profile(&req.memory_request, &live.memory_request, "512Mi"),
            cpu_limit: profile(&req.cpu_limit, &live.cpu_limit, "2000m"),
            memory_limit: profile(&req.memory_limit, &live.memory_limit, "2Gi"),
            service_type: req.service_type.clone().unwrap_or_else(|| {
                if req.prod == Some(true) {
                    "LoadBalancer".into()
                } else {
                    live.service_type.clone()
                }
            }),
            existing_secret: req
                .existing_secret
                .clone()
                .or_else(|| live.existing_secret.clone()),
            cluster_domain: req
                .cluster_domain
                .clone()
                .unwrap_or_else(|| live.cluster_domain.clone()),
            // Once a release serves TLS it keeps serving it: its clients may rely on it.
            source_ranges: req
                .source_ranges
                .clone()
                .unwrap_or_else(|| live.source_ranges.clone()),
            tls: req.tls.unwrap_or(false) || live.serves_tls(),
            tls_checksum: None,
            layout: live.layout,
        };
        spec.validate(prod)?;
        Ok(spec)
    }

    /// Whether the server runs with TLS (Secret `R-tls`, `ssl = on`, non-local connections
    /// only over TLS): when its Service is exposed (LoadBalancer, NodePort) or `--tls` asked.
    pub fn serves_tls(&self) -> bool {
        self.tls || matches!(self.service_type.as_str(), "LoadBalancer" | "NodePort")
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
        for range in &self.source_ranges {
            check_cidr(range)?;
        }
        if !self.source_ranges.is_empty() && self.service_type != "LoadBalancer" {
            return Err(Error::InvalidInput {
                message: format!(
                    "--load-balancer-source-ranges restricts a LoadBalancer, and the Service is {}",
                    self.service_type
                ),
                hint: Some("add --service-type LoadBalancer, or leave the ranges out".into()),
            });
        }
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
        check_subdomain(&self.cluster_domain).map_err(|_| {
            Error::invalid(format!(
                "invalid --cluster-domain {:?}: a DNS name such as cluster.local",
                self.cluster_domain
            ))
        })?;
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
/// A CIDR as Kubernetes takes it in `loadBalancerSourceRanges`: an address and a prefix length.
pub fn check_cidr(range: &str) -> Result<(), Error> {
    let valid = range.split_once('/').is_some_and(|(ip, bits)| {
        match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
            (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
            (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
            _ => false,
        }
    });
    if valid {
        return Ok(());
    }
    Err(Error::InvalidInput {
        message: format!(
            "invalid --load-balancer-source-ranges entry {range:?}: use CIDRs like 203.0.113.0/24 or 2001:db8::/32"
        ),
        hint: None,
    })
}

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
impl InstallSpec {
    /// Release `pg` in namespace `db`, the dev profile's values.
    pub fn example(major: u32) -> Self {
        InstallSpec {
            release: "pg".into(),
            namespace: "db".into(),
            major,
            image: format!("postgres:{major}"),
            database: "learnflow".into(),
            username: "postgres".into(),
            storage_size: "8Gi".into(),
            storage_class: None,
            cpu_request: None,
            memory_request: None,
            cpu_limit: None,
            memory_limit: None,
            service_type: "ClusterIP".into(),
            existing_secret: None,
            cluster_domain: "cluster.local".into(),
            source_ranges: Vec::new(),
            tls: false,
            tls_checksum: None,
            layout: DataLayout::default_for(major),
        }
    }
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
            username: username.into(),
            database: database.into(),
            ..InstallSpec::example(18)
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

    #[test]
    fn source_ranges_are_cidrs_for_a_load_balancer() {
        assert!(check_cidr("203.0.113.0/24").is_ok());
        assert!(check_cidr("2001:db8::/32").is_ok());
        for bad in ["203.0.113.0", "203.0.113.0/33", "example.com/8", "::/129"] {
            assert!(check_cidr(bad).is_err(), "{bad}");
        }
        let req = Requested {
            source_ranges: Some(vec!["10.0.0.0/8".into()]),
            ..Requested::default()
        };
        let err = InstallSpec::from_request(&req, "pg", "db").unwrap_err();
        assert!(err.to_string().contains("LoadBalancer"), "{err}");
        let req = Requested {
            service_type: Some("LoadBalancer".into()),
            ..req
        };
        let spec = InstallSpec::from_request(&req, "pg", "db").unwrap();
        assert!(spec.serves_tls());
        let service = crate::manifests::render::service(&spec);
        assert_eq!(service["spec"]["loadBalancerSourceRanges"][0], "10.0.0.0/8");
    }
}

/// Fuzzing: every install flag is user input; validation may refuse any of it, never panic, and
/// what it accepts is a valid object name and quantity.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::{InstallSpec, Requested};

    fn value() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            "[a-z0-9-]{0,70}",
            "[0-9]{0,4}(\\.[0-9]{0,3})?(m|Mi|Gi|Ti|k|M|G|e3|E|Ei)?",
            any::<String>(),
            Just("pg_x".to_string()),
            Just("template0".to_string()),
            Just("LoadBalancer".to_string()),
        ])
    }

    proptest! {
        #![proptest_config(crate::fuzz_config(2000))]

        #[test]
        fn validation_never_panics(
            release in "[a-zA-Z0-9.-]{0,60}",
            namespace in "[a-z0-9-]{0,70}",
            major in prop::option::of(0u32..40),
            fields in prop::collection::vec(value(), 12),
            prod in prop::option::of(any::<bool>()),
        ) {
            let requested = Requested {
                prod,
                major,
                image: fields[0].clone(),
                database: fields[1].clone(),
                username: fields[2].clone(),
                storage_size: fields[3].clone(),
                storage_class: fields[4].clone(),
                cpu_request: fields[5].clone(),
                memory_request: fields[6].clone(),
                cpu_limit: fields[7].clone(),
                memory_limit: fields[8].clone(),
                service_type: fields[9].clone(),
                existing_secret: fields[10].clone(),
                cluster_domain: fields[11].clone(),
                ..Requested::default()
            };
            if let Ok(spec) = InstallSpec::from_request(&requested, &release, &namespace) {
                prop_assert!(spec.release.len() <= 52 && !spec.release.is_empty());
                prop_assert!(spec.release.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
                prop_assert!(super::quantity_value(&spec.storage_size).is_some());
                prop_assert!(!spec.username.starts_with("pg_"));
                let upgraded = InstallSpec::for_upgrade(&requested, &spec);
                let _ = upgraded;
            }
        }

        #[test]
        fn quantities_and_images_never_panic(text in any::<String>()) {
            let _ = super::quantity_value(&text);
            let _ = super::check_quantity("--storage-size", &text);
            let _ = super::image_major(&text);
        }
    }
}
