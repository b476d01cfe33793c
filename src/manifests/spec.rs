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
    /// Node-local disk: the container's ephemeral-storage request and limit and the
    /// emptyDirs' size limits (read back from a live release).
    pub ephemeral: Ephemeral,
}

/// The node-local disk a release's pod uses besides its claim. The server writes almost
/// nothing there: its sort and hash spills go to `base/pgsql_tmp` in PGDATA (the claim),
/// `/var/run/postgresql` holds a socket and a lock file, and its log is the container log, which
/// the kubelet rotates (10Mi x 5 by default) and counts as ephemeral storage. `/tmp` is for what
/// operators run in the pod (`kubectl exec … psql -o /tmp/…`). A pod past its limit or an emptyDir
/// past its sizeLimit is evicted, so the limits leave room; the request, which the scheduler
/// reserves, is what the pod is expected to use. `/dev/shm` is memory, not disk: its
/// sizeLimit stays with the memory values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ephemeral {
    /// The container's `ephemeral-storage` request.
    pub request: String,
    /// The container's `ephemeral-storage` limit: the emptyDirs' limits and the rotated logs fit
    /// under it, so the emptyDir that fills up is the one named in the eviction.
    pub limit: String,
    /// The `/tmp` emptyDir's sizeLimit.
    pub tmp: String,
    /// The `/var/run/postgresql` emptyDir's sizeLimit.
    pub run: String,
}

impl Ephemeral {
    /// dev: fits a laptop cluster's node (kind's disk is the laptop's), reserving little.
    pub fn dev() -> Self {
        Self {
            request: "128Mi".into(),
            limit: "2Gi".into(),
            tmp: "1Gi".into(),
            run: "16Mi".into(),
        }
    }

    /// prod: reserves the logs' full rotation and room for an operator's file in `/tmp`; a
    /// larger limit, since an eviction of the database costs far more than disk.
    pub fn prod() -> Self {
        Self {
            request: "1Gi".into(),
            limit: "8Gi".into(),
            tmp: "4Gi".into(),
            run: "16Mi".into(),
        }
    }

    /// The profile's values.
    pub fn of_profile(prod: bool) -> Self {
        if prod {
            Self::prod()
        } else {
            Self::dev()
        }
    }
}

