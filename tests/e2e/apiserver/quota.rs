//! ResourceQuota: usage accounting and the admission check that rejects a pod or claim that
//! would exceed a quota, with the real plugin's 403 wording (`exceeded quota: ...`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::store::Store;
use super::validation::parse_quantity;

/// The kinds whose objects count against a quota.
const CHARGED: [&str; 6] = [
    "pods",
    "persistentvolumeclaims",
    "services",
    "secrets",
    "configmaps",
    "statefulsets",
];

/// What an object charges against each quota key it touches.
pub fn charges(kind: &str, object: &Value) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    match kind {
        "Pod" => {
            if matches!(
                object["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            ) {
                return out;
            }
            out.insert("pods".into(), 1.0);
            out.insert("count/pods".into(), 1.0);
            for c in object["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for (section, prefix) in [("requests", "requests."), ("limits", "limits.")] {
                    for r in ["cpu", "memory", "ephemeral-storage"] {
                        if let Some(q) = c["resources"][section].get(r).and_then(parse_quantity) {
                            *out.entry(format!("{prefix}{r}")).or_insert(0.0) += q;
                            if section == "requests" {
                                *out.entry(r.to_string()).or_insert(0.0) += q;
                            }
                        }
                    }
                }
            }
        }
        "PersistentVolumeClaim" => {
            out.insert("persistentvolumeclaims".into(), 1.0);
            out.insert("count/persistentvolumeclaims".into(), 1.0);
            if let Some(q) = object
                .pointer("/spec/resources/requests/storage")
                .and_then(parse_quantity)
            {
                out.insert("requests.storage".into(), q);
                if let Some(class) = object["spec"]["storageClassName"].as_str() {
                    out.insert(
                        format!("{class}.storageclass.storage.k8s.io/requests.storage"),
                        q,
                    );
                    out.insert(
                        format!("{class}.storageclass.storage.k8s.io/persistentvolumeclaims"),
                        1.0,
                    );
                }
            }
        }
        "Service" => {
            out.insert("services".into(), 1.0);
            out.insert("count/services".into(), 1.0);
            match object["spec"]["type"].as_str() {
                Some("LoadBalancer") => {
                    out.insert("services.loadbalancers".into(), 1.0);
                    out.insert("services.nodeports".into(), 1.0);
                }
                Some("NodePort") => {
                    out.insert("services.nodeports".into(), 1.0);
                }
                _ => {}
            }
        }
        "Secret" => {
            out.insert("secrets".into(), 1.0);
            out.insert("count/secrets".into(), 1.0);
        }
        "ConfigMap" => {
            out.insert("configmaps".into(), 1.0);
            out.insert("count/configmaps".into(), 1.0);
        }
        "StatefulSet" => {
            out.insert("count/statefulsets.apps".into(), 1.0);
        }
        _ => {}
    }
    out
}

/// Summed charges of `objects` (the namespace's current objects of all quota-relevant kinds).
pub fn usage<'a>(objects: impl Iterator<Item = (&'a str, &'a Value)>) -> BTreeMap<String, f64> {
    let mut used = BTreeMap::new();
    for (kind, object) in objects {
        for (k, v) in charges(kind, object) {
            *used.entry(k).or_insert(0.0) += v;
        }
    }
    used
}

/// What the objects now stored in `ns` use, summed per quota key.
pub fn namespace_usage(store: &Store, ns: &str) -> BTreeMap<String, f64> {
    let mut objects = Vec::new();
    for plural in CHARGED {
        let t = store.by_plural(plural);
        let (items, _) = store.list(&t, Some(ns));
        objects.extend(items.into_iter().map(|o| (t.kind.clone(), o)));
    }
    usage(objects.iter().map(|(k, o)| (k.as_str(), o)))
}

/// Renders an amount like the quota it is compared with (`2Gi`, `500m`, `3`).
pub fn format_amount(value: f64, like: &str) -> String {
    const GI: f64 = 1024.0 * 1024.0 * 1024.0;
    const MI: f64 = 1024.0 * 1024.0;
    if value == 0.0 {
        return "0".into();
    }
    // Binary amounts print canonically: the largest suffix that divides them.
    if like.ends_with('i') {
        for (unit, suffix) in [(GI * 1024.0, "Ti"), (GI, "Gi"), (MI, "Mi"), (1024.0, "Ki")] {
            if value >= unit && (value / unit).fract() == 0.0 {
                return format!("{}{suffix}", value / unit);
            }
        }
    }
    if value.fract() != 0.0 {
        return format!("{}m", (value * 1000.0).round());
    }
    format!("{value}")
}

/// Checks `object` against every quota in its namespace; `Err(message)` is the text after
/// `is forbidden: `.
pub fn admit(
    kind: &str,
    object: &Value,
    quotas: &[Value],
    used: &BTreeMap<String, f64>,
) -> Result<(), String> {
    let wanted = charges(kind, object);
    for quota in quotas {
        let name = quota["metadata"]["name"].as_str().unwrap_or_default();
        let Some(hard) = quota["spec"]["hard"].as_object() else {
            continue;
        };
        // Compute resources a quota tracks must be stated by every container.
        if kind == "Pod" {
            let mut missing = Vec::new();
            for key in hard.keys() {
                let (section, resource) = match key.as_str() {
                    "cpu" | "requests.cpu" => ("requests", "cpu"),
                    "memory" | "requests.memory" => ("requests", "memory"),
                    "limits.cpu" => ("limits", "cpu"),
                    "limits.memory" => ("limits", "memory"),
                    _ => continue,
                };
                let unset: Vec<&str> = object["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|c| c["resources"][section].get(resource).is_none())
                    .filter_map(|c| c["name"].as_str())
                    .collect();
                if !unset.is_empty() {
                    missing.push(format!(
                        "must specify {section}.{resource} for: {}",
                        unset.join(",")
                    ));
                }
            }
            if !missing.is_empty() {
                return Err(format!("failed quota: {name}: {}", missing.join("; ")));
            }
        }
        let mut requested = Vec::new();
        let mut in_use = Vec::new();
        let mut limited = Vec::new();
        for (key, limit) in hard {
            let Some(want) = wanted.get(key) else {
                continue;
            };
            let Some(max) = parse_quantity(limit) else {
                continue;
            };
            let have = used.get(key).copied().unwrap_or(0.0);
            if have + want > max + 1e-9 {
                let like = limit.as_str().unwrap_or_default();
                requested.push(format!("{key}={}", format_amount(*want, like)));
                in_use.push(format!("{key}={}", format_amount(have, like)));
                limited.push(format!("{key}={like}"));
            }
        }
        if !requested.is_empty() {
            return Err(format!(
                "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                requested.join(","),
                in_use.join(","),
                limited.join(",")
            ));
        }
    }
    Ok(())
}
