//! Permissions checked before a command changes anything: SelfSubjectAccessReviews, all at
//! once, so a user missing one verb is told before the first write, not half-way.

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::access::Cluster;
use crate::error::Error;

/// One permission: API group, resource (`pods/exec` for a subresource), verb.
pub type Permission = (&'static str, &'static str, &'static str);

/// kube-rs opens exec and port-forward over WebSocket: a GET upgraded, which from 1.35 the
/// apiserver authorises as both get and create.
pub const EXEC: [Permission; 2] = [("", "pods/exec", "get"), ("", "pods/exec", "create")];
pub const PORT_FORWARD: [Permission; 2] = [
    ("", "pods/portforward", "get"),
    ("", "pods/portforward", "create"),
];

/// Fails with [`Error::Forbidden`] naming the first permission of `checks` the user lacks in
/// `namespace`.
pub async fn require(
    cluster: &Cluster,
    namespace: &str,
    checks: &[Permission],
) -> Result<(), Error> {
    let reviews: Api<SelfSubjectAccessReview> = Api::all(cluster.client.clone());
    let asks = checks.iter().map(|(group, resource, verb)| {
        let (resource, subresource) = resource
            .split_once('/')
            .map_or((*resource, None), |(r, s)| (r, Some(s)));
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some(group.to_string()),
                    resource: Some(resource.to_string()),
                    subresource: subresource.map(str::to_string),
                    verb: Some(verb.to_string()),
                    namespace: Some(namespace.to_string()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let reviews = reviews.clone();
        async move { reviews.create(&PostParams::default(), &review).await }
    });
    let answers = futures_util::future::join_all(asks).await;
    for ((_, resource, verb), answer) in checks.iter().zip(answers) {
        let review = answer.map_err(|e| cluster.error("create", "selfsubjectaccessreviews", e))?;
        if !review.status.is_some_and(|s| s.allowed) {
            return Err(Error::Forbidden {
                verb: verb.to_string(),
                resource: resource.to_string(),
                namespace: namespace.to_string(),
                user: cluster.user.clone(),
                context: cluster.context.clone(),
            });
        }
    }
    Ok(())
}
