//! Core v1 Events as the kubelet, scheduler and controllers record them, with the real
//! recorder's aggregation (a repeat bumps `count` and `lastTimestamp` instead of adding one).

use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use super::super::meta;
use super::super::registry::{Ctx, Registry};
use super::NODE;

#[derive(Clone, Copy)]
pub enum Source {
    Kubelet,
    Scheduler,
    StatefulSetController,
    VolumeController,
    Provisioner,
}

impl Source {
    fn component(self) -> &'static str {
        match self {
            Source::Kubelet => "kubelet",
            Source::Scheduler => "default-scheduler",
            Source::StatefulSetController => "statefulset-controller",
            Source::VolumeController => "persistentvolume-controller",
            Source::Provisioner => "rancher.io/local-path_local-path-provisioner",
        }
    }
}

#[derive(Default)]
pub struct Recorder {
    /// (involved uid, reason, message) → event name, for aggregation.
    seen: Mutex<HashMap<(String, String, String), String>>,
}

impl Recorder {
    /// Records an event about `object` (`warning` picks the type). `field_path` names the
    /// container (`spec.containers{postgres}`) for kubelet events.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        registry: &Registry,
        object: &Value,
        source: Source,
        warning: bool,
        reason: &str,
        message: &str,
        field_path: Option<&str>,
    ) {
        let ns = meta::namespace(object);
        let ns = if ns.is_empty() { "default" } else { ns };
        let key = (
            meta::uid(object).to_string(),
            reason.to_string(),
            message.to_string(),
        );
        let rt = registry.store.by_plural("events");
        let now = meta::now();
        let existing = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(name) = existing {
            let updated = registry.update_as(
                &rt,
                ns,
                &name,
                source.component(),
                super::super::fields::Part::Main,
                |e| {
                    let count = e["count"].as_i64().unwrap_or(1);
                    e["count"] = json!(count + 1);
                    e["lastTimestamp"] = json!(now);
                },
            );
            if updated.is_some() {
                return;
            }
        }
        let name = format!(
            "{}.{:016x}",
            meta::name(object),
            rand::random::<u64>() & 0x1fff_ffff_ffff_ffff
        );
        let mut involved = json!({
            "kind": object["kind"],
            "namespace": meta::namespace(object),
            "name": meta::name(object),
            "uid": meta::uid(object),
            "apiVersion": object["apiVersion"],
            "resourceVersion": object["metadata"]["resourceVersion"],
        });
        if let Some(path) = field_path {
            involved["fieldPath"] = json!(path);
        }
        let host = matches!(source, Source::Kubelet).then_some(NODE);
        let mut source_json = json!({"component": source.component()});
        if let Some(h) = host {
            source_json["host"] = json!(h);
        }
        let event = json!({
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "source": source_json,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "type": if warning { "Warning" } else { "Normal" },
            "eventTime": null,
            "reportingComponent": source.component(),
            "reportingInstance": host.unwrap_or(""),
        });
        if registry
            .create(&rt, ns, event, &Ctx::system(source.component()))
            .is_ok()
        {
            self.seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, name);
        }
    }
}
