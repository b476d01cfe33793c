//! Field ownership (`metadata.managedFields`, FieldsV1) and server-side apply.
//!
//! A manager owns the field paths it applied (operation `Apply`) or last changed (operation
//! `Update`). Apply merges the configuration into the object, removes fields the manager applied
//! before but no longer does (unless someone else owns them), and refuses to change a value
//! another manager owns unless forced: the behaviour `kubectl apply --server-side` and a
//! plugin's repeated installs rely on. Paths use FieldsV1 tokens: `f:<field>`, `k:{<key>}` for
//! keyed list items and `v:<value>` for set-like lists.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

use super::merge::{apply_merge, merge_key};
use super::meta;

pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Which part of an object a request may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    /// The main resource: everything but `status`.
    Main,
    /// The `status` subresource: only `status`.
    Status,
}

/// Paths a configuration sets: leaves (scalars, atomic lists, empty maps) and keyed list items.
pub fn field_set(object: &Value, part: Part) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(map) = object.as_object() else {
        return out;
    };
    let mut prefix = Vec::new();
    for (key, value) in map {
        match (key.as_str(), part) {
            ("apiVersion" | "kind", _) => {}
            ("status", Part::Main) => {}
            ("status", Part::Status) => walk(value, key, &mut prefix, &mut out),
            (_, Part::Status) => {}
            ("metadata", Part::Main) => {
                for field in ["labels", "annotations", "finalizers", "ownerReferences"] {
                    if let Some(v) = value.get(field) {
                        prefix.push("f:metadata".into());
                        walk(v, field, &mut prefix, &mut out);
                        prefix.pop();
                    }
                }
            }
            _ => walk(value, key, &mut prefix, &mut out),
        }
    }
    out
}

fn walk(value: &Value, key: &str, prefix: &mut FieldPath, out: &mut FieldSet) {
    prefix.push(format!("f:{key}"));
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                walk(v, k, prefix, out);
            }
        }
        Value::Array(items) if key == "finalizers" => {
            for item in items {
                prefix.push(format!("v:{item}"));
                out.insert(prefix.clone());
                prefix.pop();
            }
        }
        Value::Array(items) => match merge_key(key, items) {
            Some(mk) => {
                for item in items {
                    prefix.push(key_token(mk, &item[mk]));
                    out.insert(prefix.clone());
                    if let Some(fields) = item.as_object() {
                        for (k, v) in fields {
                            walk(v, k, prefix, out);
                        }
                    }
                    prefix.pop();
                }
            }
            None => {
                out.insert(prefix.clone());
            }
        },
        _ => {
            out.insert(prefix.clone());
        }
    }
    prefix.pop();
}

fn key_token(key: &str, value: &Value) -> String {
    let mut map = Map::new();
    map.insert(key.into(), value.clone());
    format!("k:{}", Value::Object(map))
}

/// The value at a token path, if present.
pub fn get_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(object, |v, token| step(v, token))
}

fn step<'a>(value: &'a Value, token: &str) -> Option<&'a Value> {
    if let Some(field) = token.strip_prefix("f:") {
        value.get(field)
    } else if let Some(key) = token.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        value
            .as_array()?
            .iter()
            .find(|item| key.iter().all(|(k, v)| &item[k] == v))
    } else if let Some(item) = token.strip_prefix("v:") {
        let item: Value = serde_json::from_str(item).ok()?;
        value.as_array()?.iter().find(|v| **v == item)
    } else {
        None
    }
}

