//! The controllers of the simulated control plane: StatefulSet, volume provisioning and binding,
//! Services, namespace deletion, garbage collection, quota status, and the StorageClass faults.
//! Each function reconciles one object towards its desired state and is safe to call again.

use std::sync::Arc;

use serde_json::{json, Value};

use super::super::fields::Part;
use super::super::meta;
use super::super::quota;
use super::super::registry::{Ctx, DeleteOptions};
use super::events::Source;
use super::Sim;

const CONTROLLER: &str = "kube-controller-manager";

/// The StorageClass the cluster starts with (and gets back when the fault is switched off).
pub fn standard_class() -> Value {
    json!({
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {
            "name": "standard",
            "annotations": {"storageclass.kubernetes.io/is-default-class": "true"},
        },
        "provisioner": "rancher.io/local-path",
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "Immediate",
        "allowVolumeExpansion": true,
    })
}

/// Applies the StorageClass fault switches to the store.
pub fn storage_classes(sim: &Sim) {
    let state = sim.faults.state();
    let rt = sim.store.by_plural("storageclasses");
    if state.no_storage_class {
        let (classes, _) = sim.store.list(&rt, None);
        for c in classes {
            sim.store.remove(&rt, "", meta::name(&c));
        }
        return;
    }
    if sim.store.get(&rt, "", "standard").is_none() {
        let _ = sim
            .registry
            .create(&rt, "", standard_class(), &Ctx::system(CONTROLLER));
    }
    let want = if state.no_default_storage_class {
        "false"
    } else {
        "true"
    };
    sim.registry
        .update_as(&rt, "", "standard", CONTROLLER, Part::Main, |c| {
            c["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] =
                json!(want);
        });
}

/// The name of the StatefulSet that controls a pod, if any.
pub fn owner_statefulset(pod: &Value) -> Option<String> {
    pod.pointer("/metadata/ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r["kind"] == "StatefulSet" && r["controller"] == true)
        .and_then(|r| r["name"].as_str())
        .map(str::to_string)
}

/// `<sts>-<hash>`: the controller-revision-hash of a pod template (FNV-1a of its JSON,
/// encoded with the same vowel-free alphabet as the real controller).
fn revision(sts: &Value) -> String {
    let text = serde_json::to_string(&sts["spec"]["template"]).unwrap_or_default();
    let mut hash: u32 = 0x811c_9dc5;
    for b in text.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let encoded: String = hash
        .to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect();
    format!("{}-{encoded}", meta::name(sts))
}

fn is_ready(pod: &Value) -> bool {
    !meta::is_terminating(pod)
        && pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// The claim a StatefulSet pod gets from a volumeClaimTemplate.
fn claim_for(sts: &Value, template: &Value, pod_name: &str) -> Value {
    let mut claim = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": format!("{}-{pod_name}", meta::name(template)),
            "namespace": meta::namespace(sts),
            "labels": template["metadata"]["labels"].clone(),
            "annotations": template["metadata"]["annotations"].clone(),
        },
        "spec": template["spec"].clone(),
    });
    let mut merged = claim["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (k, v) in sts["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
    {
        merged.insert(k.clone(), v.clone());
    }
    claim["metadata"]["labels"] = Value::Object(merged);
    if claim["metadata"]["annotations"].is_null() {
        meta::metadata_mut(&mut claim).remove("annotations");
    }
    claim
}

fn pod_for(sts: &Value, ordinal: usize, revision: &str) -> Value {
    let name = format!("{}-{ordinal}", meta::name(sts));
    let template = &sts["spec"]["template"];
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    labels.insert("controller-revision-hash".into(), json!(revision));
    labels.insert("statefulset.kubernetes.io/pod-name".into(), json!(name));
    labels.insert(
        "apps.kubernetes.io/pod-index".into(),
        json!(ordinal.to_string()),
    );
    let mut spec = template["spec"].clone();
    spec["hostname"] = json!(name);
    if let Some(service) = sts["spec"]["serviceName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        spec["subdomain"] = json!(service);
    }
    let mut vols: Vec<Value> = spec["volumes"].as_array().cloned().unwrap_or_default();
    for claim in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let vol_name = meta::name(claim);
        vols.retain(|v| v["name"] != vol_name);
        vols.push(json!({
            "name": vol_name,
            "persistentVolumeClaim": {"claimName": format!("{vol_name}-{name}")},
        }));
    }
    if !vols.is_empty() {
        spec["volumes"] = json!(vols);
    }
    let mut metadata = json!({
        "name": name,
        "namespace": meta::namespace(sts),
        "labels": labels,
        "ownerReferences": [{
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "name": meta::name(sts),
            "uid": meta::uid(sts),
            "controller": true,
            "blockOwnerDeletion": true,
        }],
    });
    if let Some(a) = template["metadata"].get("annotations") {
        metadata["annotations"] = a.clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

/// The StatefulSet controller: claims, pods in order, rolling updates, scale-down, status.
pub fn statefulset(sim: &Arc<Sim>, ns: &str, name: &str) {
    let sts_rt = sim.store.by_plural("statefulsets");
    let pod_rt = sim.store.by_plural("pods");
    let pvc_rt = sim.store.by_plural("persistentvolumeclaims");
    let Some(sts) = sim.store.get(&sts_rt, ns, name) else {
        return;
    };
    if meta::is_terminating(&sts) {
        return;
    }
    let ctx = Ctx::system(CONTROLLER);
    let replicas = sts["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let update_revision = revision(&sts);
    let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
    let on_delete = sts["spec"]["updateStrategy"]["type"] == "OnDelete";
    let record = |warning: bool, reason: &str, message: String| {
        sim.events.record(
            &sim.registry,
            &sts,
            Source::StatefulSetController,
            warning,
            reason,
            &message,
            None,
        );
    };
    'ordinals: for ordinal in 0..replicas {
        let pod_name = format!("{name}-{ordinal}");
        let existing = sim.store.get(&pod_rt, ns, &pod_name);
        match existing {
            None => {
                for template in sts["spec"]["volumeClaimTemplates"]
                    .as_array()
                    .into_iter()
                    .flatten()
                {
                    let claim = claim_for(&sts, template, &pod_name);
                    let claim_name = meta::name(&claim).to_string();
                    if sim.store.get(&pvc_rt, ns, &claim_name).is_some() {
                        continue;
                    }
                    match sim.registry.create(&pvc_rt, ns, claim, &ctx) {
                        Ok(_) => record(
                            false,
                            "SuccessfulCreate",
                            format!("create Claim {claim_name} Pod {pod_name} in StatefulSet {name} success"),
                        ),
                        Err(e) => {
                            record(
                                true,
                                "FailedCreate",
                                format!("create Claim {claim_name} for Pod {pod_name} in StatefulSet {name} failed error: {}", e.message),
                            );
                            break 'ordinals;
                        }
                    }
                }
                match sim.registry.create(
                    &pod_rt,
                    ns,
                    pod_for(&sts, ordinal, &update_revision),
                    &ctx,
                ) {
                    Ok(_) => record(
                        false,
                        "SuccessfulCreate",
                        format!("create Pod {pod_name} in StatefulSet {name} successful"),
                    ),
                    Err(e) => {
                        record(
                            true,
                            "FailedCreate",
                            format!(
                                "create Pod {pod_name} in StatefulSet {name} failed error: {}",
                                e.message
                            ),
                        );
                        break;
                    }
                }
                if !parallel {
                    break;
                }
            }
            Some(pod) => {
                if meta::is_terminating(&pod) {
                    if parallel {
                        continue;
                    }
                    break;
                }
                let stale =
                    meta::label(&pod, "controller-revision-hash") != Some(update_revision.as_str());
                if stale && !on_delete {
                    delete_pod(sim, &pod, &record);
                    break;
                }
                if !parallel && !is_ready(&pod) {
                    break;
                }
            }
        }
    }
    // Scale down, highest ordinal first.
    let (pods, _) = sim.store.list(&pod_rt, Some(ns));
    let mut owned: Vec<Value> = pods
        .into_iter()
        .filter(|p| meta::owned_by(p, meta::uid(&sts)))
        .collect();
    owned.sort_by_key(|p| {
        meta::name(p)
            .rsplit('-')
            .next()
            .and_then(|o| o.parse::<usize>().ok())
            .unwrap_or(0)
    });
    if let Some(extra) = owned.iter().rev().find(|p| {
        meta::name(p)
            .rsplit('-')
            .next()
            .and_then(|o| o.parse::<usize>().ok())
            .is_some_and(|o| o >= replicas)
    }) {
        if !meta::is_terminating(extra) {
            delete_pod(sim, extra, &record);
        }
    }
    update_statefulset_status(sim, &sts, &owned, &update_revision);
}

fn delete_pod(sim: &Sim, pod: &Value, record: &dyn Fn(bool, &str, String)) {
    let pod_rt = sim.store.by_plural("pods");
    let sts = owner_statefulset(pod).unwrap_or_default();
    if sim
        .registry
        .delete(
            &pod_rt,
            meta::namespace(pod),
            meta::name(pod),
            &DeleteOptions::default(),
            &Ctx::system(CONTROLLER),
        )
        .is_ok()
    {
        record(
            false,
            "SuccessfulDelete",
            format!(
                "delete Pod {} in StatefulSet {sts} successful",
                meta::name(pod)
            ),
        );
    }
}

fn update_statefulset_status(sim: &Sim, sts: &Value, pods: &[Value], update_revision: &str) {
    let live: Vec<&Value> = pods.iter().filter(|p| !meta::is_terminating(p)).collect();
    let ready = live.iter().filter(|p| is_ready(p)).count();
    let updated = live
        .iter()
        .filter(|p| meta::label(p, "controller-revision-hash") == Some(update_revision))
        .count();
    let old_current = sts["status"]["currentRevision"]
        .as_str()
        .unwrap_or(update_revision)
        .to_string();
    let current_revision = if updated == live.len() {
        update_revision.to_string()
    } else {
        old_current
    };
    let current = live
        .iter()
        .filter(|p| meta::label(p, "controller-revision-hash") == Some(current_revision.as_str()))
        .count();
    let mut status = json!({
        "observedGeneration": sts["metadata"]["generation"],
        "replicas": live.len(),
        "availableReplicas": ready,
        "currentRevision": current_revision,
        "updateRevision": update_revision,
        "collisionCount": 0,
    });
    for (key, value) in [
        ("readyReplicas", ready),
        ("currentReplicas", current),
        ("updatedReplicas", updated),
    ] {
        if value > 0 {
            status[key] = json!(value);
        }
    }
    let rt = sim.store.by_plural("statefulsets");
    sim.registry.update_as(
        &rt,
        meta::namespace(sts),
        meta::name(sts),
        CONTROLLER,
        Part::Status,
        |o| o["status"] = status,
    );
}

/// Where a claim's data lives on this machine.
pub fn volume_dir(sim: &Sim, claim_uid: &str) -> std::path::PathBuf {
    sim.root.join("volumes").join(format!("pvc-{claim_uid}"))
}

/// The volume controller and provisioner for one claim: bind it when its class allows,
/// explain why not otherwise; let a deleted claim go once no pod uses it.
pub fn claim(sim: &Arc<Sim>, ns: &str, name: &str) {
    let pvc_rt = sim.store.by_plural("persistentvolumeclaims");
    let Some(pvc) = sim.store.get(&pvc_rt, ns, name) else {
        return;
    };
    if meta::is_terminating(&pvc) {
        let (pods, _) = sim.store.list(&sim.store.by_plural("pods"), Some(ns));
        let in_use = pods.iter().any(|p| {
            p["spec"]["volumes"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|v| v["persistentVolumeClaim"]["claimName"] == name)
        });
        if !in_use {
            sim.registry
                .update_as(&pvc_rt, ns, name, CONTROLLER, Part::Main, |c| {
                    if let Some(f) = c
                        .pointer_mut("/metadata/finalizers")
                        .and_then(Value::as_array_mut)
                    {
                        f.retain(|x| x != "kubernetes.io/pvc-protection");
                    }
                });
        }
        return;
    }
    if pvc["status"]["phase"] == "Bound" {
        return;
    }
    let record = |warning: bool, source: Source, reason: &str, message: &str| {
        sim.events
            .record(&sim.registry, &pvc, source, warning, reason, message, None);
    };
    let Some(class_name) = pvc["spec"]["storageClassName"]
        .as_str()
        .filter(|c| !c.is_empty())
    else {
        record(
            false,
            Source::VolumeController,
            "FailedBinding",
            "no persistent volumes available for this claim and no storage class is set",
        );
        return;
    };
    let class = sim
        .store
        .get(&sim.store.by_plural("storageclasses"), "", class_name)
        .filter(|_| !sim.faults.state().no_storage_class);
    let Some(class) = class else {
        record(
            true,
            Source::VolumeController,
            "ProvisioningFailed",
            &format!("storageclass.storage.k8s.io \"{class_name}\" not found"),
        );
        return;
    };
    if class["volumeBindingMode"] == "WaitForFirstConsumer"
        && meta::annotation(&pvc, "volume.kubernetes.io/selected-node").is_none()
    {
        record(
            false,
            Source::VolumeController,
            "WaitForFirstConsumer",
            "waiting for first consumer to be created before binding",
        );
        return;
    }
    let provisioner = class["provisioner"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let volume = format!("pvc-{}", meta::uid(&pvc));
    let size = pvc["spec"]["resources"]["requests"]["storage"].clone();
    let modes = pvc["spec"]["accessModes"].clone();
    let dir = volume_dir(sim, meta::uid(&pvc));
    record(
        false,
        Source::Provisioner,
        "Provisioning",
        &format!("External provisioner is provisioning volume for claim \"{ns}/{name}\""),
    );
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {
            "name": volume,
            "annotations": {"pv.kubernetes.io/provisioned-by": provisioner},
            "finalizers": ["kubernetes.io/pv-protection"],
        },
        "spec": {
            "capacity": {"storage": size},
            "accessModes": modes,
            "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
            "storageClassName": class_name,
            "volumeMode": pvc["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
            "claimRef": {
                "kind": "PersistentVolumeClaim",
                "namespace": ns,
                "name": name,
                "uid": meta::uid(&pvc),
                "apiVersion": "v1",
                "resourceVersion": pvc["metadata"]["resourceVersion"],
            },
            "hostPath": {"path": dir.display().to_string(), "type": "DirectoryOrCreate"},
        },
    });
    let pv_rt = sim.store.by_plural("persistentvolumes");
    if sim.store.get(&pv_rt, "", &volume).is_none() {
        if let Ok(created) = sim
            .registry
            .create(&pv_rt, "", pv, &Ctx::system(CONTROLLER))
        {
            sim.registry.update_as(
                &pv_rt,
                "",
                meta::name(&created),
                CONTROLLER,
                Part::Status,
                |v| v["status"] = json!({"phase": "Bound"}),
            );
        }
    }
    let bound = sim
        .registry
        .update_as(&pvc_rt, ns, name, CONTROLLER, Part::Main, |c| {
            c["spec"]["volumeName"] = json!(volume);
            let annotations = meta::metadata_mut(c)
                .entry("annotations")
                .or_insert_with(|| json!({}));
            annotations["pv.kubernetes.io/bind-completed"] = json!("yes");
            annotations["pv.kubernetes.io/bound-by-controller"] = json!("yes");
            annotations["volume.beta.kubernetes.io/storage-provisioner"] = json!(provisioner);
            annotations["volume.kubernetes.io/storage-provisioner"] = json!(provisioner);
        });
    if bound.is_some() {
        sim.registry
            .update_as(&pvc_rt, ns, name, CONTROLLER, Part::Status, |c| {
                c["status"] = json!({
                    "phase": "Bound",
                    "accessModes": c["spec"]["accessModes"],
                    "capacity": {"storage": c["spec"]["resources"]["requests"]["storage"]},
                });
            });
        record(
            false,
            Source::Provisioner,
            "ProvisioningSucceeded",
            &format!("Successfully provisioned volume {volume}"),
        );
    }
}

/// A deleted claim's volume goes too (reclaim policy Delete), data included.
pub fn release_volume(sim: &Sim, pvc: &Value) {
    let Some(volume) = pvc["spec"]["volumeName"].as_str() else {
        return;
    };
    let pv_rt = sim.store.by_plural("persistentvolumes");
    let Some(pv) = sim.store.get(&pv_rt, "", volume) else {
        return;
    };
    if pv["spec"]["persistentVolumeReclaimPolicy"] == "Retain" {
        sim.registry
            .update_as(&pv_rt, "", volume, CONTROLLER, Part::Status, |v| {
                v["status"]["phase"] = json!("Released");
            });
        return;
    }
    sim.store.remove(&pv_rt, "", volume);
    let _ = std::fs::remove_dir_all(volume_dir(sim, meta::uid(pvc)));
}

/// Service allocation happens at admission; the load-balancer controller sets the ingress.
pub fn service(sim: &Sim, ns: &str, name: &str) {
    let rt = sim.store.by_plural("services");
    let Some(svc) = sim.store.get(&rt, ns, name) else {
        return;
    };
    if svc["spec"]["type"] != "LoadBalancer" {
        return;
    }
    let pending = sim.faults.state().load_balancer_pending;
    let status = if pending {
        json!({"loadBalancer": {}})
    } else {
        json!({"loadBalancer": {"ingress": [{"ip": "127.0.0.1", "ipMode": "VIP"}]}})
    };
    sim.registry.update_as(
        &rt,
        ns,
        name,
        "cloud-controller-manager",
        Part::Status,
        |s| {
            s["status"] = status;
        },
    );
}

/// The namespace controller: a namespace being deleted loses its content, then goes.
pub fn namespace(sim: &Sim, name: &str) {
    let ns_rt = sim.store.by_plural("namespaces");
    let Some(ns) = sim.store.get(&ns_rt, "", name) else {
        return;
    };
    if !meta::is_terminating(&ns) {
        return;
    }
    let content = sim.store.in_namespace(name);
    if content.is_empty() {
        sim.store.remove(&ns_rt, "", name);
        return;
    }
    let ctx = Ctx::system("namespace-controller");
    for (rt, object) in content {
        if let Some(current) = sim.store.get(&rt, name, &object) {
            if meta::is_terminating(&current) {
                continue;
            }
        }
        let _ = sim
            .registry
            .delete(&rt, name, &object, &DeleteOptions::default(), &ctx);
    }
}

/// The garbage collector: dependents of a deleted owner are deleted (background propagation).
pub fn collect_garbage(sim: &Sim, ns: &str, owner_uid: &str) {
    if ns.is_empty() || owner_uid.is_empty() {
        return;
    }
    let ctx = Ctx::system("generic-garbage-collector");
    for (rt, name) in sim.store.in_namespace(ns) {
        let Some(object) = sim.store.get(&rt, ns, &name) else {
            continue;
        };
        if meta::owned_by(&object, owner_uid) && !meta::is_terminating(&object) {
            let _ = sim
                .registry
                .delete(&rt, ns, &name, &DeleteOptions::default(), &ctx);
        }
    }
}

/// The quota controller: `status.hard` and `status.used` of every quota in a namespace.
pub fn quota_status(sim: &Sim, ns: &str) {
    let rt = sim.store.by_plural("resourcequotas");
    let (quotas, _) = sim.store.list(&rt, Some(ns));
    if quotas.is_empty() {
        return;
    }
    let used = quota::namespace_usage(&sim.store, ns);
    for q in quotas {
        let hard = q["spec"]["hard"].clone();
        let mut used_json = json!({});
        for (key, limit) in hard.as_object().into_iter().flatten() {
            let amount = used.get(key).copied().unwrap_or(0.0);
            used_json[key] = json!(quota::format_amount(
                amount,
                limit.as_str().unwrap_or_default()
            ));
        }
        sim.registry
            .update_as(&rt, ns, meta::name(&q), CONTROLLER, Part::Status, |o| {
                o["status"] = json!({"hard": hard, "used": used_json});
            });
    }
}

/// Whether a pod's claims let it be scheduled, or why not (the scheduler's message).
pub fn claims_ready(sim: &Sim, pod: &Value) -> Result<(), String> {
    let ns = meta::namespace(pod);
    let pvc_rt = sim.store.by_plural("persistentvolumeclaims");
    let sc_rt = sim.store.by_plural("storageclasses");
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let Some(claim_name) = volume["persistentVolumeClaim"]["claimName"].as_str() else {
            continue;
        };
        let Some(claim) = sim.store.get(&pvc_rt, ns, claim_name) else {
            return Err(format!("persistentvolumeclaim \"{claim_name}\" not found"));
        };
        if meta::is_terminating(&claim) {
            return Err(format!(
                "persistentvolumeclaim \"{claim_name}\" is being deleted"
            ));
        }
        if claim["status"]["phase"] == "Bound" {
            continue;
        }
        let class = claim["spec"]["storageClassName"]
            .as_str()
            .and_then(|c| sim.store.get(&sc_rt, "", c));
        match class {
            Some(c) if c["volumeBindingMode"] == "WaitForFirstConsumer" => {
                // The scheduler picks the node; the provisioner then binds.
                sim.registry.update_as(
                    &pvc_rt,
                    ns,
                    claim_name,
                    "kube-scheduler",
                    Part::Main,
                    |o| {
                        let annotations = meta::metadata_mut(o)
                            .entry("annotations")
                            .or_insert_with(|| json!({}));
                        annotations["volume.kubernetes.io/selected-node"] = json!(super::NODE);
                    },
                );
                return Err("waiting for volume binding".into());
            }
            _ => return Err("pod has unbound immediate PersistentVolumeClaims".into()),
        }
    }
    Ok(())
}
