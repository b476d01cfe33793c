//! Validation the real API server does before storing: names, labels, the required fields of the
//! kinds the plugin writes, and which fields an update may not change. Failures are 422 Invalid
//! with the same field paths and wording.

use serde_json::{json, Value};

use super::resources::{NameRule, ResourceType};
use super::status::{ApiError, Cause};

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

pub fn is_label(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

pub fn is_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_label)
}

fn is_1035_label(name: &str) -> bool {
    is_label(name) && name.as_bytes()[0].is_ascii_lowercase()
}

/// Problems with a name under `rule`, as field-error details.
pub fn name_problems(name: &str, rule: NameRule) -> Vec<String> {
    let mut problems = Vec::new();
    match rule {
        NameRule::Label => {
            if name.len() > 63 {
                problems.push("must be no more than 63 characters".into());
            }
            if !name.is_empty() && !is_label(&name[..name.len().min(63)]) {
                problems.push(LABEL_MSG.into());
            }
        }
        NameRule::Label1035 => {
            if name.len() > 63 {
                problems.push("must be no more than 63 characters".into());
            }
            if !name.is_empty() && !is_1035_label(&name[..name.len().min(63)]) {
                problems.push(DNS1035_MSG.into());
            }
        }
        NameRule::Subdomain => {
            if name.len() > 253 {
                problems.push("must be no more than 253 characters".into());
            }
            if !is_subdomain(&name[..name.len().min(253)]) {
                problems.push(SUBDOMAIN_MSG.into());
            }
        }
        NameRule::PathSegment => {
            if name == "." || name == ".." {
                problems.push(format!("may not be '{name}'"));
            }
            if name.contains('/') || name.contains('%') {
                problems.push("may not contain '/'".into());
            }
        }
    }
    problems
}

fn is_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn check_labels(labels: Option<&Value>, field: &str, causes: &mut Vec<Cause>) {
    let Some(map) = labels.and_then(Value::as_object) else {
        return;
    };
    for (key, value) in map {
        let text = value.as_str().unwrap_or_default();
        if text.len() > 63 {
            causes.push(Cause::invalid(
                field,
                value,
                "must be no more than 63 characters",
            ));
        } else if !is_label_value(text) {
            causes.push(Cause::invalid(field, value, LABEL_VALUE_MSG));
        }
        let name_part = key.rsplit('/').next().unwrap_or_default();
        if name_part.is_empty() || name_part.len() > 63 {
            causes.push(Cause::invalid(
                field,
                &json!(key),
                "name part must be no more than 63 characters",
            ));
        }
    }
}

/// Validates an object about to be created or to replace `old`.
pub fn validate(rt: &ResourceType, object: &Value, old: Option<&Value>) -> Result<(), ApiError> {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let mut causes = Vec::new();
    if name.is_empty() {
        causes.push(Cause::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for problem in name_problems(name, rt.name_rule) {
            causes.push(Cause::invalid("metadata.name", &json!(name), &problem));
        }
    }
    check_labels(
        object.pointer("/metadata/labels"),
        "metadata.labels",
        &mut causes,
    );
    match rt.kind.as_str() {
        "Pod" => {
            validate_pod_spec(&object["spec"], "spec", &mut causes);
            if let Some(old) = old {
                pod_immutability(old, object, &mut causes);
            }
        }
        "StatefulSet" => validate_statefulset(object, old, &mut causes),
        "Service" => validate_service(object, old, &mut causes),
        "PersistentVolumeClaim" => validate_pvc(object, old, &mut causes),
        "Secret" => validate_secret(object, old, &mut causes),
        "ResourceQuota" => {
            for (key, value) in object
                .pointer("/spec/hard")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                if parse_quantity(value).is_none() {
                    causes.push(Cause::invalid(
                        &format!("spec.hard[{key}]"),
                        value,
                        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                    ));
                }
            }
        }
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(rt, name, causes))
    }
}