/// One optional value of a spec, to compare it with the live release's.
type Field = fn(&InstallSpec) -> Option<&str>;

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
            source_ranges: req
                .source_ranges
                .as_deref()
                .map(trimmed)
                .unwrap_or_default(),
            tls: req.tls.unwrap_or(false),
            tls_checksum: None,
            layout: DataLayout::default_for(major),
            ephemeral: Ephemeral::of_profile(prod),
        };
        spec.validate(prod, None)?;
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
            check_quantity("--storage-size", size, Resource::Storage)?;
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
                .as_deref()
                .map_or_else(|| live.source_ranges.clone(), trimmed),
            tls: req.tls.unwrap_or(false) || live.serves_tls(),
            tls_checksum: None,
            layout: live.layout,
            // As the other profile values: `--profile prod` sets prod's, else the live ones.
            ephemeral: if req.prod == Some(true) {
                Ephemeral::prod()
            } else {
                live.ephemeral.clone()
            },
        };
        spec.validate(prod, Some(live))?;
        Ok(spec)
    }

    /// Whether the server runs with TLS (Secret `R-tls`, `ssl = on`, non-local connections
    /// only over TLS): when its Service is exposed (LoadBalancer, NodePort) or `--tls` asked.
    pub fn serves_tls(&self) -> bool {
        self.tls || matches!(self.service_type.as_str(), "LoadBalancer" | "NodePort")
    }

    /// Checks every value; on an upgrade (`live`), a value the release already runs with is
    /// not judged again: it works, and rules newer than the release must not lock it in.
    fn validate(&self, prod: bool, live: Option<&InstallSpec>) -> Result<(), Error> {
        let new =
            |field: fn(&InstallSpec) -> Option<&str>| live.is_none_or(|l| field(l) != field(self));
        if prod && self.existing_secret.is_none() {
            return Err(Error::InvalidInput {
                message: "--profile prod needs --existing-secret: production credentials are managed outside kubectl-pg".into(),
                hint: Some(
                    "kubectl create secret generic pg-credentials --from-literal=username=postgres --from-literal=password=… --from-literal=database=learnflow"
                        .into(),
                ),
            });
        }
        if new(|s| Some(&s.image)) {
            check_image("--image", &self.image)?;
        }
        if new(|s| Some(&s.storage_size)) {
            check_quantity("--storage-size", &self.storage_size, Resource::Storage)?;
        }
        if live.is_none_or(|l| l.source_ranges != self.source_ranges) {
            for range in &self.source_ranges {
                check_cidr(range)?;
            }
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
        let quantities: [(&str, Field, Resource); 4] = [
            ("--cpu-request", |s| s.cpu_request.as_deref(), Resource::Cpu),
            (
                "--memory-request",
                |s| s.memory_request.as_deref(),
                Resource::Memory,
            ),
            ("--cpu-limit", |s| s.cpu_limit.as_deref(), Resource::Cpu),
            (
                "--memory-limit",
                |s| s.memory_limit.as_deref(),
                Resource::Memory,
            ),
        ];
        for (flag, field, resource) in quantities {
            if let Some(v) = field(self).filter(|_| new(field)) {
                check_quantity(flag, v, resource)?;
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
        if let Some(reason) = crate::database::roles::reserved_role(&self.username)
            .filter(|_| new(|s| Some(&s.username)))
        {
            return Err(Error::InvalidInput {
                message: format!("invalid --username {:?}: {reason}", self.username),
                hint: Some("the default, postgres, or a name such as app_owner".into()),
            });
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

/// The values with the space around each dropped (`10.0.0.0/8, 192.168.0.0/16` as typed).
fn trimmed(values: &[String]) -> Vec<String> {
    values.iter().map(|v| v.trim().to_string()).collect()
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

/// A CIDR as Kubernetes (1.36+, `StrictIPCIDRValidation`) takes it in
/// `loadBalancerSourceRanges`: an address and a prefix length, no bits set beyond the prefix,
/// no leading zeros, no IPv4-mapped IPv6 address. Space around it is dropped, as the API does.
pub fn check_cidr(range: &str) -> Result<(), Error> {
    let refuse = |why: String, hint: Option<String>| Error::InvalidInput {
        message: format!("invalid --load-balancer-source-ranges entry {range:?}: {why}"),
        hint: Some(hint.unwrap_or_else(|| "use CIDRs like 203.0.113.0/24 or 2001:db8::/32".into())),
    };
    let trimmed = range.trim();
    let Some((ip, bits)) = trimmed.split_once('/') else {
        return Err(refuse(
            "not a CIDR (ADDRESS/PREFIX)".into(),
            Some(format!(
                "a single address is {trimmed}/32 (IPv4) or {trimmed}/128 (IPv6)"
            )),
        ));
    };
    let plain_number = !bits.is_empty()
        && bits.len() <= 3
        && bits.bytes().all(|b| b.is_ascii_digit())
        && (bits == "0" || !bits.starts_with('0'));
    let (Ok(addr), true) = (ip.parse::<std::net::IpAddr>(), plain_number) else {
        return Err(refuse(
            "not an IPv4 or IPv6 address and prefix length".into(),
            None,
        ));
    };
    let prefix: u32 = bits.parse().unwrap_or(u32::MAX);
    let (width, value) = match addr {
        std::net::IpAddr::V4(v4) => (32, u128::from(u32::from(v4))),
        std::net::IpAddr::V6(v6) => {
            if v6.to_ipv4_mapped().is_some() {
                return Err(refuse(
                    "an IPv4-mapped IPv6 address".into(),
                    Some("write the IPv4 CIDR itself".into()),
                ));
            }
            (128, u128::from(v6))
        }
    };
    if prefix > width {
        return Err(refuse(
            format!("the prefix length is at most {width}"),
            None,
        ));
    }
    let host_bits = width - prefix;
    let host_mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    if value & host_mask != 0 {
        let network = value & !host_mask;
        let network = match addr {
            std::net::IpAddr::V4(_) => {
                std::net::Ipv4Addr::from(u32::try_from(network).unwrap_or_default()).to_string()
            }
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::from(network).to_string(),
        };
        return Err(refuse(
            "bits are set beyond the prefix length".into(),
            Some(format!(
                "the network is {network}/{prefix}; the single address is {ip}/{width}"
            )),
        ));
    }
    Ok(())
}

/// What a quantity sizes: each has its own unit and bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Cpu,
    Memory,
    Storage,
}

/// Below 64Mi the server does not start reliably: its shared buffers alone default to 128MB
/// of address space, and the kernel kills a container that touches more than its limit.
pub const MIN_MEMORY: f64 = 64.0 * 1048576.0;
/// initdb writes about 40MB, and the server keeps `min_wal_size` (80MB) of WAL.
pub const MIN_STORAGE: f64 = 128.0 * 1048576.0;
/// Kubernetes counts CPU in milli-cores: less than 1m cannot be asked for.
pub const MIN_CPU: f64 = 1e-3;
/// Kubernetes keeps bytes and milli-units in an int64: 2^63 is the first value it cannot.
const TOO_MANY_UNITS: f64 = 9_223_372_036_854_775_808.0;

/// Checks a Kubernetes quantity (`8Gi`, `500m`, `1.5`, `2e3`) for what it sizes: positive,
/// not below what PostgreSQL needs, not beyond what Kubernetes can hold.
pub fn check_quantity(flag: &str, value: &str, resource: Resource) -> Result<(), Error> {
    let invalid = |why: String, hint: &str| Error::InvalidInput {
        message: format!("invalid {flag} {value:?}: {why}"),
        hint: Some(hint.into()),
    };
    let example = match resource {
        Resource::Cpu => "examples: 500m (half a core), 2",
        Resource::Memory => "examples: 512Mi, 2Gi",
        Resource::Storage => "examples: 8Gi, 500Gi",
    };
    let Some(amount) = quantity_value(value) else {
        return Err(invalid("not a Kubernetes quantity".into(), example));
    };
    if amount <= 0.0 {
        return Err(invalid("must be above zero".into(), example));
    }
    let (minimum, at_least, units) = match resource {
        Resource::Cpu => (MIN_CPU, "1m (a thousandth of a core)", amount * 1000.0),
        Resource::Memory => (
            MIN_MEMORY,
            "64Mi: PostgreSQL does not start with less",
            amount,
        ),
        Resource::Storage => (
            MIN_STORAGE,
            "128Mi: the database's files and WAL need that much",
            amount,
        ),
    };
    if units >= TOO_MANY_UNITS {
        return Err(invalid(
            format!(
                "beyond what Kubernetes can hold ({})",
                if resource == Resource::Cpu {
                    "9223372036854775m"
                } else {
                    "8Ei less one byte"
                }
            ),
            example,
        ));
    }
    if amount < minimum {
        return Err(invalid(format!("the least is {at_least}"), example));
    }
    Ok(())
}

/// The value of a quantity in base units, `None` when it is not one. Kubernetes' grammar: a
/// signed decimal number, then one suffix: binary (`Ki` … `Ei`), decimal (`n`, `u`, `m`, none,
/// `k`, `M`, `G`, `T`, `P`, `E`) or a decimal exponent (`e3`, `E-2`).
pub fn quantity_value(value: &str) -> Option<f64> {
    const SUFFIXES: &[(&str, f64)] = &[
        ("", 1.0),
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
    let (sign, unsigned) = match value.as_bytes().first()? {
        b'+' => (1.0, &value[1..]),
        b'-' => (-1.0, &value[1..]),
        _ => (1.0, value),
    };
    let end = unsigned
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(end);
    if number.matches('.').count() > 1 || !number.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    let factor = match SUFFIXES.iter().find(|(s, _)| *s == suffix) {
        Some((_, factor)) => *factor,
        None => {
            let exponent = suffix.strip_prefix(['e', 'E'])?;
            let digits = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(exponent.parse::<i32>().ok()?)
        }
    };
    let amount = sign * number.parse::<f64>().ok()? * factor;
    amount.is_finite().then_some(amount)
}

/// Checks an image reference as the container runtime parses it (`[HOST[:PORT]/]PATH[:TAG]
/// [@ALGORITHM:HEX]`, the distribution reference grammar): the API server only refuses space
/// around it, and anything else it lets through fails to pull after the release was written.
pub fn check_image(flag: &str, image: &str) -> Result<(), Error> {
    let invalid = |why: &str| Error::InvalidInput {
        message: format!("invalid {flag} {image:?}: {why}"),
        hint: Some(format!(
            "an image reference such as {} or registry.example.com:5000/mirror/postgres:18.1",
            pinned_image(DEFAULT_MAJOR).unwrap_or("postgres:18.1")
        )),
    };
    if image.trim() != image || image.chars().any(char::is_whitespace) {
        return Err(invalid("an image reference holds no spaces"));
    }
    if image.is_empty() {
        return Err(invalid("empty"));
    }
    let (name_tag, digest) = match image.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
            algorithm.split(['+', '.', '-', '_']).all(|c| {
                c.starts_with(|c: char| c.is_ascii_alphabetic())
                    && c.bytes().all(|b| b.is_ascii_alphanumeric())
            }) && hex.len() >= 32
                && hex.bytes().all(|b| b.is_ascii_hexdigit())
        });
        if !valid {
            return Err(invalid(
                "the digest is not ALGORITHM:HEX (sha256:64 hex digits)",
            ));
        }
    }
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        let valid = !tag.is_empty()
            && tag.len() <= 128
            && !tag.starts_with(['.', '-'])
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid {
            return Err(invalid(
                "the tag is letters, digits, '_', '.' and '-', at most 128",
            ));
        }
    }
    if name.is_empty() || name.len() > 255 {
        return Err(invalid("the name is 1 to 255 characters"));
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    let has_host = parts.len() > 1
        && (parts[0].contains(['.', ':'])
            || parts[0] == "localhost"
            || parts[0].bytes().any(|b| b.is_ascii_uppercase()));
    if has_host && !valid_registry(parts.remove(0)) {
        return Err(invalid("the registry is not HOST or HOST:PORT"));
    }
    if !parts.iter().all(|p| valid_path_component(p)) {
        return Err(invalid(
            "the repository is lower-case letters and digits, parts separated by '/', '.', '_' or '-'",
        ));
    }
    Ok(())
}

/// `HOST[:PORT]`: DNS labels (letters, digits, inner '-') or a bracketed IPv6 address.
fn valid_registry(registry: &str) -> bool {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match (after, after.strip_prefix(':')) {
            ("", _) => return true,
            (_, Some(port)) => ("x", Some(port)),
            (_, None) => return false,
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    port_ok && host_ok
}

/// A path component: lower-case alphanumerics joined by one '.', one or two '_', or any
/// number of '-'.
fn valid_path_component(part: &str) -> bool {
    let bytes = part.as_bytes();
    if bytes.is_empty()
        || !bytes[0].is_ascii_alphanumeric()
        || !bytes[bytes.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    let mut separator = String::new();
    for &b in bytes {
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            if !matches!(separator.as_str(), "" | "." | "_" | "__")
                && !separator.bytes().all(|s| s == b'-')
            {
                return false;
            }
            separator.clear();
        } else if matches!(b, b'.' | b'_' | b'-') {
            separator.push(b as char);
        } else {
            return false;
        }
    }
    true
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
            ephemeral: Ephemeral::dev(),
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
        assert_eq!(quantity_value("2e3"), Some(2000.0));
        assert_eq!(quantity_value("+1.5Ki"), Some(1536.0));
        assert_eq!(quantity_value(".5"), Some(0.5));
        assert_eq!(quantity_value("-1Gi"), Some(-1073741824.0));
        for bad in [
            "", "Gi", "8GB", "abc", "1.2.3", "1e3Gi", "1e", "1K", " 1Gi", "1Gi ", "e3",
        ] {
            assert_eq!(quantity_value(bad), None, "{bad}");
        }
        for bad in ["", "Gi", "8GB", "-1Gi", "abc", "1.2.3", "0"] {
            assert!(
                check_quantity("--storage-size", bad, Resource::Storage).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn quantities_postgres_and_kubernetes_accept() {
        let check = |value: &str, resource| check_quantity("--flag", value, resource);
        for (value, resource) in [
            ("64Mi", Resource::Memory),
            ("2Gi", Resource::Memory),
            ("128Mi", Resource::Storage),
            ("7Ei", Resource::Memory),
            ("1m", Resource::Cpu),
            ("0.5", Resource::Cpu),
            ("64", Resource::Cpu),
        ] {
            assert!(check(value, resource).is_ok(), "{value}");
        }
        for (value, resource, says) in [
            ("1", Resource::Memory, "64Mi"),
            ("63Mi", Resource::Memory, "64Mi"),
            ("100Mi", Resource::Storage, "128Mi"),
            ("99999999999999999999Gi", Resource::Storage, "beyond"),
            ("8Ei", Resource::Storage, "8Ei less one byte"),
            ("9223372036854775808", Resource::Memory, "beyond"),
            ("0", Resource::Cpu, "above zero"),
            ("-1", Resource::Cpu, "above zero"),
            ("0.0001", Resource::Cpu, "1m"),
            ("1e16", Resource::Cpu, "beyond"),
        ] {
            let err = check(value, resource).expect_err(value).to_string();
            assert!(err.contains(says), "{value}: {err}");
        }
    }

    #[test]
    fn image_references_as_the_runtime_parses_them() {
        for good in [
            "postgres",
            "postgres:18.1",
            "postgres:16.4-bookworm",
            "library/postgres:17",
            "docker.io/library/postgres:18.1",
            "localhost/pg:1",
            "registry.example.com:5000/mirror/postgres:18.1",
            "[::1]:5000/pg:18",
            "ghcr.io/a__b/c-d.e/post--gres:x_Y.1",
            "postgres@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "postgres:18.1@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert!(check_image("--image", good).is_ok(), "{good}");
        }
        for bad in [
            " postgres:18.1",
            "postgres:18.1 ",
            "post gres",
            "",
            "Postgres:18",
            "postgres:",
            "postgres:.1",
            "postgres::1",
            "postgres@sha256:abc",
            "postgres@:0123456789abcdef0123456789abcdef",
            "-postgres",
            "post___gres",
            "post..gres",
            "a//b",
            "registry:port/pg",
            "[::1]x/pg",
            "pg/",
            "postgres:18\n",
        ] {
            let err = check_image("--image", bad).expect_err(bad);
            assert!(err.to_string().contains("--image"), "{err}");
            assert!(!err.hints().is_empty());
        }
    }

    #[test]
    fn reserved_names_are_refused() {
        let spec = |username: &str, database: &str| InstallSpec {
            username: username.into(),
            database: database.into(),
            ..InstallSpec::example(18)
        };
        assert!(spec("app", "learnflow").validate(false, None).is_ok());
        assert!(spec("Owner", "learnflow").validate(false, None).is_ok());
        for (user, db) in [
            ("pg_app", "learnflow"),
            ("PG_app", "learnflow"),
            ("public", "learnflow"),
            ("none", "learnflow"),
            ("current_user", "learnflow"),
            ("SESSION_USER", "learnflow"),
            ("select", "learnflow"),
            ("user", "learnflow"),
            ("all", "learnflow"),
            ("Table", "learnflow"),
            ("app", "template0"),
            ("app", "template1"),
        ] {
            let err = spec(user, db)
                .validate(false, None)
                .unwrap_err()
                .to_string();
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
        assert!(check_cidr(" 10.0.0.0/8 ").is_ok());
        assert!(check_cidr("0.0.0.0/0").is_ok());
        assert!(check_cidr("203.0.113.7/32").is_ok());
        for bad in [
            "203.0.113.0",
            "203.0.113.0/33",
            "example.com/8",
            "::/129",
            "10.0.0.1/8",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "010.0.0.0/8",
            "::ffff:10.0.0.0/104",
            "2001:db8::1/32",
            "10.0.0.0/",
            "/8",
            "",
        ] {
            assert!(check_cidr(bad).is_err(), "{bad}");
        }
        let hint = check_cidr("10.1.2.3/8").unwrap_err().hints().join(" ");
        assert!(
            hint.contains("10.0.0.0/8") && hint.contains("10.1.2.3/32"),
            "{hint}"
        );
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
        let typed = Requested {
            source_ranges: Some(vec!["10.0.0.0/8".into(), " 192.168.0.0/16".into()]),
            ..req.clone()
        };
        let spec_typed = InstallSpec::from_request(&typed, "pg", "db").unwrap();
        assert_eq!(spec_typed.source_ranges, ["10.0.0.0/8", "192.168.0.0/16"]);
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
            Just("public".to_string()),
            Just("select".to_string()),
            Just(" postgres:18.1".to_string()),
            Just("registry.example.com:5000/pg:18.1".to_string()),
            "[0-9]{1,20}(Gi|Ei|m)?",
        ])
    }

    fn ranges() -> impl Strategy<Value = Option<Vec<String>>> {
        prop::option::of(prop::collection::vec(
            prop_oneof![
                "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}/[0-9+]{0,3}",
                "[0-9a-f:]{0,20}/[0-9]{0,3}",
                any::<String>(),
            ],
            0..3,
        ))
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
            source_ranges in ranges(),
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
                source_ranges,
                ..Requested::default()
            };
            if let Ok(spec) = InstallSpec::from_request(&requested, &release, &namespace) {
                prop_assert!(spec.release.len() <= 52 && !spec.release.is_empty());
                prop_assert!(spec.release.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
                prop_assert!(super::quantity_value(&spec.storage_size).is_some());
                prop_assert!(crate::database::roles::reserved_role(&spec.username).is_none());
                prop_assert!(super::check_image("--image", &spec.image).is_ok());
                for range in &spec.source_ranges {
                    prop_assert!(super::check_cidr(range).is_ok());
                }
                let upgraded = InstallSpec::for_upgrade(&requested, &spec);
                let _ = upgraded;
            }
        }

        #[test]
        fn quantities_and_images_never_panic(text in any::<String>()) {
            let _ = super::quantity_value(&text);
            for resource in [super::Resource::Cpu, super::Resource::Memory, super::Resource::Storage] {
                if super::check_quantity("--flag", &text, resource).is_ok() {
                    let value = super::quantity_value(&text).unwrap();
                    prop_assert!(value > 0.0 && value <= 9.3e18);
                }
            }
            let _ = super::check_image("--image", &text);
            let _ = super::check_cidr(&text);
            let _ = super::image_major(&text);
        }
    }
}
