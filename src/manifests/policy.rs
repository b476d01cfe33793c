//! The release's NetworkPolicy as values: `--allow-from` peers parsed and checked before any
//! API call, what install does with the policy (apply, remove, leave), and the extra peers read
//! back from a live policy, so `install --upgrade` starts from what is deployed.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{json, Value};

use crate::error::Error;

/// The label the apiserver puts on every namespace (1.21+), naming it: the only namespace label
/// no one can forge on another namespace.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// `--network-policy` and `--allow-from` as given (None: the flag was not given).
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub enabled: Option<bool>,
    pub allow_from: Option<Vec<String>>,
}

/// What install does with the NetworkPolicy.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Apply it, admitting these peers besides the release's namespace.
    Apply(Vec<Value>),
    /// Delete it, if it is the release's.
    Remove,
    /// Neither read nor write it.
    Leave,
}

/// The live NetworkPolicy named after the release.
#[derive(Debug, Clone, PartialEq)]
pub enum Live {
    Absent,
    /// The release's own, with the peers it admits besides the release's namespace.
    Ours(Vec<Value>),
    /// Someone else's object of that name: never changed nor deleted.
    Foreign,
    /// Not readable with the user's permissions.
    Unknown,
}

/// The alone-standing `--allow-from` value that empties the list on `--upgrade`.
const NONE: &str = "none";

fn invalid(value: &str, why: &str) -> Error {
    Error::InvalidInput {
        message: format!("invalid --allow-from {value:?}: {why}"),
        hint: Some(
            "--allow-from namespace=NAME | namespace=* | namespace=NAME,pod=KEY=VALUE (pod= narrows a namespace peer; repeat the flag for more peers)"
                .into(),
        ),
    }
}

/// A label value: empty, or at most 63 characters, alphanumerics with '-', '_', '.' inside.
fn label_value_ok(value: &str) -> bool {
    let b = value.as_bytes();
    b.is_empty()
        || (b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.')))
}

/// A label key: `[PREFIX/]NAME`, PREFIX a DNS subdomain, NAME a non-empty label value.
fn label_key_ok(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.')
                .all(|part| crate::cluster::release::validate_label("key", part, 63).is_ok())
    });
    prefix_ok && !name.is_empty() && label_value_ok(name)
}

/// One `--allow-from` value as a NetworkPolicy peer: `namespace=NAME` (by the namespace's
/// `kubernetes.io/metadata.name`), `namespace=*` (every namespace), and `pod=KEY=VALUE`, which
/// narrows a namespace peer to the pods so labelled; parts are joined by ',' into one peer.
pub fn parse_peer(value: &str) -> Result<Value, Error> {
    let mut namespace: Option<&str> = None;
    let mut pods: BTreeMap<&str, &str> = BTreeMap::new();
    for part in value.split(',') {
        let part = part.trim();
        match part.split_once('=') {
            Some(("namespace", name)) => {
                if namespace.replace(name).is_some() {
                    return Err(invalid(
                        value,
                        "one namespace per peer: repeat --allow-from for another namespace",
                    ));
                }
                if name != "*" {
                    crate::cluster::release::validate_namespace(name).map_err(|_| {
                        invalid(value, &format!("{name:?} is not a namespace name"))
                    })?;
                }
            }
            Some(("pod", selector)) => {
                let Some((key, label)) = selector.split_once('=') else {
                    return Err(invalid(value, "a pod selector is pod=KEY=VALUE"));
                };
                if !label_key_ok(key) {
                    return Err(invalid(value, &format!("{key:?} is not a label key")));
                }
                if !label_value_ok(label) {
                    return Err(invalid(value, &format!("{label:?} is not a label value")));
                }
                if pods.insert(key, label).is_some() {
                    return Err(invalid(value, &format!("label {key:?} given twice")));
                }
            }
            _ => {
                return Err(invalid(
                    value,
                    &format!("{part:?} is neither namespace=NAME nor pod=KEY=VALUE"),
                ))
            }
        }
    }
    let Some(namespace) = namespace else {
        return Err(invalid(
            value,
            "pod= alone selects pods of the release's own namespace, which are admitted already: say which namespace (namespace=NAME, or namespace=* for every namespace)",
        ));
    };
    let mut peer = json!({
        "namespaceSelector": if namespace == "*" {
            json!({})
        } else {
            json!({ "matchLabels": { NAMESPACE_NAME_LABEL: namespace } })
        }
    });
    if !pods.is_empty() {
        peer["podSelector"] = json!({ "matchLabels": pods });
    }
    Ok(peer)
}

