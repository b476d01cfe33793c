//! The resource table: which kinds the server stores and how each is named, scoped and validated.
//!
//! Everything else (store, REST verbs, watch, discovery checks) is generic over this table, so a
//! custom resource is one more [`ResourceType`] registered at start-up.

use std::sync::Arc;

/// Which name rule the real API server validates `metadata.name` against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameRule {
    /// RFC 1123 subdomain: lower-case alphanumerics, '-' and '.', at most 253 characters.
    Subdomain,
    /// RFC 1123 label: lower-case alphanumerics and '-', at most 63 characters.
    Label,
    /// RFC 1035 label (Services): a label that starts with a letter.
    Label1035,
    /// Any non-empty name without '/' or '%' (events, path segment names).
    PathSegment,
}

#[derive(Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    /// Plural, lower case: the URL segment.
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub name_rule: NameRule,
    /// Subresources served (`status`, `log`, `exec`, `portforward`).
    pub subresources: Vec<String>,
    /// Only `create` is allowed (access reviews): nothing is stored.
    pub create_only: bool,
    /// Whether changes outside metadata and status bump `metadata.generation`.
    pub has_spec: bool,
}

impl ResourceType {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `statefulsets.apps`, or `pods` for the core group: how messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s == "status")
    }

    pub fn has_subresource(&self, name: &str) -> bool {
        self.subresources.iter().any(|s| s == name)
    }
}

struct Spec {
    group: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    name_rule: NameRule,
    subresources: &'static [&'static str],
    has_spec: bool,
}

/// The built-in kinds the plugin and kubectl touch.
pub fn builtin() -> Vec<Arc<ResourceType>> {
    use NameRule::*;
    let specs = [
        Spec {
            group: "",
            plural: "namespaces",
            kind: "Namespace",
            namespaced: false,
            name_rule: Label,
            subresources: &["status", "finalize"],
            has_spec: false,
        },
        Spec {
            group: "",
            plural: "nodes",
            kind: "Node",
            namespaced: false,
            name_rule: Subdomain,
            subresources: &["status"],
            has_spec: true,
        },
        Spec {
            group: "",
            plural: "secrets",
            kind: "Secret",
            namespaced: true,
            name_rule: Subdomain,
            subresources: &[],
            has_spec: false,
        },
        Spec {
            group: "",
            plural: "configmaps",
            kind: "ConfigMap",
            namespaced: true,
            name_rule: Subdomain,
            subresources: &[],
            has_spec: false,
        },
        Spec {
            group: "",
            plural: "services",
            kind: "Service",
            namespaced: true,
            name_rule: Label1035,
            subresources: &["status"],
            has_spec: true,
        },
        Spec {
            group: "",
            plural: "pods",
            kind: "Pod",
            namespaced: true,
            name_rule: Subdomain,
            subresources: &["status", "log", "exec", "portforward"],
            has_spec: false,
        },
        Spec {
            group: "",
            plural: "persistentvolumeclaims",
            kind: "PersistentVolumeClaim",
            namespaced: true,
            name_rule: Subdomain,
            subresources: &["status"],
            has_spec: false,
        },
        Spec {
            group: "",
            plural: "persistentvolumes",
            kind: "PersistentVolume",
            namespaced: false,
            name_rule: Subdomain,
            subresources: &["status"],
            has_spec: false,
        },
        Spec {
            group: "",
            plural: "events",
            kind: "Event",
            namespaced: true,
            name_rule: PathSegment,
            subresources: &[],
            has_spec: false,
        },
        Spec {
            group: "",
            plural: "resourcequotas",
            kind: "ResourceQuota",
            namespaced: true,
            name_rule: Subdomain,
            subresources: &["status"],
            has_spec: false,
        },
        Spec {
            group: "",
            plural: "serviceaccounts",
            kind: "ServiceAccount",
            namespaced: true,
            name_rule: Subdomain,
            subresources: &[],
            has_spec: false,
        },
        Spec {
            group: "apps",
            plural: "statefulsets",
            kind: "StatefulSet",
            namespaced: true,
            name_rule: Subdomain,
            subresources: &["status"],
            has_spec: true,
        },
        Spec {
            group: "apps",
            plural: "controllerrevisions",
            kind: "ControllerRevision",
            namespaced: true,
            name_rule: Subdomain,
            subresources: &[],
            has_spec: false,
        },
        Spec {
            group: "storage.k8s.io",
            plural: "storageclasses",
            kind: "StorageClass",
            namespaced: false,
            name_rule: Subdomain,
            subresources: &[],
            has_spec: false,
        },
        Spec {
            group: "authorization.k8s.io",
            plural: "selfsubjectaccessreviews",
            kind: "SelfSubjectAccessReview",
            namespaced: false,
            name_rule: PathSegment,
            subresources: &[],
            has_spec: false,
        },
    ];
    specs
        .into_iter()
        .map(|s| {
            Arc::new(ResourceType {
                group: s.group.into(),
                version: "v1".into(),
                plural: s.plural.into(),
                singular: s.kind.to_lowercase(),
                kind: s.kind.into(),
                namespaced: s.namespaced,
                name_rule: s.name_rule,
                subresources: s.subresources.iter().map(|x| x.to_string()).collect(),
                create_only: s.plural == "selfsubjectaccessreviews",
                has_spec: s.has_spec,
            })
        })
        .collect()
}
