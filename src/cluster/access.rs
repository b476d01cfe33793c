//! Reaching a cluster the way kubectl does: kubeconfig resolution (`--kubeconfig`, else
//! `$KUBECONFIG` merged, else `~/.kube/config`), `--context`/`--cluster`/`--user`,
//! impersonation, `--request-timeout`, and the namespace rule of DESIGN.md. API errors are
//! turned into our exit codes here, in one place.

use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};

use crate::error::Error;

/// The namespace used when neither `-n` nor the context names one (the seed's default).
pub const DEFAULT_NAMESPACE: &str = "postgres";

/// kubectl's connection flags, as the cluster layer takes them.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
    pub cluster: Option<String>,
    pub user: Option<String>,
    pub namespace: Option<String>,
    pub as_user: Option<String>,
    pub as_group: Vec<String>,
    /// Bounds each API request; zero means none.
    pub request_timeout: Option<std::time::Duration>,
}

/// A client for one context, with what messages need to name it.
#[derive(Clone)]
pub struct Cluster {
    pub client: Client,
    pub namespace: String,
    /// The context name, for messages.
    pub context: String,
    /// The API server URL, for messages.
    pub server: String,
    /// Who we act as, for RBAC messages.
    pub user: String,
}

impl Cluster {
    /// Builds a client from the kubeconfig and flags; no request is sent yet.
    pub async fn connect(global: &ConnectOptions) -> Result<Self, Error> {
        let kubeconfig = load_kubeconfig(global)?;
        let context = global
            .context
            .clone()
            .or_else(|| kubeconfig.current_context.clone())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| Error::Kubeconfig {
                message: "the kubeconfig has no current context".into(),
                hint: Some(
                    "pick one with --context NAME, or `kubectl config use-context NAME`".into(),
                ),
            })?;
        let named = kubeconfig.contexts.iter().find(|c| c.name == context);
        let Some(named) = named else {
            let known: Vec<&str> = kubeconfig
                .contexts
                .iter()
                .map(|c| c.name.as_str())
                .collect();
            return Err(Error::Kubeconfig {
                message: format!("context {context:?} not found in the kubeconfig"),
                hint: Some(if known.is_empty() {
                    "the kubeconfig defines no contexts".into()
                } else {
                    format!("known contexts: {}", known.join(", "))
                }),
            });
        };
        if let Some(user) = &global.user {
            if !kubeconfig.auth_infos.iter().any(|u| &u.name == user) {
                return Err(Error::Kubeconfig {
                    message: format!("user {user:?} not found in the kubeconfig"),
                    hint: Some(
                        "list them with: kubectl config view -o jsonpath='{.users[*].name}'".into(),
                    ),
                });
            }
        }
        let context_namespace = named.context.as_ref().and_then(|c| c.namespace.clone());
        let context_user = named.context.as_ref().and_then(|c| c.user.clone());
        let cluster_name = global
            .cluster
            .clone()
            .or_else(|| named.context.as_ref().map(|c| c.cluster.clone()));
        let kubeconfig_proxy = kubeconfig
            .clusters
            .iter()
            .find(|c| Some(&c.name) == cluster_name.as_ref())
            .and_then(|c| c.cluster.as_ref()?.proxy_url.clone());
        let options = KubeConfigOptions {
            context: Some(context.clone()),
            cluster: global.cluster.clone(),
            user: global.user.clone(),
        };
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &options)
            .await
            .map_err(|e| kubeconfig_error(&e, &context))?;
        // kube reads only HTTPS_PROXY and matches NO_PROXY against the proxy itself; choose as
        // kubectl does instead.
        config.proxy_url =
            super::proxy::choose(&config.cluster_url, kubeconfig_proxy.as_deref(), |name| {
                std::env::var(name).ok()
            })
            .map_err(|message| Error::Kubeconfig {
                message,
                hint: Some("fix proxy-url in the kubeconfig, or HTTPS_PROXY / HTTP_PROXY".into()),
            })?;
        if let Some(user) = &global.as_user {
            config.auth_info.impersonate = Some(user.clone());
        }
        if !global.as_group.is_empty() {
            config.auth_info.impersonate_groups = Some(global.as_group.clone());
        }
        if let Some(timeout) = global.request_timeout.filter(|t| !t.is_zero()) {
            config.connect_timeout = Some(timeout);
            config.read_timeout = Some(timeout);
            config.write_timeout = Some(timeout);
        }
        let server = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let user = global
            .as_user
            .clone()
            .or_else(|| global.user.clone())
            .or(context_user)
            .unwrap_or_else(|| "the current user".into());
        // `--request-timeout 0` waits forever, as kubectl's does; unset is a default.
        let bound = |default| match global.request_timeout {
            Some(t) if t.is_zero() => None,
            Some(t) => Some(t),
            None => Some(default),
        };
        super::credential_plugin::resolve(
            &mut config.auth_info,
            bound(super::credential_plugin::DEFAULT_PLUGIN_TIMEOUT),
        )
        .await
        .map_err(|reason| Error::ClusterUnreachable {
            context: context.clone(),
            server: server.clone(),
            reason,
            hint: Some("check the exec plugin of the kubeconfig user (users[].user.exec)".into()),
        })?;
        let deadline = bound(super::transport::DEFAULT_REQUEST_TIMEOUT);
        let client =
            super::transport::client(config, deadline).map_err(|e| Error::ClusterUnreachable {
                context: context.clone(),
                server: server.clone(),
                reason: chain(&e),
                hint: None,
            })?;
        let namespace = global
            .namespace
            .clone()
            .or(context_namespace)
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        Ok(Self {
            client,
            namespace,
            context,
            server,
            user,
        })
    }

    /// Turns a failed API call into our error: exit 2 when the cluster cannot be reached or
    /// refuses our credentials, 6/2 when RBAC forbids the verb, 1 otherwise.
    pub fn error(&self, verb: &str, resource: &str, e: kube::Error) -> Error {
        match e {
            kube::Error::Api(status) => match status.code {
                401 => Error::ClusterUnreachable {
                    context: self.context.clone(),
                    server: self.server.clone(),
                    reason: "Unauthorized: the server rejected our credentials".into(),
                    hint: Some("refresh the credentials of this context (token expired?), or pick another with --context".into()),
                },
                403 => Error::Forbidden {
                    verb: verb.into(),
                    resource: resource.into(),
                    namespace: if CLUSTER_SCOPED.contains(&resource) {
                        String::new()
                    } else {
                        self.namespace.clone()
                    },
                    user: self.user.clone(),
                    context: self.context.clone(),
                },
                // Not the API server's answer but a page from something in front of it (a
                // proxy, a load balancer) that could not reach it: as kubectl, unreachable.
                502..=504 if is_foreign(&status) => Error::ClusterUnreachable {
                    context: self.context.clone(),
                    server: self.server.clone(),
                    reason: format!(
                        "HTTP {} from the server's address, with {} instead of a Kubernetes answer",
                        status.code,
                        describe_foreign(&status.message)
                    ),
                    hint: Some("a proxy or load balancer in front of the API server could not reach it: check that the cluster is running (kubectl cluster-info), or pick another --context".into()),
                },
                _ if is_foreign(&status) => Error::Api {
                    action: format!("{verb} {resource} in namespace {:?}", self.namespace),
                    message: format!(
                        "HTTP {} with {} instead of a Kubernetes answer",
                        status.code,
                        describe_foreign(&status.message)
                    ),
                },
                _ => Error::Api {
                    action: format!("{verb} {resource} in namespace {:?}", self.namespace),
                    message: if status.message.is_empty() {
                        format!("{} ({})", status.reason, status.code)
                    } else {
                        status.message.clone()
                    },
                },
            },
            other => Error::ClusterUnreachable {
                context: self.context.clone(),
                server: self.server.clone(),
                reason: chain(&other),
                hint: Some(unreachable_hint(&other)),
            },
        }
    }
}