/// Every `--allow-from` value as peers, duplicates once; `none` alone is the empty list.
pub fn parse_peers(values: &[String]) -> Result<Vec<Value>, Error> {
    if values.iter().any(|v| v.trim() == NONE) {
        if values.len() > 1 {
            return Err(invalid(NONE, "`none` empties the list and stands alone"));
        }
        return Ok(Vec::new());
    }
    let mut peers: Vec<Value> = Vec::new();
    for value in values {
        let peer = parse_peer(value)?;
        if !peers.contains(&peer) {
            peers.push(peer);
        }
    }
    Ok(peers)
}

/// Checks the flags alone (before any API call): the peers parse, and they are not given with
/// the policy turned off.
pub fn check(req: &Request) -> Result<Option<Vec<Value>>, Error> {
    let peers = req.allow_from.as_deref().map(parse_peers).transpose()?;
    if req.enabled == Some(false) && peers.is_some() {
        return Err(Error::InvalidInput {
            message: "--allow-from admits peers through the NetworkPolicy, and --network-policy=false removes it".into(),
            hint: Some("drop one of the two".into()),
        });
    }
    Ok(peers)
}

/// What install does: a new release (`live` None) gets the policy when `--network-policy` or
/// `--allow-from` asks, or the prod profile; an upgrade keeps the live policy and its peers
/// unless a flag (or `--profile prod`) says otherwise. A policy the user cannot read is left
/// as it is when no flag asks about it.
pub fn decide(req: &Request, prod: Option<bool>, live: Option<&Live>) -> Result<Plan, Error> {
    let peers = check(req)?;
    let asked = req
        .enabled
        .or(peers.as_ref().map(|_| true))
        .or((prod == Some(true)).then_some(true));
    let live_peers = match live {
        Some(Live::Ours(peers)) => Some(peers.clone()),
        _ => None,
    };
    Ok(match (asked, live) {
        (Some(true), _) => Plan::Apply(peers.or(live_peers).unwrap_or_default()),
        (Some(false), Some(_)) => Plan::Remove,
        (Some(false), None) | (None, None) => Plan::Leave,
        (None, Some(_)) => live_peers.map_or(Plan::Leave, Plan::Apply),
    })
}

/// The RBAC verbs a plan needs on networkpolicies (none when it leaves the policy alone).
pub fn verbs(plan: &Plan) -> &'static [&'static str] {
    match plan {
        Plan::Apply(_) => &["get", "patch"],
        Plan::Remove => &["get", "delete"],
        Plan::Leave => &[],
    }
}

/// The peers a live policy of the release admits besides its own namespace, as they are
/// (a peer added by hand, an ipBlock, is kept by an upgrade that does not pass --allow-from).
/// Only the first ingress rule holds them: the second, if any, is the exposure's.
pub fn read_peers(policy: &NetworkPolicy, namespace: &str) -> Vec<Value> {
    let own = own_namespace_peer(namespace);
    let rule = policy
        .spec
        .as_ref()
        .and_then(|s| s.ingress.as_ref())
        .and_then(|rules| rules.first());
    rule.and_then(|r| r.from.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|peer| serde_json::to_value(peer).ok())
        .filter(|peer| *peer != own)
        .collect()
}