/// Removes the field, list item or set member at `path` (no-op if absent).
fn remove_at(object: &mut Value, path: &[String]) {
    let Some((last, parent_path)) = path.split_last() else {
        return;
    };
    let mut parent = object;
    for token in parent_path {
        let next = if let Some(field) = token.strip_prefix("f:") {
            parent.get_mut(field)
        } else {
            let index = index_of(parent, token);
            match index {
                Some(i) => parent.as_array_mut().and_then(|a| a.get_mut(i)),
                None => None,
            }
        };
        match next {
            Some(n) => parent = n,
            None => return,
        }
    }
    if let Some(field) = last.strip_prefix("f:") {
        if let Some(map) = parent.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(i) = index_of(parent, last) {
        if let Some(items) = parent.as_array_mut() {
            items.remove(i);
        }
    }
}

fn index_of(list: &Value, token: &str) -> Option<usize> {
    let items = list.as_array()?;
    if let Some(key) = token.strip_prefix("k:") {
        let key: Map<String, Value> = serde_json::from_str(key).ok()?;
        items
            .iter()
            .position(|item| key.iter().all(|(k, v)| &item[k] == v))
    } else {
        let item: Value = serde_json::from_str(token.strip_prefix("v:")?).ok()?;
        items.iter().position(|v| *v == item)
    }
}

/// `.spec.template.spec.containers[name="postgres"].image`, as conflict messages print paths.
pub fn display_path(path: &[String]) -> String {
    let mut out = String::new();
    for token in path {
        if let Some(field) = token.strip_prefix("f:") {
            out.push('.');
            out.push_str(field);
        } else if let Some(key) = token.strip_prefix("k:") {
            let key: Map<String, Value> = serde_json::from_str(key).unwrap_or_default();
            let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(v) = token.strip_prefix("v:") {
            out.push_str(&format!("[{v}]"));
        }
    }
    out
}

#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

fn entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().into(),
            operation: e["operation"].as_str().unwrap_or("Update").into(),
            api_version: e["apiVersion"].as_str().unwrap_or_default().into(),
            time: e["time"].as_str().unwrap_or_default().into(),
            subresource: e["subresource"].as_str().map(str::to_string),
            fields: parse_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

fn parse_fields_v1(tree: &Value) -> FieldSet {
    fn go(node: &Value, prefix: &mut FieldPath, out: &mut FieldSet) {
        let Some(map) = node.as_object() else {
            return;
        };
        if (map.is_empty() || map.contains_key(".")) && !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        for (token, child) in map {
            if token == "." {
                continue;
            }
            prefix.push(token.clone());
            go(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = FieldSet::new();
    go(tree, &mut Vec::new(), &mut out);
    out
}

fn render_fields_v1(fields: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in fields {
        let mut node = &mut root;
        for token in path {
            node = node
                .entry(token.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .expect("object");
        }
        node.insert(".".into(), json!({}));
    }
    // A "." with no siblings is just an owned leaf: `{}`.
    fn tidy(node: &mut Map<String, Value>) {
        if node.len() == 1 && node.contains_key(".") {
            node.clear();
            return;
        }
        for (token, child) in node.iter_mut() {
            if token != "." {
                if let Some(map) = child.as_object_mut() {
                    tidy(map);
                }
            }
        }
        // Plain struct fields carry no "." in real FieldsV1; keyed items and maps do.
    }
    tidy(&mut root);
    Value::Object(root)
}

fn write_entries(object: &mut Value, entries: Vec<Entry>) {
    let rendered: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": render_fields_v1(&e.fields),
            });
            if let Some(sub) = e.subresource {
                v["subresource"] = json!(sub);
            }
            v
        })
        .collect();
    let metadata = meta::metadata_mut(object);
    if rendered.is_empty() {
        metadata.remove("managedFields");
    } else {
        metadata.insert("managedFields".into(), Value::Array(rendered));
    }
}

fn is_leaf(applied: &Value, path: &[String]) -> bool {
    match get_at(applied, path) {
        Some(Value::Object(map)) => map.is_empty(),
        Some(_) => true,
        None => false,
    }
}

fn subresource_name(part: Part) -> Option<String> {
    match part {
        Part::Main => None,
        Part::Status => Some("status".into()),
    }
}

/// A conflict: (manager, its apiVersion, field path as printed).
pub type Conflict = (String, String, String);

/// Server-side apply of `applied` by `manager` onto `existing` (or a new object).
pub fn apply(
    existing: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
    part: Part,
) -> Result<Value, Vec<Conflict>> {
    let api_version = applied["apiVersion"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut object = match existing {
        Some(o) => o.clone(),
        None => json!({
            "apiVersion": applied["apiVersion"],
            "kind": applied["kind"],
            "metadata": {},
        }),
    };
    let mut all = entries(&object);
    let new_set = field_set(applied, part);
    let sub = subresource_name(part);
    let is_self =
        |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource == sub;

    let mut conflicts = Vec::new();
    for entry in all.iter_mut().filter(|e| !is_self(e)) {
        let contested: Vec<FieldPath> = entry
            .fields
            .intersection(&new_set)
            .filter(|p| is_leaf(applied, p) && get_at(&object, p) != get_at(applied, p))
            .cloned()
            .collect();
        if contested.is_empty() {
            continue;
        }
        if force {
            for p in &contested {
                entry.fields.remove(p);
            }
        } else {
            conflicts.extend(contested.iter().map(|p| {
                (
                    entry.manager.clone(),
                    entry.api_version.clone(),
                    display_path(p),
                )
            }));
        }
    }
    if !conflicts.is_empty() {
        return Err(conflicts);
    }

    // Fields this manager applied before and no longer applies go, unless others own them.
    let old_self: FieldSet = all
        .iter()
        .filter(|e| is_self(e))
        .flat_map(|e| e.fields.iter().cloned())
        .collect();
    let mut dropped: Vec<&FieldPath> = old_self.difference(&new_set).collect();
    dropped.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for path in dropped {
        let owned_elsewhere = all
            .iter()
            .filter(|e| !is_self(e))
            .any(|e| e.fields.iter().any(|p| p.starts_with(path)));
        let still_applied = new_set.iter().any(|p| p.starts_with(path));
        if !owned_elsewhere && !still_applied {
            remove_at(&mut object, path);
            // Containers left empty by the removal go too (`labels: {}` is not kept).
            let mut parent = &path[..path.len() - 1];
            while !parent.is_empty()
                && get_at(&object, parent).is_some_and(|v| {
                    v.as_object().is_some_and(Map::is_empty)
                        || v.as_array().is_some_and(Vec::is_empty)
                })
                && !all.iter().any(|e| e.fields.contains(parent))
            {
                remove_at(&mut object, parent);
                parent = &parent[..parent.len() - 1];
            }
        }
    }

    let mut config = applied.clone();
    if let Some(metadata) = config.get_mut("metadata").and_then(Value::as_object_mut) {
        for key in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
        ] {
            metadata.remove(key);
        }
    }
    if let Some(map) = config.as_object_mut() {
        match part {
            Part::Main => {
                if existing.is_some() {
                    map.remove("status");
                }
            }
            Part::Status => map.retain(|k, _| k == "status"),
        }
    }
    apply_merge(&mut object, &config);

    all.retain(|e| !is_self(e));
    all.push(Entry {
        manager: manager.into(),
        operation: "Apply".into(),
        api_version,
        time: meta::now(),
        subresource: sub,
        fields: new_set,
    });
    prune(&object, &mut all);
    write_entries(&mut object, all);
    Ok(object)
}

/// Records an ordinary write (create, update, merge/JSON patch) by `manager`: it takes the
/// fields it changed from everyone else.
pub fn track_update(
    old: Option<&Value>,
    new: &mut Value,
    manager: &str,
    api_version: &str,
    part: Part,
) {
    let mut all = match old {
        Some(o) => entries(o),
        None => Vec::new(),
    };
    let changed: FieldSet = field_set(new, part)
        .into_iter()
        .filter(|p| old.is_none_or(|o| get_at(o, p) != get_at(new, p)))
        .collect();
    let sub = subresource_name(part);
    if !changed.is_empty() {
        for entry in all.iter_mut() {
            entry.fields.retain(|p| !changed.contains(p));
        }
        match all
            .iter_mut()
            .find(|e| e.manager == manager && e.operation == "Update" && e.subresource == sub)
        {
            Some(e) => {
                e.fields.extend(changed);
                e.time = meta::now();
            }
            None => all.push(Entry {
                manager: manager.into(),
                operation: "Update".into(),
                api_version: api_version.into(),
                time: meta::now(),
                subresource: sub,
                fields: changed,
            }),
        }
    }
    prune(new, &mut all);
    write_entries(new, all);
}

/// Drops ownership of paths that no longer exist.
fn prune(object: &Value, all: &mut [Entry]) {
    for entry in all.iter_mut() {
        entry.fields.retain(|p| get_at(object, p).is_some());
    }
}

/// The managers of an object with their operations, for tests and debugging.
pub fn managers(object: &Value) -> BTreeMap<String, String> {
    entries(object)
        .into_iter()
        .map(|e| (e.manager, e.operation))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i64, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
               "metadata": {"name": "pg", "labels": {"a": "1"}},
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                   {"name": "postgres", "image": image}]}}}})
    }

    #[test]
    fn apply_creates_then_conflicts_with_other_manager() {
        let created = apply(
            None,
            &sts(1, "postgres:17"),
            "kubectl-pg",
            false,
            Part::Main,
        )
        .expect("no conflicts on create");
        assert_eq!(created["spec"]["replicas"], 1);
        assert!(
            created["metadata"]["managedFields"][0]["fieldsV1"]["f:spec"]["f:template"]["f:spec"]
                ["f:containers"]["k:{\"name\":\"postgres\"}"]
                .get(".")
                .is_some()
        );
        let conflicts = apply(
            Some(&created),
            &sts(2, "postgres:17"),
            "other",
            false,
            Part::Main,
        )
        .unwrap_err();
        assert_eq!(
            conflicts,
            vec![(
                "kubectl-pg".to_string(),
                "apps/v1".to_string(),
                ".spec.replicas".to_string()
            )]
        );
        let forced = apply(
            Some(&created),
            &sts(2, "postgres:17"),
            "other",
            true,
            Part::Main,
        )
        .expect("forced");
        assert_eq!(forced["spec"]["replicas"], 2);
        assert_eq!(managers(&forced).len(), 2);
    }

    #[test]
    fn apply_removes_fields_no_longer_applied() {
        let created = apply(None, &sts(1, "postgres:17"), "m", false, Part::Main).unwrap();
        let mut smaller = sts(1, "postgres:17");
        smaller["metadata"]
            .as_object_mut()
            .unwrap()
            .remove("labels");
        let after = apply(Some(&created), &smaller, "m", false, Part::Main).unwrap();
        assert!(after["metadata"].get("labels").is_none(), "{after}");
    }
}
