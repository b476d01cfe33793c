//! The inverse of `render`: the values a deployed release runs with, read back from its live
//! StatefulSet and Service, so `install --upgrade` starts from what is deployed.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{Container, Service};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde_json::Value;

use super::spec::{image_major, Ephemeral, InstallSpec, DEFAULT_MAJOR};
use crate::cluster::release::{self, LABEL_VERSION};

/// The deployed values. `database` and `username` are those of the Secret when it could be read
/// (`credentials`), else the defaults.
pub fn read(
    sts: &StatefulSet,
    service: Option<&Service>,
    credentials: Option<&release::Credentials>,
) -> InstallSpec {
    let release = sts.metadata.name.clone().unwrap_or_default();
    let namespace = sts.metadata.namespace.clone().unwrap_or_default();
    let spec = sts.spec.as_ref();
    let container: Option<&Container> = spec
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == "postgres"));
    let image = container.and_then(|c| c.image.clone()).unwrap_or_default();
    let label_major = sts
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(LABEL_VERSION))
        .and_then(|v| v.split('.').next()?.parse().ok());
    let major = label_major
        .or_else(|| image_major(&image))
        .unwrap_or(DEFAULT_MAJOR);
    let resource = |kind: &str, name: &str| -> Option<String> {
        let r = container?.resources.as_ref()?;
        let map = if kind == "requests" {
            r.requests.as_ref()
        } else {
            r.limits.as_ref()
        };
        map?.get(name).map(|q| q.0.clone())
    };
    let claim = spec.and_then(|s| s.volume_claim_templates.as_ref()?.first());
    let claim_spec = claim.and_then(|c| c.spec.as_ref());
    let storage_size = claim_spec
        .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"))
        .map(|q| q.0.clone())
        .unwrap_or_else(|| "8Gi".into());
    let storage_class = claim_spec.and_then(|s| s.storage_class_name.clone());
    let ephemeral = ephemeral(sts, container);
    let source = release::CredentialSource::of(&release, Some(sts));
    let existing_secret = (!source.is_ours(&release)).then_some(source.secret);
    InstallSpec {
        major,
        image,
        database: credentials.map_or_else(|| "learnflow".into(), |c| c.database.clone()),
        username: credentials.map_or_else(|| "postgres".into(), |c| c.username.clone()),
        storage_size,
        storage_class,
        cpu_request: resource("requests", "cpu"),
        memory_request: resource("requests", "memory"),
        cpu_limit: resource("limits", "cpu"),
        memory_limit: resource("limits", "memory"),
        service_type: service
            .and_then(|s| s.spec.as_ref()?.type_.clone())
            .unwrap_or_else(|| "ClusterIP".into()),
        existing_secret,
        cluster_domain: release::cluster_domain(Some(sts)),
        source_ranges: service
            .and_then(|s| s.spec.as_ref()?.load_balancer_source_ranges.clone())
            .unwrap_or_default(),
        tls: serves_tls(sts),
        tls_checksum: None,
        layout: container
            .and_then(|c| c.volume_mounts.as_ref()?.iter().find(|m| m.name == "data"))
            .map_or_else(
                || super::spec::DataLayout::default_for(major),
                |m| super::spec::DataLayout::from_mount(&m.mount_path),
            ),
        ephemeral,
        release,
        namespace,
    }
}

/// The release's node-local disk values; each one the release does not set (a release made
/// before they were) is its profile's: prod's for a release sized with CPU or memory values
/// (the dev profile sets none), else dev's.
fn ephemeral(sts: &StatefulSet, container: Option<&Container>) -> Ephemeral {
    let resources = container.and_then(|c| c.resources.as_ref());
    let storage = |map: Option<&std::collections::BTreeMap<String, Quantity>>| {
        map?.get("ephemeral-storage").map(|q| q.0.clone())
    };
    let sized = resources.is_some_and(|r| {
        [r.requests.as_ref(), r.limits.as_ref()]
            .into_iter()
            .flatten()
            .any(|m| m.contains_key("cpu") || m.contains_key("memory"))
    });
    let volumes = sts
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref()?.volumes.as_ref());
    let size_limit = |name: &str| {
        volumes?
            .iter()
            .find(|v| v.name == name)?
            .empty_dir
            .as_ref()?
            .size_limit
            .as_ref()
            .map(|q| q.0.clone())
    };
    let profile = Ephemeral::of_profile(sized);
    Ephemeral {
        request: storage(resources.and_then(|r| r.requests.as_ref())).unwrap_or(profile.request),
        limit: storage(resources.and_then(|r| r.limits.as_ref())).unwrap_or(profile.limit),
        tmp: size_limit(super::render::TMP_VOLUME).unwrap_or(profile.tmp),
        run: size_limit(super::render::RUN_VOLUME).unwrap_or(profile.run),
    }
}

