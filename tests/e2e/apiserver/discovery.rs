//! API discovery, served from documents a real kube-apiserver returned (`discovery/*.json`,
//! copied from kubernetes/kubernetes `api/discovery/`, Apache-2.0): the legacy per-group
//! documents and the aggregated `apidiscovery.k8s.io/v2` lists kubectl and kube-rs prefer.
//! Groups that have no legacy document of their own are derived from the aggregated one.

use serde_json::{json, Value};

/// The Content-Type of aggregated discovery responses.
pub const AGGREGATED: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

pub const GIT_VERSION: &str = "v1.33.1";

fn doc(text: &str) -> Value {
    serde_json::from_str(text).expect("discovery documents are JSON")
}

fn legacy(path: &str) -> Option<Value> {
    let text = match path {
        "/api" => include_str!("discovery/api.json"),
        "/api/v1" => include_str!("discovery/api__v1.json"),
        "/apis" => include_str!("discovery/apis.json"),
        "/apis/apps" => include_str!("discovery/apis__apps.json"),
        "/apis/apps/v1" => include_str!("discovery/apis__apps__v1.json"),
        "/apis/authorization.k8s.io" => include_str!("discovery/apis__authorization.k8s.io.json"),
        "/apis/authorization.k8s.io/v1" => {
            include_str!("discovery/apis__authorization.k8s.io__v1.json")
        }
        "/apis/storage.k8s.io" => include_str!("discovery/apis__storage.k8s.io.json"),
        "/apis/storage.k8s.io/v1" => include_str!("discovery/apis__storage.k8s.io__v1.json"),
        _ => return None,
    };
    Some(doc(text))
}

fn aggregated_apis() -> Value {
    doc(include_str!("discovery/aggregated_v2.json"))
}

/// Whether the Accept header asks for aggregated discovery (v2).
pub fn wants_aggregated(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=APIGroupDiscoveryList") && first.contains("v=v2"))
}

/// The aggregated document for `/api` (the core group) or `/apis`.
pub fn aggregated(path: &str) -> Option<Value> {
    match path {
        "/apis" => Some(aggregated_apis()),
        "/api" => {
            let v1 = legacy("/api/v1")?;
            let resources = to_aggregated_resources(&v1["resources"]);
            Some(json!({
                "kind": "APIGroupDiscoveryList",
                "apiVersion": "apidiscovery.k8s.io/v2",
                "metadata": {},
                "items": [{
                    "metadata": {"creationTimestamp": null},
                    "versions": [{"version": "v1", "resources": resources, "freshness": "Current"}],
                }],
            }))
        }
        _ => None,
    }
}

/// Legacy APIResource entries → aggregated APIResourceDiscovery entries.
fn to_aggregated_resources(resources: &Value) -> Vec<Value> {
    let list = resources.as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for r in list
        .iter()
        .filter(|r| !r["name"].as_str().unwrap_or("/").contains('/'))
    {
        let name = r["name"].as_str().unwrap_or_default();
        let subresources: Vec<Value> = list
            .iter()
            .filter_map(|s| {
                let (parent, sub) = s["name"].as_str()?.split_once('/')?;
                (parent == name).then(|| {
                    json!({
                        "subresource": sub,
                        "responseKind": {
                            "group": s["group"].as_str().unwrap_or(""),
                            "version": s["version"].as_str().unwrap_or(""),
                            "kind": s["kind"],
                        },
                        "verbs": s["verbs"],
                    })
                })
            })
            .collect();
        let mut entry = json!({
            "resource": name,
            "responseKind": {"group": "", "version": "", "kind": r["kind"]},
            "scope": if r["namespaced"] == true { "Namespaced" } else { "Cluster" },
            "singularResource": r["singularName"],
            "verbs": r["verbs"],
        });
        for key in ["shortNames", "categories"] {
            if let Some(v) = r.get(key) {
                entry[key] = v.clone();
            }
        }
        if !subresources.is_empty() {
            entry["subresources"] = json!(subresources);
        }
        out.push(entry);
    }
    out
}

/// A legacy discovery document for `path` (`/api`, `/api/v1`, `/apis`, `/apis/G`, `/apis/G/V`).
pub fn legacy_document(path: &str, server_address: &str) -> Option<Value> {
    if let Some(mut d) = legacy(path) {
        if path == "/api" {
            d["serverAddressByClientCIDRs"] =
                json!([{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}]);
        }
        return Some(d);
    }
    let rest = path.strip_prefix("/apis/")?;
    let (group, version) = match rest.split_once('/') {
        Some((g, v)) => (g, Some(v)),
        None => (rest, None),
    };
    let all = aggregated_apis();
    let item = all["items"]
        .as_array()?
        .iter()
        .find(|i| i["metadata"]["name"] == group)?
        .clone();
    let versions = item["versions"].as_array()?.clone();
    match version {
        None => {
            let list: Vec<Value> = versions
                .iter()
                .map(|v| {
                    let v = v["version"].as_str().unwrap_or_default();
                    json!({"groupVersion": format!("{group}/{v}"), "version": v})
                })
                .collect();
            Some(json!({
                "kind": "APIGroup",
                "apiVersion": "v1",
                "name": group,
                "versions": list,
                "preferredVersion": list.first(),
            }))
        }
        Some(version) => {
            let found = versions.iter().find(|v| v["version"] == version)?;
            let mut resources = Vec::new();
            for r in found["resources"].as_array().into_iter().flatten() {
                let mut entry = json!({
                    "name": r["resource"],
                    "singularName": r["singularResource"],
                    "namespaced": r["scope"] == "Namespaced",
                    "kind": r["responseKind"]["kind"],
                    "verbs": r["verbs"],
                });
                for key in ["shortNames", "categories"] {
                    if let Some(v) = r.get(key) {
                        entry[key] = v.clone();
                    }
                }
                resources.push(entry);
                for s in r["subresources"].as_array().into_iter().flatten() {
                    resources.push(json!({
                        "name": format!("{}/{}", r["resource"].as_str().unwrap_or_default(), s["subresource"].as_str().unwrap_or_default()),
                        "singularName": "",
                        "namespaced": r["scope"] == "Namespaced",
                        "kind": s["responseKind"]["kind"],
                        "verbs": s["verbs"],
                    }));
                }
            }
            Some(json!({
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": format!("{group}/{version}"),
                "resources": resources,
            }))
        }
    }
}

pub fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "emulationMajor": "1",
        "emulationMinor": "33",
        "minCompatibilityMajor": "1",
        "minCompatibilityMinor": "32",
        "gitVersion": GIT_VERSION,
        "gitCommit": "8adc0f041b8e7ad1d30e29cc59c6ae7a15e19828",
        "gitTreeState": "clean",
        "buildDate": "2025-05-15T08:19:08Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}