/// An error answer whose body was no Kubernetes Status (kube keeps the body as the message).
fn is_foreign(status: &kube::core::Status) -> bool {
    status.reason == "Failed to parse error data"
}

/// A foreign error body in a few words: an HTML page by its title, text by its first line,
/// never the whole of either.
fn describe_foreign(body: &str) -> String {
    const MAX: usize = 120;
    let short = |text: &str| -> String {
        let text = text.trim();
        match text.char_indices().nth(MAX) {
            Some((at, _)) => format!("{}…", &text[..at]),
            None => text.to_string(),
        }
    };
    let lower = body.to_ascii_lowercase();
    if lower.trim_start().starts_with('<') {
        let title = lower
            .find("<title>")
            .map(|start| start + "<title>".len())
            .and_then(|start| Some((start, start + lower[start..].find("</title>")?)))
            .map(|(start, end)| short(&body[start..end]))
            .filter(|t| !t.is_empty());
        return match title {
            Some(title) => format!("an HTML page ({title:?})"),
            None => "an HTML page".into(),
        };
    }
    match body.lines().map(str::trim).find(|l| !l.is_empty()) {
        Some(line) => format!("{:?}", short(line)),
        None => "an empty body".into(),
    }
}

fn unreachable_hint(e: &kube::Error) -> String {
    let mut source: Option<&dyn std::error::Error> = Some(e);
    while let Some(s) = source {
        if s.is::<super::transport::ResponseTooLarge>() {
            return "a single answer is read whole into memory: ask for less (another -n NAMESPACE), or check what answers at the server's address".into();
        }
        source = s.source();
    }
    let text = chain(e).to_lowercase();
    if text.contains("certificate") || text.contains("tls") {
        "the server's certificate is not trusted by the kubeconfig's certificate-authority".into()
    } else {
        "check that the cluster is running and reachable (kubectl cluster-info), or pick another --context".into()
    }
}

