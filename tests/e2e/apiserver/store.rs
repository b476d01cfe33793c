//! The object store: JSON objects by (group, resource, namespace, name), one global
//! resourceVersion counter, and a change feed.
//!
//! Every change is recorded in a bounded history (so a watch can resume from a resourceVersion,
//! and one that is too old gets 410 Gone) and broadcast (so watches, the simulator and
//! `TestCluster::wait_for` react to changes instead of polling).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use serde_json::{json, Value};
use tokio::sync::broadcast;

use super::meta;
use super::resources::ResourceType;
use super::status::ApiError;

/// Events kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

#[derive(Debug)]
pub struct StoreEvent {
    pub kind: EventType,
    pub rt: Arc<ResourceType>,
    pub namespace: String,
    pub name: String,
    /// The object after the change (for DELETED: its last state, with the deletion's RV).
    pub object: Value,
    /// The object before the change (MODIFIED and DELETED).
    pub old: Option<Value>,
    pub rv: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    group: String,
    plural: String,
    namespace: String,
    name: String,
}

impl Key {
    fn new(rt: &ResourceType, namespace: &str, name: &str) -> Key {
        Key {
            group: rt.group.clone(),
            plural: rt.plural.clone(),
            namespace: if rt.namespaced {
                namespace.to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }
}

struct Inner {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Arc<StoreEvent>>,
    /// Every event with an RV above this is in `history`.
    floor: u64,
}

pub struct Store {
    types: RwLock<Vec<Arc<ResourceType>>>,
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Arc<StoreEvent>>,
}

/// What a watch starting at some resourceVersion gets: the events it missed, then the feed.
pub struct Feed {
    pub backlog: Vec<Arc<StoreEvent>>,
    pub live: broadcast::Receiver<Arc<StoreEvent>>,
}

impl Store {
    pub fn new(types: Vec<Arc<ResourceType>>) -> Store {
        // Real clusters never start at RV 1; clients must not read meaning into the number.
        let start = 1000;
        Store {
            types: RwLock::new(types),
            inner: Mutex::new(Inner {
                rv: start,
                objects: BTreeMap::new(),
                history: VecDeque::new(),
                floor: start,
            }),
            tx: broadcast::channel(16_384).0,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a kind (a custom resource, say) to the table.
    pub fn register(&self, rt: ResourceType) {
        self.types
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(Arc::new(rt));
    }

    pub fn types(&self) -> Vec<Arc<ResourceType>> {
        self.types.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<Arc<ResourceType>> {
        self.types()
            .into_iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The type of a kind by plural name in any group (`pods`, `statefulsets`).
    pub fn by_plural(&self, plural: &str) -> Arc<ResourceType> {
        self.types()
            .into_iter()
            .find(|t| t.plural == plural)
            .unwrap_or_else(|| panic!("resource {plural} is not registered"))
    }

    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<Arc<ResourceType>> {
        self.types()
            .into_iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
    }

    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<StoreEvent>> {
        self.tx.subscribe()
    }

    pub fn get(&self, rt: &ResourceType, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&Key::new(rt, namespace, name))
            .cloned()
    }

    /// Objects of a kind, in one namespace or all, and the list's resourceVersion.
    pub fn list(&self, rt: &ResourceType, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(k, _)| k.group == rt.group && k.plural == rt.plural)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv)
    }

    /// Every object in a namespace, of every kind (for namespace deletion).
    pub fn in_namespace(&self, namespace: &str) -> Vec<(Arc<ResourceType>, String)> {
        let types = self.types();
        let inner = self.lock();
        inner
            .objects
            .keys()
            .filter(|k| k.namespace == namespace)
            .filter_map(|k| {
                types
                    .iter()
                    .find(|t| t.group == k.group && t.plural == k.plural)
                    .map(|t| (t.clone(), k.name.clone()))
            })
            .collect()
    }

    /// Stores a new object: sets uid, resourceVersion and creationTimestamp.
    pub fn create(
        &self,
        rt: &Arc<ResourceType>,
        namespace: &str,
        mut object: Value,
    ) -> Result<Value, ApiError> {
        let name = meta::name(&object).to_string();
        let mut inner = self.lock();
        let key = Key::new(rt, namespace, &name);
        if inner.objects.contains_key(&key) {
            return Err(ApiError::already_exists(rt, &name));
        }
        inner.rv += 1;
        let rv = inner.rv;
        let metadata = meta::metadata_mut(&mut object);
        metadata.insert("resourceVersion".into(), json!(rv.to_string()));
        metadata
            .entry("uid")
            .or_insert_with(|| json!(meta::new_uid()));
        metadata
            .entry("creationTimestamp")
            .or_insert_with(|| json!(meta::now()));
        inner.objects.insert(key, object.clone());
        self.record(
            &mut inner,
            StoreEvent {
                kind: EventType::Added,
                rt: rt.clone(),
                namespace: namespace.to_string(),
                name,
                object: object.clone(),
                old: None,
                rv,
            },
        );
        Ok(object)
    }

    /// Read-modify-write of one object under the store lock. `change` returns an error to
    /// abort; if it leaves the object as it was, nothing is written (no new RV, no event),
    /// as with the real server. Bumps `generation` on spec changes.
    pub fn update(
        &self,
        rt: &Arc<ResourceType>,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut inner = self.lock();
        let key = Key::new(rt, namespace, name);
        let old = inner
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(rt, name))?;
        let mut object = old.clone();
        change(&mut object)?;
        // The caller may not rename or move the object, nor forge its identity.
        for field in ["name", "namespace", "uid", "creationTimestamp"] {
            if let Some(v) = old["metadata"].get(field) {
                meta::metadata_mut(&mut object).insert(field.into(), v.clone());
            }
        }
        meta::metadata_mut(&mut object).insert(
            "resourceVersion".into(),
            old["metadata"]["resourceVersion"].clone(),
        );
        if object == old {
            return Ok(old);
        }
        if rt.has_spec && spec_changed(&old, &object) {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            meta::metadata_mut(&mut object).insert("generation".into(), json!(generation + 1));
        }
        inner.rv += 1;
        let rv = inner.rv;
        meta::metadata_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        inner.objects.insert(key, object.clone());
        let kind = EventType::Modified;
        self.record(
            &mut inner,
            StoreEvent {
                kind,
                rt: rt.clone(),
                namespace: namespace.to_string(),
                name: name.to_string(),
                object: object.clone(),
                old: Some(old),
                rv,
            },
        );
        Ok(object)
    }

    /// Removes an object now; the DELETED event carries a new resourceVersion.
    pub fn remove(&self, rt: &Arc<ResourceType>, namespace: &str, name: &str) -> Option<Value> {
        let mut inner = self.lock();
        let mut object = inner.objects.remove(&Key::new(rt, namespace, name))?;
        let old = object.clone();
        inner.rv += 1;
        let rv = inner.rv;
        meta::metadata_mut(&mut object).insert("resourceVersion".into(), json!(rv.to_string()));
        self.record(
            &mut inner,
            StoreEvent {
                kind: EventType::Deleted,
                rt: rt.clone(),
                namespace: namespace.to_string(),
                name: name.to_string(),
                object: object.clone(),
                old: Some(old),
                rv,
            },
        );
        Some(object)
    }

    fn record(&self, inner: &mut Inner, event: StoreEvent) {
        let event = Arc::new(event);
        inner.history.push_back(event.clone());
        while inner.history.len() > HISTORY {
            if let Some(gone) = inner.history.pop_front() {
                inner.floor = gone.rv;
            }
        }
        // Sent under the lock, so feed order is RV order.
        let _ = self.tx.send(event);
    }

    /// The events after `rv` and the live feed from there on, or 410 Gone when `rv` is older
    /// than the history kept.
    pub fn feed_since(&self, rv: u64) -> Result<Feed, ApiError> {
        let inner = self.lock();
        if rv < inner.floor {
            return Err(ApiError::gone(format!(
                "too old resource version: {rv} ({})",
                inner.floor + 1
            )));
        }
        let backlog = inner
            .history
            .iter()
            .filter(|e| e.rv > rv)
            .cloned()
            .collect();
        Ok(Feed {
            backlog,
            live: self.tx.subscribe(),
        })
    }

    /// A consistent snapshot of a kind plus the feed of later changes.
    pub fn snapshot_and_feed(
        &self,
        rt: &ResourceType,
        namespace: Option<&str>,
    ) -> (Vec<Value>, u64, broadcast::Receiver<Arc<StoreEvent>>) {
        let inner = self.lock();
        let items = inner
            .objects
            .iter()
            .filter(|(k, _)| k.group == rt.group && k.plural == rt.plural)
            .filter(|(k, _)| namespace.is_none_or(|ns| k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect();
        (items, inner.rv, self.tx.subscribe())
    }

    /// Simulates etcd compaction: history up to now is dropped, so older watches get 410.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.floor = inner.rv;
    }
}

/// Whether anything outside metadata and status differs.
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(map) = v.as_object_mut() {
            map.remove("metadata");
            map.remove("status");
        }
        v
    };
    strip(old) != strip(new)
}
