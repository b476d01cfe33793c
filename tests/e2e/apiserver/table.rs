//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks for
//! (`Accept: application/json;as=Table;v=v1;g=meta.k8s.io`), with the columns and cell formats
//! of kube-apiserver's printers for the kinds the plugin creates.

use serde_json::{json, Value};

use super::meta;

fn col(name: &str, kind: &str, priority: u8) -> Value {
    json!({
        "name": name,
        "type": kind,
        "format": if name == "Name" { "name" } else { "" },
        "description": "",
        "priority": priority,
    })
}

fn columns(kind: &str) -> Vec<Value> {
    let s = |n: &str| col(n, "string", 0);
    let wide = |n: &str| col(n, "string", 1);
    match kind {
        "Namespace" => vec![s("Name"), s("Status"), s("Age")],
        "Pod" => vec![
            s("Name"),
            s("Ready"),
            s("Status"),
            col("Restarts", "string", 0),
            s("Age"),
            wide("IP"),
            wide("Node"),
            wide("Nominated Node"),
            wide("Readiness Gates"),
        ],
        "StatefulSet" => vec![
            s("Name"),
            s("Ready"),
            s("Age"),
            wide("Containers"),
            wide("Images"),
        ],
        "Service" => vec![
            s("Name"),
            s("Type"),
            s("Cluster-IP"),
            s("External-IP"),
            s("Port(s)"),
            s("Age"),
            wide("Selector"),
        ],
        "Secret" => vec![s("Name"), s("Type"), col("Data", "integer", 0), s("Age")],
        "ConfigMap" => vec![s("Name"), col("Data", "integer", 0), s("Age")],
        "PersistentVolumeClaim" => vec![
            s("Name"),
            s("Status"),
            s("Volume"),
            s("Capacity"),
            s("Access Modes"),
            s("StorageClass"),
            s("VolumeAttributesClass"),
            s("Age"),
            wide("VolumeMode"),
        ],
        "PersistentVolume" => vec![
            s("Name"),
            s("Capacity"),
            s("Access Modes"),
            s("Reclaim Policy"),
            s("Status"),
            s("Claim"),
            s("StorageClass"),
            s("VolumeAttributesClass"),
            s("Reason"),
            s("Age"),
            wide("VolumeMode"),
        ],
        "StorageClass" => vec![
            s("Name"),
            s("Provisioner"),
            s("ReclaimPolicy"),
            s("VolumeBindingMode"),
            col("AllowVolumeExpansion", "boolean", 0),
            s("Age"),
        ],
        "Event" => vec![
            s("Last Seen"),
            s("Type"),
            s("Reason"),
            s("Object"),
            wide("Subobject"),
            wide("Source"),
            s("Message"),
            wide("First Seen"),
            col("Count", "integer", 1),
            wide("Name"),
        ],
        "ResourceQuota" => vec![s("Name"), s("Age"), s("Request"), s("Limit")],
        "Node" => vec![s("Name"), s("Status"), s("Roles"), s("Age"), s("Version")],
        _ => vec![s("Name"), col("Created At", "date", 0)],
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The STATUS column of `kubectl get pods`, following the real printer's precedence.
pub fn pod_status(pod: &Value) -> String {
    let mut reason = pod["status"]["reason"]
        .as_str()
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    let mut has_running = false;
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for cs in statuses.iter().rev() {
        let state = &cs["state"];
        if let Some(w) = state["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = w.into();
        } else if let Some(t) = state["terminated"].as_object() {
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) if !r.is_empty() => r.into(),
                _ => format!(
                    "ExitCode:{}",
                    t.get("exitCode").map(text).unwrap_or_default()
                ),
            };
        } else if state.get("running").is_some() && cs["ready"] == true {
            has_running = true;
        }
    }
    if reason == "Completed" && has_running {
        reason = "Running".into();
    }
    if meta::is_terminating(pod) {
        reason = "Terminating".into();
    }
    reason
}

