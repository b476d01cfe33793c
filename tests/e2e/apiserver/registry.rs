//! The write path of every kind, as kube-apiserver's registry runs it: decode checks, namespace
//! lifecycle, defaulting, validation, quota admission, field ownership, dry run, then the store.
//! Both HTTP requests and the simulator's controllers write through here, so controller-made
//! objects (pods, claims) are admitted exactly like user-made ones.

use std::sync::Arc;

use serde_json::{json, Value};

use super::defaults::{self, Allocator};
use super::faults::Faults;
use super::fields::{self, Part};
use super::merge;
use super::meta;
use super::quota;
use super::resources::ResourceType;
use super::selectors::LabelSelector;
use super::status::{self, ApiError, Cause};
use super::store::Store;
use super::validation;

/// Who writes, and how.
#[derive(Clone, Debug)]
pub struct Ctx {
    pub user: String,
    /// Field manager for ownership tracking.
    pub manager: String,
    pub dry_run: bool,
}

impl Ctx {
    /// A controller of the simulated control plane.
    pub fn system(manager: &str) -> Ctx {
        Ctx {
            user: format!("system:serviceaccount:kube-system:{manager}"),
            manager: manager.into(),
            dry_run: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    Merge,
    Strategic,
    Json,
    Apply,
}

impl PatchType {
    pub fn from_content_type(content_type: &str) -> Option<PatchType> {
        let base = content_type.split(';').next().unwrap_or_default().trim();
        match base {
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/json-patch+json" => Some(PatchType::Json),
            "application/apply-patch+yaml" | "application/apply-patch+json" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub grace_period: Option<i64>,
    /// `Background` (default), `Foreground` or `Orphan`.
    pub propagation: Option<String>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

pub struct Registry {
    pub store: Arc<Store>,
    pub faults: Arc<Faults>,
    alloc: Allocator,
}

/// The result of a write, with whether it created the object (201 vs 200).
pub struct Written {
    pub object: Value,
    pub created: bool,
}

impl Registry {
    pub fn new(store: Arc<Store>, faults: Arc<Faults>) -> Registry {
        Registry {
            store,
            faults,
            alloc: Allocator::default(),
        }
    }

    fn namespace_rt(&self) -> Arc<ResourceType> {
        self.store.by_plural("namespaces")
    }

    /// NamespaceLifecycle admission: the namespace must exist and not be terminating.
    fn check_namespace(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<(), ApiError> {
        if !rt.namespaced {
            return Ok(());
        }
        match self.store.get(&self.namespace_rt(), "", ns) {
            None => Err(ApiError::not_found_named("", "namespaces", ns)),
            Some(n) if meta::is_terminating(&n) => {
                Err(ApiError::namespace_terminating(rt, name, ns))
            }
            Some(_) => Ok(()),
        }
    }

    /// Normalises identity fields of a body for `rt` in `ns`.
    fn prepare_body(
        &self,
        rt: &ResourceType,
        ns: &str,
        body: &mut Value,
        url_name: Option<&str>,
    ) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format",
            ));
        }
        let kind = body["kind"].as_str().unwrap_or_default();
        if !kind.is_empty() && kind != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                body["apiVersion"].as_str().unwrap_or_default(),
                rt.api_version()
            )));
        }
        body["kind"] = json!(rt.kind);
        body["apiVersion"] = json!(rt.api_version());
        let metadata = meta::metadata_mut(body);
        if rt.namespaced {
            match metadata.get("namespace").and_then(Value::as_str) {
                Some(given) if !given.is_empty() && given != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ))
                }
                _ => {
                    metadata.insert("namespace".into(), json!(ns));
                }
            }
        } else {
            metadata.remove("namespace");
        }
        if let Some(url_name) = url_name {
            let given = metadata
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if given.is_empty() {
                metadata.insert("name".into(), json!(url_name));
            } else if given != url_name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({given}) does not match the name on the URL ({url_name})"
                )));
            }
        }
        Ok(())
    }

    fn admit_quota(&self, rt: &ResourceType, ns: &str, object: &Value) -> Result<(), ApiError> {
        if !rt.namespaced || quota::charges(&rt.kind, object).is_empty() {
            return Ok(());
        }
        let (quotas, _) = self
            .store
            .list(&self.store.by_plural("resourcequotas"), Some(ns));
        if quotas.is_empty() {
            return Ok(());
        }
        let used = quota::namespace_usage(&self.store, ns);
        quota::admit(&rt.kind, object, &quotas, &used)
            .map_err(|detail| ApiError::quota_exceeded(rt, meta::name(object), &detail))
    }

    /// DefaultStorageClass admission: a claim without a class gets the default one.
    fn default_storage_class(&self, object: &mut Value) {
        if !object["spec"]["storageClassName"].is_null() {
            return;
        }
        // The switches apply at once, before the simulator has removed or re-annotated the
        // classes themselves.
        let faults = self.faults.state();
        if faults.no_storage_class || faults.no_default_storage_class {
            return;
        }
        let (classes, _) = self
            .store
            .list(&self.store.by_plural("storageclasses"), None);
        let default = classes.iter().find(|c| {
            meta::annotation(c, "storageclass.kubernetes.io/is-default-class") == Some("true")
        });
        if let Some(class) = default {
            meta::obj_mut(object, "spec")
                .insert("storageClassName".into(), json!(meta::name(class)));
        }
    }

    /// POST: creates an object (`generateName` honoured).
    pub fn create(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        mut body: Value,
        ctx: &Ctx,
    ) -> Result<Value, ApiError> {
        self.prepare_body(rt, ns, &mut body, None)?;
        let metadata = meta::metadata_mut(&mut body);
        if let Some(rv) = metadata.get("resourceVersion").and_then(Value::as_str) {
            if !rv.is_empty() {
                return Err(ApiError::bad_request(
                    "resourceVersion should not be set on objects to be created",
                ));
            }
        }
        let has_name = metadata
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !has_name {
            if let Some(prefix) = metadata.get("generateName").and_then(Value::as_str) {
                let name = format!("{prefix}{}", meta::random_suffix(5));
                metadata.insert("name".into(), json!(name));
            }
        }
        for key in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ] {
            metadata.remove(key);
        }
        let name = meta::name(&body).to_string();
        self.check_namespace(rt, ns, &name)?;
        if rt.has_status() && rt.kind != "Namespace" {
            if let Some(map) = body.as_object_mut() {
                map.remove("status");
            }
        }
        self.finish_create(rt, ns, body, ctx, true)
    }

    /// Defaults, validation, admission and the store write shared by POST and apply-create.
    fn finish_create(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        mut body: Value,
        ctx: &Ctx,
        track: bool,
    ) -> Result<Value, ApiError> {
        if rt.kind == "PersistentVolumeClaim" {
            self.default_storage_class(&mut body);
            let finalizers = meta::metadata_mut(&mut body)
                .entry("finalizers")
                .or_insert_with(|| json!([]));
            if let Some(list) = finalizers.as_array_mut() {
                if !list.iter().any(|f| f == "kubernetes.io/pvc-protection") {
                    list.push(json!("kubernetes.io/pvc-protection"));
                }
            }
        }
        defaults::apply(&rt.kind, &mut body, None, &self.alloc);
        if rt.has_spec {
            meta::metadata_mut(&mut body).insert("generation".into(), json!(1));
        }
        validation::validate(rt, &body, None)?;
        self.admit_quota(rt, ns, &body)?;
        if track {
            fields::track_update(None, &mut body, &ctx.manager, &rt.api_version(), Part::Main);
        }
        if rt.create_only {
            return Ok(body);
        }
        if ctx.dry_run {
            let metadata = meta::metadata_mut(&mut body);
            metadata.insert("uid".into(), json!(meta::new_uid()));
            metadata.insert("creationTimestamp".into(), json!(meta::now()));
            return Ok(body);
        }
        self.store.create(rt, ns, body)
    }

    /// The object an update produces from `current` and the request's `proposed` state.
    fn merge_update(
        &self,
        rt: &ResourceType,
        current: &Value,
        mut proposed: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let mut next = match part {
            Part::Main => {
                if rt.has_status() {
                    match current.get("status") {
                        Some(s) => proposed["status"] = s.clone(),
                        None => {
                            if let Some(m) = proposed.as_object_mut() {
                                m.remove("status");
                            }
                        }
                    }
                }
                proposed
            }
            Part::Status => {
                let mut next = current.clone();
                next["status"] = proposed["status"].take();
                next
            }
        };
        // Server-owned metadata is not the client's to change.
        for key in [
            "uid",
            "creationTimestamp",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match current["metadata"].get(key) {
                Some(v) => {
                    meta::metadata_mut(&mut next).insert(key.into(), v.clone());
                }
                None => {
                    meta::metadata_mut(&mut next).remove(key);
                }
            }
        }
        if next["metadata"].get("managedFields").is_none() {
            if let Some(mf) = current["metadata"].get("managedFields") {
                meta::metadata_mut(&mut next).insert("managedFields".into(), mf.clone());
            }
        }
        if rt.kind == "Namespace" {
            next["spec"] = current["spec"].clone();
        }
        defaults::apply(&rt.kind, &mut next, Some(current), &self.alloc);
        validation::validate(rt, &next, Some(current))?;
        // Removing the last finalizer of an object being deleted completes the deletion.
        Ok(next)
    }

    /// Runs an update computed from the current object: under the store lock, or on a copy
    /// for dry runs.
    fn write_update(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        ctx: &Ctx,
        compute: impl FnOnce(&Value) -> Result<Value, ApiError>,
    ) -> Result<Value, ApiError> {
        if ctx.dry_run {
            let current = self
                .store
                .get(rt, ns, name)
                .ok_or_else(|| ApiError::not_found(rt, name))?;
            return compute(&current);
        }
        let written = self.store.update(rt, ns, name, |object| {
            *object = compute(object)?;
            Ok(())
        })?;
        self.finish_if_deleted(rt, ns, &written);
        Ok(written)
    }

    /// Objects being deleted whose finalizers are all gone are removed (pods and namespaces
    /// are finished by their controllers instead).
    fn finish_if_deleted(&self, rt: &Arc<ResourceType>, ns: &str, object: &Value) {
        if rt.kind == "Pod" || rt.kind == "Namespace" || !meta::is_terminating(object) {
            return;
        }
        let no_finalizers = object
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if no_finalizers {
            self.store.remove(rt, ns, meta::name(object));
        }
    }

    /// PUT of the object or its status.
    pub fn replace(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        mut body: Value,
        part: Part,
        ctx: &Ctx,
    ) -> Result<Value, ApiError> {
        self.prepare_body(rt, ns, &mut body, Some(name))?;
        if self.store.get(rt, ns, name).is_none() {
            return Err(ApiError::not_found(rt, name));
        }
        let wanted_rv = body["metadata"]["resourceVersion"]
            .as_str()
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let api_version = rt.api_version();
        self.write_update(rt, ns, name, ctx, |current| {
            if let Some(rv) = &wanted_rv {
                if current["metadata"]["resourceVersion"].as_str() != Some(rv.as_str()) {
                    return Err(ApiError::conflict(rt, name));
                }
            }
            let mut next = self.merge_update(rt, current, body, part)?;
            fields::track_update(Some(current), &mut next, &ctx.manager, &api_version, part);
            Ok(next)
        })
    }

    /// PATCH (merge, strategic, JSON patch, or server-side apply).
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        patch_type: PatchType,
        body: &Value,
        part: Part,
        force: bool,
        ctx: &Ctx,
    ) -> Result<Written, ApiError> {
        if patch_type == PatchType::Apply {
            return self.apply(rt, ns, name, body, part, force, ctx);
        }
        if force {
            return Err(patch_options_invalid(Cause::forbidden(
                "force",
                "may not be specified for non-apply patch",
            )));
        }
        let api_version = rt.api_version();
        let object = self.write_update(rt, ns, name, ctx, |current| {
            let mut proposed = current.clone();
            match patch_type {
                PatchType::Merge => merge::json_merge(&mut proposed, body),
                PatchType::Strategic => merge::strategic_merge(&mut proposed, body),
                PatchType::Json => {
                    merge::json_patch(&mut proposed, body).map_err(|e| ApiError {
                        code: 422,
                        reason: "Invalid",
                        message: e,
                        details: None,
                    })?
                }
                PatchType::Apply => unreachable!("handled above"),
            }
            if let Some(rv) = body
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
            {
                if current["metadata"]["resourceVersion"].as_str() != Some(rv) {
                    return Err(ApiError::conflict(rt, name));
                }
            }
            let mut proposed_body = proposed;
            self.prepare_body(rt, ns, &mut proposed_body, Some(name))?;
            let mut next = self.merge_update(rt, current, proposed_body, part)?;
            fields::track_update(Some(current), &mut next, &ctx.manager, &api_version, part);
            Ok(next)
        })?;
        Ok(Written {
            object,
            created: false,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        body: &Value,
        part: Part,
        force: bool,
        ctx: &Ctx,
    ) -> Result<Written, ApiError> {
        if ctx.manager.is_empty() {
            return Err(patch_options_invalid(Cause::required(
                "fieldManager",
                "is required for apply patch",
            )));
        }
        let mut config = body.clone();
        if config["apiVersion"].as_str().is_none_or(str::is_empty)
            || config["kind"].as_str().is_none_or(str::is_empty)
        {
            return Err(ApiError::bad_request("invalid object type: /, Kind="));
        }
        if config["apiVersion"] != json!(rt.api_version()) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                config["apiVersion"].as_str().unwrap_or_default(),
                rt.api_version()
            )));
        }
        self.prepare_body(rt, ns, &mut config, Some(name))?;
        let conflict = |c: Vec<fields::Conflict>| ApiError::apply_conflicts(&c);
        if self.store.get(rt, ns, name).is_none() {
            if part == Part::Status {
                return Err(ApiError::not_found(rt, name));
            }
            self.check_namespace(rt, ns, name)?;
            let mut object =
                fields::apply(None, &config, &ctx.manager, force, Part::Main).map_err(conflict)?;
            meta::metadata_mut(&mut object).insert("namespace".into(), json!(ns));
            if !rt.namespaced {
                meta::metadata_mut(&mut object).remove("namespace");
            }
            meta::metadata_mut(&mut object).insert("name".into(), json!(name));
            if rt.has_status() && rt.kind != "Namespace" {
                if let Some(m) = object.as_object_mut() {
                    m.remove("status");
                }
            }
            let object = self.finish_create(rt, ns, object, ctx, false)?;
            return Ok(Written {
                object,
                created: true,
            });
        }
        let object = self.write_update(rt, ns, name, ctx, |current| {
            let applied = fields::apply(Some(current), &config, &ctx.manager, force, part)
                .map_err(conflict)?;
            self.merge_update(rt, current, applied, part)
        })?;
        Ok(Written {
            object,
            created: false,
        })
    }

    /// DELETE of one object. Returns the body to answer with (the object, or a `Status`).
    pub fn delete(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        opts: &DeleteOptions,
        ctx: &Ctx,
    ) -> Result<Value, ApiError> {
        let current = self
            .store
            .get(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        if let Some(uid) = &opts.precondition_uid {
            if meta::uid(&current) != uid {
                return Err(ApiError {
                    code: 409,
                    reason: "Conflict",
                    message: format!(
                        "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        rt.qualified(),
                        meta::uid(&current)
                    ),
                    details: Some(json!({"name": name, "kind": rt.plural})),
                });
            }
        }
        if let Some(rv) = &opts.precondition_rv {
            if current["metadata"]["resourceVersion"].as_str() != Some(rv.as_str()) {
                return Err(ApiError::conflict(rt, name));
            }
        }
        if ctx.dry_run {
            return Ok(if returns_object(rt) {
                current
            } else {
                status::success_deleted(rt, name, meta::uid(&current))
            });
        }
        let propagation = opts.propagation.as_deref().unwrap_or("Background");
        if propagation == "Orphan" {
            self.orphan_dependents(ns, meta::uid(&current));
        }
        let has_finalizers = current
            .pointer("/metadata/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|f| !f.is_empty());
        let graceful_pod = rt.kind == "Pod" && {
            let grace = opts.grace_period.unwrap_or_else(|| {
                current["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(30)
            });
            let scheduled = current["spec"]["nodeName"].as_str().is_some();
            let terminal = matches!(
                current["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
            grace > 0 && scheduled && !terminal
        };
        if rt.kind == "Namespace" || has_finalizers || graceful_pod {
            if meta::is_terminating(&current) {
                return Ok(current);
            }
            let grace = opts.grace_period.unwrap_or_else(|| {
                current["spec"]["terminationGracePeriodSeconds"]
                    .as_i64()
                    .unwrap_or(0)
            });
            let object = self.store.update(rt, ns, name, |o| {
                let metadata = meta::metadata_mut(o);
                metadata.insert("deletionTimestamp".into(), json!(meta::now()));
                metadata.insert("deletionGracePeriodSeconds".into(), json!(grace));
                if rt.kind == "Namespace" {
                    o["status"]["phase"] = json!("Terminating");
                }
                Ok(())
            })?;
            return Ok(object);
        }
        let removed = self
            .store
            .remove(rt, ns, name)
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        Ok(if returns_object(rt) {
            removed
        } else {
            status::success_deleted(rt, name, meta::uid(&removed))
        })
    }

    /// `--cascade=orphan`: dependents lose their ownerReference to `uid`.
    fn orphan_dependents(&self, ns: &str, uid: &str) {
        for (t, dep) in self.store.in_namespace(ns) {
            let Some(object) = self.store.get(&t, ns, &dep) else {
                continue;
            };
            if meta::owned_by(&object, uid) {
                let _ = self.store.update(&t, ns, &dep, |o| {
                    if let Some(refs) = o
                        .pointer_mut("/metadata/ownerReferences")
                        .and_then(Value::as_array_mut)
                    {
                        refs.retain(|r| r["uid"] != uid);
                    }
                    Ok(())
                });
            }
        }
    }

    /// DELETE on a collection: every match of the selector goes; answers the list of them.
    pub fn delete_collection(
        &self,
        rt: &Arc<ResourceType>,
        ns: Option<&str>,
        selector: &LabelSelector,
        opts: &DeleteOptions,
        ctx: &Ctx,
    ) -> Result<Value, ApiError> {
        let (items, _) = self.store.list(rt, ns);
        let mut deleted = Vec::new();
        for item in items.iter().filter(|i| selector.matches(i)) {
            let out = self.delete(rt, meta::namespace(item), meta::name(item), opts, ctx)?;
            deleted.push(if out["kind"] == "Status" {
                item.clone()
            } else {
                out
            });
        }
        Ok(json!({
            "kind": format!("{}List", rt.kind),
            "apiVersion": rt.api_version(),
            "metadata": {"resourceVersion": self.store.current_rv().to_string()},
            "items": deleted,
        }))
    }

    /// A SelfSubjectAccessReview answered from the RBAC fault rules.
    pub fn access_review(&self, mut body: Value) -> Value {
        let attrs = &body["spec"]["resourceAttributes"];
        let allowed = if attrs.is_object() {
            let verb = attrs["verb"].as_str().unwrap_or_default();
            let mut resource = attrs["resource"].as_str().unwrap_or_default().to_string();
            if let Some(sub) = attrs["subresource"].as_str().filter(|s| !s.is_empty()) {
                resource = format!("{resource}/{sub}");
            }
            let ns = attrs["namespace"].as_str().filter(|s| !s.is_empty());
            !self.faults.is_denied(verb, &resource, ns)
        } else {
            true
        };
        body["apiVersion"] = json!("authorization.k8s.io/v1");
        body["kind"] = json!("SelfSubjectAccessReview");
        body["metadata"] = json!({"creationTimestamp": null});
        body["status"] = if allowed {
            json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"e2e-admin\" of ClusterRole \"cluster-admin\" to User \"e2e\""})
        } else {
            json!({"allowed": false})
        };
        body
    }

    /// A controller's read-modify-write, tracked under its manager name. Not found is `None`.
    pub fn update_as(
        &self,
        rt: &Arc<ResourceType>,
        ns: &str,
        name: &str,
        manager: &str,
        part: Part,
        change: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let api_version = rt.api_version();
        let written = self
            .store
            .update(rt, ns, name, |object| {
                let old = object.clone();
                change(object);
                if *object != old {
                    fields::track_update(Some(&old), object, manager, &api_version, part);
                }
                Ok(())
            })
            .ok()?;
        self.finish_if_deleted(rt, ns, &written);
        Some(written)
    }
}

/// Kinds whose DELETE answers with the object rather than a `Status`.
fn returns_object(rt: &ResourceType) -> bool {
    matches!(
        rt.kind.as_str(),
        "Pod" | "Namespace" | "PersistentVolumeClaim" | "PersistentVolume" | "Service"
    )
}

/// 422 on the request's PatchOptions (missing fieldManager, force on a non-apply patch).
fn patch_options_invalid(cause: Cause) -> ApiError {
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!(
            "PatchOptions.meta.k8s.io \"\" is invalid: {}: {}",
            cause.field, cause.message
        ),
        details: Some(json!({
            "group": "meta.k8s.io",
            "kind": "PatchOptions",
            "causes": [{"reason": cause.reason, "message": cause.message, "field": cause.field}],
        })),
    }
}