fn validate_pod_spec(spec: &Value, path: &str, causes: &mut Vec<Cause>) {
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    if containers.is_empty() {
        causes.push(Cause::required(&format!("{path}.containers"), ""));
    }
    for (i, c) in containers.iter().enumerate() {
        let cpath = format!("{path}.containers[{i}]");
        match c["name"].as_str() {
            None | Some("") => causes.push(Cause::required(&format!("{cpath}.name"), "")),
            Some(n) if !is_label(n) => causes.push(Cause::invalid(
                &format!("{cpath}.name"),
                &json!(n),
                LABEL_MSG,
            )),
            _ => {}
        }
        if c["image"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(&format!("{cpath}.image"), ""));
        }
        for (j, env) in c["env"].as_array().into_iter().flatten().enumerate() {
            if env["name"].as_str().is_none_or(str::is_empty) {
                causes.push(Cause::required(&format!("{cpath}.env[{j}].name"), ""));
            }
        }
        for (resource_kind, map) in [
            ("limits", &c["resources"]["limits"]),
            ("requests", &c["resources"]["requests"]),
        ] {
            for (key, value) in map.as_object().into_iter().flatten() {
                if parse_quantity(value).is_none() {
                    causes.push(Cause::invalid(
                        &format!("{cpath}.resources.{resource_kind}[{key}]"),
                        value,
                        "must be a valid quantity",
                    ));
                }
            }
        }
    }
}

/// Only images (and a few scheduling fields) of a pod may change.
fn pod_immutability(old: &Value, new: &Value, causes: &mut Vec<Cause>) {
    let strip = |spec: &Value| -> Value {
        let mut spec = spec.clone();
        for list in ["containers", "initContainers"] {
            if let Some(items) = spec.get_mut(list).and_then(Value::as_array_mut) {
                for c in items {
                    if let Some(c) = c.as_object_mut() {
                        c.remove("image");
                    }
                }
            }
        }
        if let Some(map) = spec.as_object_mut() {
            for key in [
                "activeDeadlineSeconds",
                "tolerations",
                "terminationGracePeriodSeconds",
                "nodeName",
            ] {
                map.remove(key);
            }
        }
        spec
    };
    if strip(&old["spec"]) != strip(&new["spec"]) {
        causes.push(Cause::forbidden(
            "spec",
            "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)",
        ));
    }
}

fn validate_statefulset(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &object["spec"];
    if spec["selector"].is_null() {
        causes.push(Cause::required("spec.selector", ""));
    } else {
        let selector = super::selectors::LabelSelector::from_object(&spec["selector"]);
        if selector.is_empty() {
            causes.push(Cause::invalid(
                "spec.selector",
                &spec["selector"],
                "empty selector is invalid for statefulset",
            ));
        } else if !selector.matches(&spec["template"]) {
            let labels = spec["template"]["metadata"]["labels"].clone();
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "spec.template.metadata.labels".into(),
                message: format!(
                    "Invalid value: {}: `selector` does not match template `labels`",
                    go_map(&labels)
                ),
            });
        }
    }
    if spec["replicas"].as_i64().is_some_and(|r| r < 0) {
        causes.push(Cause::invalid(
            "spec.replicas",
            &spec["replicas"],
            "must be greater than or equal to 0",
        ));
    }
    check_labels(
        spec.pointer("/template/metadata/labels"),
        "spec.template.metadata.labels",
        causes,
    );
    validate_pod_spec(&spec["template"]["spec"], "spec.template.spec", causes);
    if let Some(old) = old {
        let strip = |spec: &Value| -> Value {
            let mut spec = spec.clone();
            if let Some(map) = spec.as_object_mut() {
                for key in [
                    "replicas",
                    "ordinals",
                    "template",
                    "updateStrategy",
                    "persistentVolumeClaimRetentionPolicy",
                    "minReadySeconds",
                ] {
                    map.remove(key);
                }
            }
            spec
        };
        if strip(&old["spec"]) != strip(spec) {
            causes.push(Cause::forbidden(
                "spec",
                "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden",
            ));
        }
    }
}