/// The live `volumeClaimTemplates`, as the apiserver stores them: an upgrade applies them
/// unchanged, since any change is refused (they are immutable) and would change nothing anyway.
pub fn claim_templates(sts: &StatefulSet) -> Option<Value> {
    let templates = sts.spec.as_ref()?.volume_claim_templates.as_ref()?;
    let mut value = serde_json::to_value(templates).ok()?;
    for t in value.as_array_mut()? {
        if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| matches!(k.as_str(), "name" | "labels" | "annotations"));
        }
    }
    Some(value)
}

/// Whether the release serves TLS: its pods mount the server certificate's volume.
pub fn serves_tls(sts: &StatefulSet) -> bool {
    sts.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref()?.volumes.as_ref())
        .is_some_and(|v| v.iter().any(|v| v.name == super::render::TLS_VOLUME))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::render;

    #[test]
    fn reads_back_what_render_wrote() {
        let mut spec = InstallSpec {
            image: "postgres:16.11".into(),
            storage_size: "12Gi".into(),
            storage_class: Some("fast".into()),
            cpu_request: Some("250m".into()),
            memory_limit: Some("4Gi".into()),
            service_type: "LoadBalancer".into(),
            source_ranges: vec!["10.0.0.0/8".into()],
            existing_secret: Some("orders-db".into()),
            cluster_domain: "corp.example".into(),
            ..InstallSpec::example(16)
        };
        let sts: StatefulSet = serde_json::from_value(render::statefulset(&spec)).unwrap();
        let svc: Service = serde_json::from_value(render::service(&spec)).unwrap();
        let live = read(&sts, Some(&svc), None);
        assert_eq!(live.major, 16);
        assert_eq!(live.image, "postgres:16.11");
        assert_eq!(live.storage_size, "12Gi");
        assert_eq!(live.storage_class.as_deref(), Some("fast"));
        assert_eq!(live.cpu_request.as_deref(), Some("250m"));
        assert_eq!(live.memory_limit.as_deref(), Some("4Gi"));
        assert_eq!(live.service_type, "LoadBalancer");
        assert_eq!(live.source_ranges, ["10.0.0.0/8"]);
        assert_eq!(live.existing_secret.as_deref(), Some("orders-db"));
        assert_eq!(live.cluster_domain, "corp.example");
        assert_eq!(live.layout, super::super::spec::DataLayout::Legacy);
        let versioned = InstallSpec {
            layout: super::super::spec::DataLayout::Versioned,
            ..InstallSpec::example(17)
        };
        let sts17: StatefulSet = serde_json::from_value(render::statefulset(&versioned)).unwrap();
        let back = read(&sts17, None, None);
        assert_eq!(back.layout, super::super::spec::DataLayout::Versioned);
        let env = &sts17.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "PGDATA"
                && e.value.as_deref() == Some("/var/lib/postgresql/17/docker")));
        spec.existing_secret = None;
        let ours: StatefulSet = serde_json::from_value(render::statefulset(&spec)).unwrap();
        assert_eq!(read(&ours, None, None).existing_secret, None);
        let templates = claim_templates(&ours).unwrap();
        assert_eq!(templates[0]["metadata"]["name"], "data");
    }

    #[test]
    fn ephemeral_values_are_kept_set_by_prod_or_given_to_an_older_release() {
        use crate::manifests::spec::{Ephemeral, Requested};
        let tuned = Ephemeral {
            request: "300Mi".into(),
            limit: "3Gi".into(),
            tmp: "2Gi".into(),
            run: "8Mi".into(),
        };
        let spec = InstallSpec {
            ephemeral: tuned.clone(),
            ..InstallSpec::example(17)
        };
        let mut sts: StatefulSet = serde_json::from_value(render::statefulset(&spec)).unwrap();
        let live = read(&sts, None, None);
        assert_eq!(live.ephemeral, tuned);
        let upgraded = InstallSpec::for_upgrade(&Requested::default(), &live).unwrap();
        assert_eq!(upgraded.ephemeral, tuned, "--upgrade keeps the live values");
        let prod = Requested {
            prod: Some(true),
            existing_secret: Some("orders-db".into()),
            ..Requested::default()
        };
        let upgraded = InstallSpec::for_upgrade(&prod, &live).unwrap();
        assert_eq!(upgraded.ephemeral, Ephemeral::prod());
        // A release made before these values: its profile's, judged by its CPU and memory.
        let pod = sts.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        for v in pod.volumes.iter_mut().flatten() {
            if let Some(dir) = v.empty_dir.as_mut().filter(|_| v.name != "shm") {
                dir.size_limit = None;
            }
        }
        pod.containers[0].resources = None;
        assert_eq!(read(&sts, None, None).ephemeral, Ephemeral::dev());
        let pod = sts.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.containers[0].resources = serde_json::from_value(serde_json::json!({
            "limits": { "memory": "2Gi" }
        }))
        .unwrap();
        assert_eq!(read(&sts, None, None).ephemeral, Ephemeral::prod());
    }
}
