//! Defaulting: the fields the real API server fills in on write, so objects read back look like
//! a real cluster's (clients and `kubectl describe` expect them).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;
use serde_json::{json, Map, Value};

use super::meta;

/// Allocates ClusterIPs (10.96.0.0/12) and NodePorts (30000-32767).
pub struct Allocator {
    next_ip: AtomicU32,
    next_node_port: AtomicU32,
}

impl Default for Allocator {
    fn default() -> Self {
        Allocator {
            // 10.96.0.1 is the `kubernetes` Service, 10.96.0.10 kube-dns.
            next_ip: AtomicU32::new(u32::from(Ipv4Addr::new(10, 96, 0, 20))),
            next_node_port: AtomicU32::new(30_000 + rand::random_range(0..2000)),
        }
    }
}

impl Allocator {
    fn cluster_ip(&self) -> String {
        Ipv4Addr::from(self.next_ip.fetch_add(1, Ordering::SeqCst)).to_string()
    }
    fn node_port(&self) -> u32 {
        self.next_node_port.fetch_add(1, Ordering::SeqCst)
    }
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    map.entry(key.to_string()).or_insert(value);
}

/// Applies the kind's defaults. `old` is the stored object on updates (keeps allocations).
pub fn apply(kind: &str, object: &mut Value, old: Option<&Value>, alloc: &Allocator) {
    match kind {
        "Pod" => {
            pod_spec(meta::obj_mut(object, "spec"));
            let qos = qos_class(&object["spec"]);
            let status = meta::obj_mut(object, "status");
            set_default(status, "phase", json!("Pending"));
            set_default(status, "qosClass", json!(qos));
        }
        "StatefulSet" => statefulset(object),
        "Service" => service(object, old, alloc),
        "Secret" => secret(object),
        "ConfigMap" => {}
        "PersistentVolumeClaim" => {
            let spec = meta::obj_mut(object, "spec");
            set_default(spec, "volumeMode", json!("Filesystem"));
            let status = meta::obj_mut(object, "status");
            set_default(status, "phase", json!("Pending"));
        }
        "Namespace" => {
            let name = meta::name(object).to_string();
            let labels = meta::metadata_mut(object)
                .entry("labels")
                .or_insert_with(|| json!({}));
            if let Some(labels) = labels.as_object_mut() {
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
            set_default(
                meta::obj_mut(object, "spec"),
                "finalizers",
                json!(["kubernetes"]),
            );
            set_default(meta::obj_mut(object, "status"), "phase", json!("Active"));
        }
        "StorageClass" => {
            let map = object.as_object_mut().expect("object");
            set_default(map, "reclaimPolicy", json!("Delete"));
            set_default(map, "volumeBindingMode", json!("Immediate"));
        }
        _ => {}
    }
}

/// Pod spec defaults (also used for StatefulSet templates).
pub fn pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "enableServiceLinks", json!(true));
    if spec.get("serviceAccountName").is_some() || spec.get("nodeName").is_none() {
        let sa = spec
            .get("serviceAccountName")
            .cloned()
            .unwrap_or(json!("default"));
        set_default(spec, "serviceAccountName", sa.clone());
        set_default(spec, "serviceAccount", sa);
    }
    for list in ["containers", "initContainers"] {
        if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
            for c in items.iter_mut().filter_map(Value::as_object_mut) {
                container(c);
            }
        }
    }
}

fn container(c: &mut Map<String, Value>) {
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    let pull = if !last.contains(':') && !last.contains('@') || last.ends_with(":latest") {
        "Always"
    } else {
        "IfNotPresent"
    };
    set_default(c, "imagePullPolicy", json!(pull));
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    set_default(c, "resources", json!({}));
    // Requests default to limits.
    if let Some(resources) = c.get_mut("resources").and_then(Value::as_object_mut) {
        if let Some(limits) = resources.get("limits").cloned() {
            let requests = resources.entry("requests").or_insert_with(|| json!({}));
            if let (Some(req), Some(lim)) = (requests.as_object_mut(), limits.as_object()) {
                for (k, v) in lim {
                    req.entry(k.clone()).or_insert(v.clone());
                }
            }
        }
    }
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for p in ports.iter_mut().filter_map(Value::as_object_mut) {
            set_default(p, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
        }
    }
}

