//! A minimal OpenAPI v3 index: enough for kubectl to see that every kind's PATCH takes the
//! `fieldValidation` query parameter, so it validates on the server side (as with a real
//! cluster) instead of downloading schemas. No schemas are served (`kubectl explain` and
//! client-side validation are out of scope).

use serde_json::{json, Map, Value};

use super::resources::ResourceType;

fn gv_path(rt: &ResourceType) -> String {
    if rt.group.is_empty() {
        format!("api/{}", rt.version)
    } else {
        format!("apis/{}/{}", rt.group, rt.version)
    }
}

/// `GET /openapi/v3`: one entry per group version served.
pub fn root(types: &[std::sync::Arc<ResourceType>]) -> Value {
    let mut paths = Map::new();
    for rt in types {
        let gv = gv_path(rt);
        paths.insert(
            gv.clone(),
            json!({"serverRelativeURL": format!("/openapi/v3/{gv}?hash=E2E{}", gv.len())}),
        );
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/<gv>`: PATCH operations of the kinds in that group version.
pub fn group_version(types: &[std::sync::Arc<ResourceType>], gv: &str) -> Option<Value> {
    let mut paths = Map::new();
    for rt in types
        .iter()
        .filter(|rt| gv_path(rt) == gv && !rt.create_only)
    {
        let path = if rt.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}/{{name}}", rt.plural)
        } else {
            format!("/{gv}/{}/{{name}}", rt.plural)
        };
        let parameters: Vec<Value> = ["dryRun", "fieldManager", "fieldValidation", "force"]
            .iter()
            .map(|name| json!({"name": name, "in": "query", "schema": {"type": "string"}, "uniqueItems": true}))
            .collect();
        paths.insert(
            path,
            json!({"patch": {
                "tags": [gv.replace('/', "_")],
                "operationId": format!("patch{}", rt.kind),
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version, "kind": rt.kind},
            }}),
        );
    }
    if paths.is_empty() {
        return None;
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::discovery::GIT_VERSION},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}
