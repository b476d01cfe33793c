//! JSON merge patch (RFC 7386), the strategic merge patch subset kubectl and kube-rs send, and
//! JSON patch (RFC 6902): how PATCH bodies change a stored object.
//!
//! Strategic merge and server-side apply both merge lists of objects by a key field (containers
//! by `name`, container ports by `containerPort`, volume mounts by `mountPath`, ...);
//! [`merge_key`] names that field the way the Kubernetes schemas do. Other lists are atomic.

use serde_json::{Map, Value};

/// The field identifying items of the list `field` (whose items look like `items`), or `None`
/// for atomic lists.
pub fn merge_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let first = items.iter().find(|i| i.is_object())?;
    let key = match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "hostAliases" => "ip",
        "ports" if first.get("containerPort").is_some() => "containerPort",
        "ports" if first.get("port").is_some() => "port",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "conditions" => "type",
        "ownerReferences" => "uid",
        _ => return None,
    };
    items.iter().all(|i| i.get(key).is_some()).then_some(key)
}

/// RFC 7386: objects merge recursively, `null` deletes, anything else replaces.
pub fn json_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("object");
    for (key, value) in patch_map {
        if value.is_null() {
            target_map.remove(key);
        } else {
            json_merge(target_map.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// Strategic merge: like a merge patch, but keyed lists merge item by item (`$patch: delete`
/// on an item removes it) and `$retainKeys`/other directives are ignored.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("object");
    for (key, value) in patch_map {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target_map.remove(key);
            continue;
        }
        match (value, target_map.get_mut(key)) {
            (Value::Array(items), Some(Value::Array(existing))) => {
                if let Some(k) = merge_key(key, items).or_else(|| merge_key(key, existing)) {
                    merge_keyed_list(existing, items, k, true);
                } else {
                    target_map.insert(key.clone(), value.clone());
                }
            }
            (Value::Object(_), Some(slot)) => strategic_merge(slot, value),
            _ => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, value);
                target_map.insert(key.clone(), strip_directives(fresh));
            }
        }
    }
}

fn strip_directives(mut value: Value) -> Value {
    if let Some(map) = value.as_object_mut() {
        map.retain(|k, _| !k.starts_with('$'));
        for v in map.values_mut() {
            *v = strip_directives(v.take());
        }
    } else if let Some(items) = value.as_array_mut() {
        items.retain(|i| i.get("$patch").and_then(Value::as_str) != Some("delete"));
        for v in items.iter_mut() {
            *v = strip_directives(v.take());
        }
    }
    value
}

/// Merges `patch` items into `existing` by `key`; new items are appended in patch order.
pub fn merge_keyed_list(existing: &mut Vec<Value>, patch: &[Value], key: &str, strategic: bool) {
    for item in patch {
        let id = &item[key];
        let delete = strategic && item.get("$patch").and_then(Value::as_str) == Some("delete");
        match existing.iter().position(|e| &e[key] == id) {
            Some(i) if delete => {
                existing.remove(i);
            }
            Some(i) => {
                if strategic {
                    strategic_merge(&mut existing[i], item)
                } else {
                    apply_merge(&mut existing[i], item)
                }
            }
            None if delete => {}
            None => existing.push(if strategic {
                strip_directives(item.clone())
            } else {
                item.clone()
            }),
        }
    }
}

/// The merge server-side apply does: objects recursively, keyed lists by key, the rest replaced.
/// (Removal of fields the manager no longer applies is handled by the caller.)
pub fn apply_merge(target: &mut Value, applied: &Value) {
    let Value::Object(applied_map) = applied else {
        *target = applied.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target_map = target.as_object_mut().expect("object");
    for (key, value) in applied_map {
        match (value, target_map.get_mut(key)) {
            (Value::Array(items), Some(Value::Array(existing))) => {
                match merge_key(key, items).or_else(|| merge_key(key, existing)) {
                    Some(k) => merge_keyed_list(existing, items, k, false),
                    None => *existing = items.clone(),
                }
            }
            (Value::Object(_), Some(slot)) if slot.is_object() => apply_merge(slot, value),
            _ => {
                target_map.insert(key.clone(), value.clone());
            }
        }
    }
}

/// RFC 6902 JSON patch (add, remove, replace, test, move, copy).
pub fn json_patch(target: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch must be an array")?;
    for op in ops {
        let path = op["path"].as_str().ok_or("op without path")?;
        match op["op"].as_str() {
            Some("add") => add(target, path, op["value"].clone())?,
            Some("remove") => {
                remove(target, path)?;
            }
            Some("replace") => {
                remove(target, path)?;
                add(target, path, op["value"].clone())?;
            }
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(format!("testing value {path} failed"));
                }
            }
            Some("move") => {
                let from = op["from"].as_str().ok_or("move without from")?;
                let value = remove(target, from)?;
                add(target, path, value)?;
            }
            Some("copy") => {
                let from = op["from"].as_str().ok_or("copy without from")?;
                let value = target
                    .pointer(from)
                    .cloned()
                    .ok_or_else(|| format!("copy from missing path {from}"))?;
                add(target, path, value)?;
            }
            other => return Err(format!("unknown JSON patch op {other:?}")),
        }
    }
    Ok(())
}

fn split_pointer(path: &str) -> Result<(String, String), String> {
    let (parent, last) = path
        .rsplit_once('/')
        .ok_or_else(|| format!("invalid path {path}"))?;
    Ok((
        parent.to_string(),
        last.replace("~1", "/").replace("~0", "~"),
    ))
}

fn add(target: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *target = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    let slot = target
        .pointer_mut(&parent)
        .ok_or_else(|| format!("add operation does not apply: doc is missing path: \"{path}\""))?;
    match slot {
        Value::Object(map) => {
            map.insert(last, value);
        }
        Value::Array(items) => {
            if last == "-" {
                items.push(value);
            } else {
                let i: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
                if i > items.len() {
                    return Err(format!("index {i} out of range"));
                }
                items.insert(i, value);
            }
        }
        _ => return Err(format!("cannot add at {path}")),
    }
    Ok(())
}

fn remove(target: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("remove operation does not apply: doc is missing path: \"{path}\"");
    match target.pointer_mut(&parent).ok_or_else(missing)? {
        Value::Object(map) => map.remove(&last).ok_or_else(missing),
        Value::Array(items) => {
            let i: usize = last.parse().map_err(|_| missing())?;
            (i < items.len())
                .then(|| items.remove(i))
                .ok_or_else(missing)
        }
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}]},
            {"name": "b", "image": "y"}
        ]}});
        strategic_merge(
            &mut pod,
            &json!({"spec": {"containers": [
                {"name": "a", "env": [{"name": "B", "value": "2"}]},
                {"name": "b", "$patch": "delete"}
            ]}}),
        );
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "a", "image": "x", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}
            ]}})
        );
    }

    #[test]
    fn merge_patch_deletes_with_null() {
        let mut o = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        json_merge(&mut o, &json!({"a": {"b": null}, "l": [3]}));
        assert_eq!(o, json!({"a": {"c": 2}, "l": [3]}));
    }

    #[test]
    fn json_patch_ops() {
        let mut o = json!({"metadata": {"labels": {"a": "1"}}, "l": [1]});
        json_patch(
            &mut o,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "add", "path": "/l/-", "value": 2},
                {"op": "test", "path": "/l/1", "value": 2}
            ]),
        )
        .unwrap();
        assert_eq!(o, json!({"metadata": {"labels": {"b": "2"}}, "l": [1, 2]}));
    }
}