/// Go's `map[string]string{"a":"b"}` rendering, as validation messages print label maps.
fn go_map(labels: &Value) -> String {
    let mut pairs: Vec<String> = labels
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("\"{k}\":\"{}\"", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    format!("map[string]string{{{}}}", pairs.join(", "))
}

fn validate_service(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &object["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP");
    const TYPES: [&str; 4] = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !TYPES.contains(&kind) {
        causes.push(Cause::unsupported("spec.type", kind, &TYPES));
    }
    let ports = spec["ports"].as_array().cloned().unwrap_or_default();
    let headless = spec["clusterIP"] == "None";
    if ports.is_empty() && !headless && kind != "ExternalName" {
        causes.push(Cause::required("spec.ports", ""));
    }
    if kind != "ClusterIP" && kind != "ExternalName" && headless {
        causes.push(Cause::invalid(
            "spec.clusterIPs[0]",
            &json!("None"),
            &format!("may not be set to 'None' for {kind} services"),
        ));
    }
    let mut names = Vec::new();
    for (i, p) in ports.iter().enumerate() {
        let port = p["port"].as_i64().unwrap_or(0);
        if !(1..=65535).contains(&port) {
            causes.push(Cause::invalid(
                &format!("spec.ports[{i}].port"),
                &p["port"],
                "must be between 1 and 65535, inclusive",
            ));
        }
        if ports.len() > 1 && p["name"].as_str().is_none_or(str::is_empty) {
            causes.push(Cause::required(&format!("spec.ports[{i}].name"), ""));
        }
        if let Some(n) = p["name"].as_str() {
            if names.contains(&n) {
                causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("spec.ports[{i}].name"),
                    message: format!("Duplicate value: \"{n}\""),
                });
            }
            names.push(n);
        }
    }
    if let Some(old) = old {
        let before = old["spec"]["clusterIP"].as_str().unwrap_or_default();
        let after = spec["clusterIP"].as_str().unwrap_or_default();
        if !before.is_empty() && !after.is_empty() && before != after {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                &json!(after),
                "may not change once set",
            ));
        }
    }
}

fn validate_pvc(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let spec = &object["spec"];
    if spec["accessModes"].as_array().is_none_or(Vec::is_empty) {
        causes.push(Cause::required(
            "spec.accessModes",
            "at least 1 access mode is required",
        ));
    }
    match spec.pointer("/resources/requests/storage") {
        None => causes.push(Cause::required("spec.resources[storage]", "")),
        Some(q) if parse_quantity(q).is_none_or(|v| v <= 0.0) => causes.push(Cause::invalid(
            "spec.resources[storage]",
            q,
            "must be greater than zero",
        )),
        _ => {}
    }
    if let Some(old) = old {
        let strip = |spec: &Value| -> Value {
            let mut spec = spec.clone();
            if let Some(map) = spec.as_object_mut() {
                map.remove("resources");
                map.remove("volumeAttributesClassName");
                // Binding fills these in.
                map.remove("volumeName");
                if old["spec"]["storageClassName"].is_null() {
                    map.remove("storageClassName");
                }
            }
            spec
        };
        if strip(&old["spec"]) != strip(spec) {
            causes.push(Cause::forbidden(
                "spec",
                "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims",
            ));
        }
    }
}

fn validate_secret(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    for key in object["data"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, _)| k)
    {
        let ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !ok {
            causes.push(Cause::invalid(
                "data",
                &json!(key),
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
    if let Some(old) = old {
        if old["immutable"] == true && (old["data"] != object["data"]) {
            causes.push(Cause::forbidden(
                "data",
                "field is immutable when `immutable` is set",
            ));
        }
        if old["type"] != object["type"] {
            causes.push(Cause::invalid(
                "type",
                &object["type"],
                "field is immutable",
            ));
        }
    }
}

/// A Kubernetes quantity (`1Gi`, `500m`, `2`, `1e3`) in base units.
pub fn parse_quantity(value: &Value) -> Option<f64> {
    let text = match value {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => return n.as_f64(),
        _ => return None,
    };
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "u" => 1e-6,
        "n" => 1e-9,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        s if s.starts_with(['e', 'E']) => 10f64.powi(s[1..].parse().ok()?),
        _ => return None,
    };
    Some(number * factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity(&json!("1Gi")), Some(1073741824.0));
        assert_eq!(parse_quantity(&json!("500m")), Some(0.5));
        assert_eq!(parse_quantity(&json!("2")), Some(2.0));
        assert_eq!(parse_quantity(&json!("1e3")), Some(1000.0));
        assert_eq!(parse_quantity(&json!("1Gb")), None);
    }

    #[test]
    fn names() {
        assert!(is_label("pg-0"));
        assert!(!is_label("Pg"));
        assert!(!is_label("-a"));
        assert!(is_subdomain("a.b-c"));
        assert!(name_problems("9abc", NameRule::Label1035).len() == 1);
        assert!(name_problems(&"a".repeat(64), NameRule::Label)[0].contains("63"));
    }
}