fn qos_class(spec: &Value) -> &'static str {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    let mut any = false;
    let mut guaranteed = !containers.is_empty();
    for c in &containers {
        let requests = &c["resources"]["requests"];
        let limits = &c["resources"]["limits"];
        if requests.as_object().is_some_and(|m| !m.is_empty())
            || limits.as_object().is_some_and(|m| !m.is_empty())
        {
            any = true;
        }
        for r in ["cpu", "memory"] {
            if limits.get(r).is_none() || limits.get(r) != requests.get(r) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

fn statefulset(object: &mut Value) {
    let spec = meta::obj_mut(object, "spec");
    set_default(spec, "replicas", json!(1));
    set_default(spec, "podManagementPolicy", json!("OrderedReady"));
    set_default(spec, "revisionHistoryLimit", json!(10));
    set_default(
        spec,
        "updateStrategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
    );
    set_default(
        spec,
        "persistentVolumeClaimRetentionPolicy",
        json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
    );
    if let Some(template) = spec.get_mut("template") {
        pod_spec(meta::obj_mut(template, "spec"));
    }
    if let Some(claims) = spec
        .get_mut("volumeClaimTemplates")
        .and_then(Value::as_array_mut)
    {
        for claim in claims {
            let map = claim.as_object_mut().expect("claim template");
            set_default(map, "apiVersion", json!("v1"));
            set_default(map, "kind", json!("PersistentVolumeClaim"));
            set_default(
                meta::obj_mut(claim, "spec"),
                "volumeMode",
                json!("Filesystem"),
            );
            set_default(meta::obj_mut(claim, "status"), "phase", json!("Pending"));
        }
    }
}

fn service(object: &mut Value, old: Option<&Value>, alloc: &Allocator) {
    let old_spec = old.map(|o| o["spec"].clone()).unwrap_or(Value::Null);
    let spec = meta::obj_mut(object, "spec");
    set_default(spec, "type", json!("ClusterIP"));
    set_default(spec, "sessionAffinity", json!("None"));
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
    if kind == "ExternalName" {
        return;
    }
    if spec.get("clusterIP").is_none_or(|v| v == "") {
        let ip = old_spec["clusterIP"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| alloc.cluster_ip());
        spec.insert("clusterIP".into(), json!(ip));
    }
    let ip = spec["clusterIP"].clone();
    spec.insert("clusterIPs".into(), json!([ip]));
    set_default(spec, "ipFamilies", json!(["IPv4"]));
    set_default(spec, "ipFamilyPolicy", json!("SingleStack"));
    set_default(spec, "internalTrafficPolicy", json!("Cluster"));
    let wants_node_ports = kind == "NodePort" || kind == "LoadBalancer";
    if wants_node_ports {
        set_default(spec, "externalTrafficPolicy", json!("Cluster"));
    }
    if kind == "LoadBalancer" {
        set_default(spec, "allocateLoadBalancerNodePorts", json!(true));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            let p = p.as_object_mut().expect("port");
            set_default(p, "protocol", json!("TCP"));
            let port = p.get("port").cloned().unwrap_or(Value::Null);
            set_default(p, "targetPort", port);
            if wants_node_ports && p.get("nodePort").is_none() {
                let kept = old_spec["ports"][i]["nodePort"].clone();
                let node_port = if kept.is_null() {
                    json!(alloc.node_port())
                } else {
                    kept
                };
                p.insert("nodePort".into(), node_port);
            }
            if !wants_node_ports {
                p.remove("nodePort");
            }
        }
    }
    let status = meta::obj_mut(object, "status");
    set_default(status, "loadBalancer", json!({}));
}

fn secret(object: &mut Value) {
    let map = object.as_object_mut().expect("object");
    set_default(map, "type", json!("Opaque"));
    if let Some(Value::Object(string_data)) = map.remove("stringData") {
        let data = map.entry("data").or_insert_with(|| json!({}));
        if let Some(data) = data.as_object_mut() {
            for (k, v) in string_data {
                let text = v.as_str().unwrap_or_default();
                data.insert(
                    k,
                    json!(base64::engine::general_purpose::STANDARD.encode(text)),
                );
            }
        }
    }
}