/// The peer of every pod in the release's namespace.
pub fn own_namespace_peer(namespace: &str) -> Value {
    json!({ "namespaceSelector": { "matchLabels": { NAMESPACE_NAME_LABEL: namespace } } })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(enabled: Option<bool>, allow: &[&str]) -> Request {
        Request {
            enabled,
            allow_from: (!allow.is_empty()).then(|| allow.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn allow_from_peers_parse_into_selectors() {
        assert_eq!(
            parse_peer("namespace=team-a").unwrap(),
            json!({ "namespaceSelector": { "matchLabels": { NAMESPACE_NAME_LABEL: "team-a" } } })
        );
        assert_eq!(
            parse_peer("namespace=*").unwrap(),
            json!({ "namespaceSelector": {} })
        );
        assert_eq!(
            parse_peer("namespace=x, pod=role=api,pod=example.com/tier=").unwrap(),
            json!({
                "namespaceSelector": { "matchLabels": { NAMESPACE_NAME_LABEL: "x" } },
                "podSelector": { "matchLabels": { "role": "api", "example.com/tier": "" } },
            })
        );
        assert_eq!(
            parse_peer("pod=app=web,namespace=*").unwrap(),
            json!({ "namespaceSelector": {}, "podSelector": { "matchLabels": { "app": "web" } } })
        );
        for (bad, says) in [
            (
                "pod=app=web",
                "alone selects pods of the release's own namespace",
            ),
            ("namespace=Team", "not a namespace name"),
            ("namespace=", "not a namespace name"),
            ("namespace=a,namespace=b", "one namespace per peer"),
            ("namespace=a,pod=app", "pod=KEY=VALUE"),
            ("namespace=a,pod==web", "not a label key"),
            ("namespace=a,pod=-app=web", "not a label key"),
            ("namespace=a,pod=Bad_/app=web", "not a label key"),
            ("namespace=a,pod=app=web!", "not a label value"),
            ("namespace=a,pod=app=w,pod=app=x", "given twice"),
            ("ns=a", "neither"),
            ("", "neither"),
            ("namespace=a,", "neither"),
        ] {
            let err = parse_peer(bad).expect_err(bad).to_string();
            assert!(
                err.contains(says) && err.contains("--allow-from"),
                "{bad}: {err}"
            );
        }
        let peers = parse_peers(&[
            "namespace=a".into(),
            "namespace=a".into(),
            "namespace=*".into(),
        ]);
        assert_eq!(peers.unwrap().len(), 2, "a repeated peer counts once");
        assert_eq!(parse_peers(&["none".into()]).unwrap(), Vec::<Value>::new());
        assert!(parse_peers(&["none".into(), "namespace=a".into()]).is_err());
    }

    #[test]
    fn the_profile_and_flags_decide_and_an_upgrade_starts_from_the_live_policy() {
        let a = parse_peer("namespace=a").unwrap();
        let b = parse_peer("namespace=b").unwrap();
        // New releases: off in dev, on in prod, on when asked or given peers.
        assert_eq!(decide(&req(None, &[]), None, None).unwrap(), Plan::Leave);
        assert_eq!(
            decide(&req(None, &[]), Some(false), None).unwrap(),
            Plan::Leave
        );
        assert_eq!(
            decide(&req(None, &[]), Some(true), None).unwrap(),
            Plan::Apply(vec![])
        );
        assert_eq!(
            decide(&req(Some(false), &[]), Some(true), None).unwrap(),
            Plan::Leave
        );
        assert_eq!(
            decide(&req(Some(true), &[]), None, None).unwrap(),
            Plan::Apply(vec![])
        );
        assert_eq!(
            decide(&req(None, &["namespace=a"]), None, None).unwrap(),
            Plan::Apply(vec![a.clone()])
        );
        let err = decide(&req(Some(false), &["namespace=a"]), None, None).unwrap_err();
        assert!(err.to_string().contains("--network-policy=false"), "{err}");
        // Upgrades: no flag keeps what is deployed, peers included.
        let ours = Live::Ours(vec![a.clone()]);
        assert_eq!(
            decide(&req(None, &[]), None, Some(&ours)).unwrap(),
            Plan::Apply(vec![a.clone()])
        );
        assert_eq!(
            decide(&req(None, &[]), None, Some(&Live::Absent)).unwrap(),
            Plan::Leave
        );
        assert_eq!(
            decide(&req(None, &[]), None, Some(&Live::Unknown)).unwrap(),
            Plan::Leave
        );
        assert_eq!(
            decide(&req(None, &[]), None, Some(&Live::Foreign)).unwrap(),
            Plan::Leave
        );
        assert_eq!(
            decide(&req(Some(true), &[]), None, Some(&ours)).unwrap(),
            Plan::Apply(vec![a.clone()]),
            "--network-policy alone keeps the deployed peers"
        );
        assert_eq!(
            decide(&req(None, &["namespace=b"]), None, Some(&ours)).unwrap(),
            Plan::Apply(vec![b]),
            "--allow-from replaces them"
        );
        assert_eq!(
            decide(&req(None, &["none"]), None, Some(&ours)).unwrap(),
            Plan::Apply(vec![])
        );
        assert_eq!(
            decide(&req(None, &[]), Some(true), Some(&Live::Absent)).unwrap(),
            Plan::Apply(vec![]),
            "--profile prod on an upgrade brings the policy"
        );
        assert_eq!(
            decide(&req(None, &[]), Some(false), Some(&ours)).unwrap(),
            Plan::Apply(vec![a])
        );
        assert_eq!(
            decide(&req(Some(false), &[]), None, Some(&ours)).unwrap(),
            Plan::Remove
        );
        assert_eq!(
            decide(&req(Some(false), &[]), None, Some(&Live::Unknown)).unwrap(),
            Plan::Remove
        );
    }

    #[test]
    fn networkpolicies_permissions_are_asked_only_when_the_policy_is_touched() {
        assert!(verbs(&Plan::Leave).is_empty());
        assert_eq!(verbs(&Plan::Apply(vec![])), ["get", "patch"]);
        assert_eq!(verbs(&Plan::Remove), ["get", "delete"]);
    }
}