/// An error with its causes, on one line: each cause's first line (a parser's source diagram
/// stays out), kube's `ServiceError:` wrapper dropped, a cause the text already holds skipped.
pub fn chain(e: &dyn std::error::Error) -> String {
    fn line(e: &dyn std::error::Error) -> String {
        let text = e.to_string();
        let first = text.lines().next().unwrap_or("").trim();
        first
            .strip_prefix("ServiceError: ")
            .unwrap_or(first)
            .to_string()
    }
    let mut text = line(e);
    let mut source = e.source();
    while let Some(s) = source {
        let next = line(s);
        if !next.is_empty() && !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// The files of `$KUBECONFIG` merged in order, skipping the ones that do not exist, as kubectl
/// does; `None` when every file is missing (the error then names the first).
fn read_kubeconfig_list(list: &std::ffi::OsStr) -> Option<Result<Kubeconfig, KubeconfigError>> {
    let existing: Vec<std::path::PathBuf> = std::env::split_paths(list)
        .filter(|p| !p.as_os_str().is_empty() && p.exists())
        .collect();
    let (first, rest) = existing.split_first()?;
    let mut merged = Kubeconfig::read_from(first);
    for path in rest {
        merged = merged.and_then(|m| m.merge(Kubeconfig::read_from(path)?));
    }
    Some(merged)
}

fn load_kubeconfig(global: &ConnectOptions) -> Result<Kubeconfig, Error> {
    let list = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let result = match (&global.kubeconfig, &list) {
        (Some(path), _) => Kubeconfig::read_from(path),
        (None, Some(list)) => read_kubeconfig_list(list).unwrap_or_else(Kubeconfig::read),
        (None, None) => Kubeconfig::read(),
    };
    result.map_err(|e| match e {
        KubeconfigError::FindPath => Error::Kubeconfig {
            message: format!(
                "no kubeconfig found: $KUBECONFIG is unset and {} does not exist",
                crate::platform::DEFAULT_KUBECONFIG
            ),
            hint: Some("point to one with --kubeconfig PATH or KUBECONFIG, or create a cluster (kind create cluster)".into()),
        },
        KubeconfigError::ReadConfig(io, path)
            if io.kind() == std::io::ErrorKind::NotFound && global.kubeconfig.is_none() =>
        {
            Error::Kubeconfig {
                message: if std::env::var_os("KUBECONFIG").is_some_and(|v| !v.is_empty()) {
                    format!("kubeconfig {} named by $KUBECONFIG does not exist", path.display())
                } else {
                    format!("no kubeconfig found at {} ($KUBECONFIG is not set)", path.display())
                },
                hint: Some(
                    "point to one with --kubeconfig PATH or KUBECONFIG, or create a cluster (kind create cluster)".into(),
                ),
            }
        }
        KubeconfigError::ReadConfig(io, path) => Error::Kubeconfig {
            message: format!("cannot read kubeconfig {}: {io}", path.display()),
            hint: Some("check the --kubeconfig path or $KUBECONFIG".into()),
        },
        other => Error::Kubeconfig {
            message: format!("invalid kubeconfig: {}", chain(&other)),
            hint: None,
        },
    })
}

fn kubeconfig_error(e: &KubeconfigError, context: &str) -> Error {
    let (message, hint) = match e {
        KubeconfigError::LoadContext(name) => (
            format!("context {name:?} not found in the kubeconfig"),
            None,
        ),
        KubeconfigError::LoadClusterOfContext(name) => (
            format!("cluster {name:?} of context {context:?} not found in the kubeconfig"),
            Some("pick an existing cluster with --cluster NAME".to_string()),
        ),
        other => (
            format!("cannot use context {context:?}: {}", chain(other)),
            None,
        ),
    };
    Error::Kubeconfig { message, hint }
}

/// Resources that live in no namespace: a Role cannot grant them.
const CLUSTER_SCOPED: &[&str] = &[
    "nodes",
    "storageclasses",
    "persistentvolumes",
    "selfsubjectaccessreviews",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let config = Config::new("https://127.0.0.1:1".parse().unwrap());
        Cluster {
            client: Client::try_from(config).unwrap(),
            namespace: "ns".into(),
            context: "ctx".into(),
            server: "https://127.0.0.1:1".into(),
            user: "me".into(),
        }
    }

    fn foreign(code: u16, body: &str) -> kube::Error {
        let status =
            kube::core::Status::failure(body, "Failed to parse error data").with_code(code);
        kube::Error::Api(status.boxed())
    }

    const NGINX_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n\
        <center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n";

    #[tokio::test]
    async fn a_gateway_page_is_unreachable_in_a_few_words() {
        let e = cluster().error("list", "pods", foreign(502, NGINX_502));
        assert_eq!(e.exit_code(), 2, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("HTTP 502") && text.contains("an HTML page (\"502 Bad Gateway\")"),
            "{text}"
        );
        assert!(!text.contains("<center>") && !text.contains('\n'), "{text}");
        assert!(e.hints().iter().any(|h| h.contains("proxy")), "{e:?}");
    }

    #[tokio::test]
    async fn other_foreign_bodies_are_cut_short() {
        let long = format!("{}\nsecond line", "x".repeat(500));
        let e = cluster().error("get", "pods", foreign(404, &long));
        assert_eq!(e.exit_code(), 1);
        let text = e.to_string();
        assert!(text.contains("HTTP 404") && text.contains('…'), "{text}");
        assert!(text.len() < 300 && !text.contains("second line"), "{text}");
        let e = cluster().error("get", "pods", foreign(503, "<p>no title</p>"));
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("with an HTML page instead"), "{e}");
        // A real Status stays the server's own words.
        let status = kube::core::Status::failure("pods \"x\" not found", "NotFound").with_code(404);
        let e = cluster().error("get", "pods", kube::Error::Api(status.boxed()));
        assert_eq!(e.to_string(), "Kubernetes API error while trying to get pods in namespace \"ns\": pods \"x\" not found");
    }
}