fn pod_restarts(pod: &Value) -> String {
    let statuses = pod["status"]["containerStatuses"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let restarts: i64 = statuses
        .iter()
        .map(|c| c["restartCount"].as_i64().unwrap_or(0))
        .sum();
    let last = statuses
        .iter()
        .filter_map(|c| c["lastState"]["terminated"]["finishedAt"].as_str())
        .filter_map(meta::parse_time)
        .max();
    match last {
        Some(t) if restarts > 0 => format!(
            "{restarts} ({} ago)",
            meta::human_duration(meta::unix_now() - t)
        ),
        _ => restarts.to_string(),
    }
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(meta::name(o));
    let age = json!(meta::age(o));
    let spec = &o["spec"];
    let status = &o["status"];
    match kind {
        "Namespace" => vec![name, json!(text(&status["phase"])), age],
        "Pod" => {
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let ready = status["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["ready"] == true)
                .count();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(pod_restarts(o)),
                age,
                json!(or_none(text(&status["podIP"]))),
                json!(or_none(text(&spec["nodeName"]))),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "StatefulSet" => {
            let containers: Vec<&Value> = spec["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .collect();
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    status["readyReplicas"].as_i64().unwrap_or(0),
                    spec["replicas"].as_i64().unwrap_or(1)
                )),
                age,
                json!(containers
                    .iter()
                    .map(|c| text(&c["name"]))
                    .collect::<Vec<_>>()
                    .join(",")),
                json!(containers
                    .iter()
                    .map(|c| text(&c["image"]))
                    .collect::<Vec<_>>()
                    .join(",")),
            ]
        }
        "Service" => {
            let kind = spec["type"].as_str().unwrap_or("ClusterIP");
            let ingress: Vec<String> = status["loadBalancer"]["ingress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    text(if i["ip"].is_null() {
                        &i["hostname"]
                    } else {
                        &i["ip"]
                    })
                })
                .collect();
            let external = match kind {
                "LoadBalancer" if ingress.is_empty() => "<pending>".to_string(),
                "LoadBalancer" => ingress.join(","),
                "ExternalName" => text(&spec["externalName"]),
                _ => "<none>".into(),
            };
            let ports: Vec<String> = spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| match p.get("nodePort") {
                    Some(np) => {
                        format!("{}:{}/{}", text(&p["port"]), text(np), text(&p["protocol"]))
                    }
                    None => format!("{}/{}", text(&p["port"]), text(&p["protocol"])),
                })
                .collect();
            let selector: Vec<String> = spec["selector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", text(v)))
                .collect();
            vec![
                name,
                json!(kind),
                json!(or_none(text(&spec["clusterIP"]))),
                json!(external),
                json!(or_none(ports.join(","))),
                age,
                json!(or_none(selector.join(","))),
            ]
        }
        "Secret" => vec![
            name,
            json!(text(&o["type"])),
            json!(o["data"].as_object().map_or(0, |m| m.len())),
            age,
        ],
        "ConfigMap" => vec![
            name,
            json!(o["data"].as_object().map_or(0, |m| m.len())),
            age,
        ],
        "PersistentVolumeClaim" => vec![
            name,
            json!(text(&status["phase"])),
            json!(text(&spec["volumeName"])),
            json!(text(&status["capacity"]["storage"])),
            json!(access_modes(&status["accessModes"])),
            json!(text(&spec["storageClassName"])),
            json!(or_unset(text(&spec["volumeAttributesClassName"]))),
            age,
            json!(text(&spec["volumeMode"])),
        ],
        "PersistentVolume" => vec![
            name,
            json!(text(&spec["capacity"]["storage"])),
            json!(access_modes(&spec["accessModes"])),
            json!(text(&spec["persistentVolumeReclaimPolicy"])),
            json!(text(&status["phase"])),
            json!(format!(
                "{}/{}",
                text(&spec["claimRef"]["namespace"]),
                text(&spec["claimRef"]["name"])
            )),
            json!(text(&spec["storageClassName"])),
            json!(or_unset(text(&spec["volumeAttributesClassName"]))),
            json!(text(&status["reason"])),
            age,
            json!(text(&spec["volumeMode"])),
        ],
        "StorageClass" => {
            let mut shown = meta::name(o).to_string();
            if meta::annotation(o, "storageclass.kubernetes.io/is-default-class") == Some("true") {
                shown.push_str(" (default)");
            }
            vec![
                json!(shown),
                json!(text(&o["provisioner"])),
                json!(text(&o["reclaimPolicy"])),
                json!(text(&o["volumeBindingMode"])),
                json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false)),
                age,
            ]
        }
        "Event" => {
            let last = o["lastTimestamp"]
                .as_str()
                .or(o["eventTime"].as_str())
                .and_then(meta::parse_time)
                .map(|t| meta::human_duration(meta::unix_now() - t))
                .unwrap_or_else(|| "<unknown>".into());
            let first = o["firstTimestamp"]
                .as_str()
                .and_then(meta::parse_time)
                .map(|t| meta::human_duration(meta::unix_now() - t))
                .unwrap_or_else(|| "<unknown>".into());
            let involved = &o["involvedObject"];
            vec![
                json!(last),
                json!(text(&o["type"])),
                json!(text(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    text(&involved["kind"]).to_lowercase(),
                    text(&involved["name"])
                )),
                json!(text(&involved["fieldPath"])),
                json!(format!(
                    "{}, {}",
                    text(&o["source"]["component"]),
                    text(&o["source"]["host"])
                )),
                json!(text(&o["message"])),
                json!(first),
                json!(o["count"].as_i64().unwrap_or(1)),
                name,
            ]
        }
        "ResourceQuota" => {
            let mut request = Vec::new();
            let mut limit = Vec::new();
            for (k, hard) in status["hard"].as_object().into_iter().flatten() {
                let used = text(&status["used"][k]);
                let entry = format!(
                    "{k}: {}/{}",
                    if used.is_empty() { "0".into() } else { used },
                    text(hard)
                );
                if k.starts_with("limits.") {
                    limit.push(entry);
                } else {
                    request.push(entry);
                }
            }
            vec![
                name,
                age,
                json!(request.join(", ")),
                json!(limit.join(", ")),
            ]
        }
        "Node" => vec![
            name,
            json!("Ready"),
            json!("control-plane"),
            age,
            json!(text(&status["nodeInfo"]["kubeletVersion"])),
        ],
        _ => vec![name, o["metadata"]["creationTimestamp"].clone()],
    }
}

fn or_unset(s: String) -> String {
    if s.is_empty() {
        "<unset>".into()
    } else {
        s
    }
}

/// How much of each object a row carries (`includeObject`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(value: Option<&str>) -> Include {
        match value {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

fn row(kind: &str, object: &Value, include: Include) -> Value {
    let embedded = match include {
        Include::None => Value::Null,
        Include::Object => object.clone(),
        Include::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": object["metadata"],
        }),
    };
    json!({"cells": cells(kind, object), "object": embedded})
}

/// A Table of `objects` of `kind`.
pub fn table(kind: &str, objects: &[Value], resource_version: &str, include: Include) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns(kind),
        "rows": objects.iter().map(|o| row(kind, o, include)).collect::<Vec<_>>(),
    })
}

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}
