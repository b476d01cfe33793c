//! Shell completion: static scripts for `kubectl-pg` (`completion SHELL`), and the dynamic
//! `__complete` protocol that kubectl (1.26+) drives through `kubectl_complete-pg`, with
//! release names, namespaces and contexts from the kubeconfig and the cluster.

use std::time::Duration;

use clap::CommandFactory;
use clap_complete::Shell;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};

use crate::cli::{Cli, GlobalArgs};
use crate::cluster::Cluster;

/// Cobra's ShellCompDirectiveNoFileComp: offer no file names.
const NO_FILE_COMPLETION: u8 = 4;
/// How long a completion may wait for the cluster.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(2);

/// The completion script for `shell`.
pub fn script(shell: Shell) -> String {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut command, "kubectl-pg", &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Answers a `__complete` request: `args` are the words after `kubectl pg`, the last one
/// being the word under the cursor. Output: one candidate per line, then `:<directive>`.
pub async fn complete(args: &[String]) -> String {
    let (words, current) = match args.split_last() {
        Some((current, words)) => (words, current.as_str()),
        None => (&[][..], ""),
    };
    let candidates = candidates(words, current).await;
    let mut out: String = candidates
        .into_iter()
        .filter(|c| c.starts_with(current))
        .map(|c| c + "\n")
        .collect();
    out.push_str(&format!(":{NO_FILE_COMPLETION}\n"));
    out
}

async fn candidates(words: &[String], current: &str) -> Vec<String> {
    let root = Cli::command();
    let mut command = &root;
    let mut positionals = 0;
    let mut expects_value: Option<String> = None;
    let mut global = GlobalArgs::default_for_completion();
    for word in words {
        if let Some(flag) = expects_value.take() {
            global.set(&flag, word);
            continue;
        }
        if let Some(flag) = word.strip_prefix("--").or_else(|| word.strip_prefix('-')) {
            let (name, inline) = flag
                .split_once('=')
                .map_or((flag, None), |(n, v)| (n, Some(v)));
            if let Some(value) = inline {
                global.set(name, value);
            } else if takes_value(command, &root, name) {
                expects_value = Some(name.to_string());
            }
            continue;
        }
        match command.find_subcommand(word) {
            Some(sub) => {
                command = sub;
                positionals = 0;
            }
            None => positionals += 1,
        }
    }
    if let Some(flag) = expects_value {
        return match flag.as_str() {
            "n" | "namespace" => namespaces(&global).await,
            "context" => contexts(&global),
            "release" => releases(&global).await,
            "o" | "output" => ["table", "wide", "json", "yaml"].map(String::from).to_vec(),
            _ => Vec::new(),
        };
    }
    if current.starts_with('-') {
        return flags(command, &root);
    }
    let subcommands: Vec<String> = command
        .get_subcommands()
        .filter(|s| !s.is_hide_set())
        .map(|s| s.get_name().to_string())
        .collect();
    if !subcommands.is_empty() {
        return subcommands;
    }
    let takes_release = command.get_positionals().any(|a| a.get_id() == "release");
    if takes_release && positionals == 0 {
        return releases(&global).await;
    }
    Vec::new()
}

fn takes_value(command: &clap::Command, root: &clap::Command, name: &str) -> bool {
    command
        .get_arguments()
        .chain(root.get_arguments())
        .find(|a| {
            a.get_long() == Some(name) || a.get_short().is_some_and(|s| name == s.to_string())
        })
        .is_some_and(|a| a.get_action().takes_values())
}

fn flags(command: &clap::Command, root: &clap::Command) -> Vec<String> {
    let mut out: Vec<String> = command
        .get_arguments()
        .chain(root.get_arguments())
        .filter(|a| !a.is_hide_set())
        .filter_map(|a| a.get_long().map(|l| format!("--{l}")))
        .collect();
    out.sort();
    out.dedup();
    out
}

async fn namespaces(global: &GlobalArgs) -> Vec<String> {
    let lookup = async {
        let cluster = Cluster::connect(&global.connect_options()).await.ok()?;
        let api: Api<Namespace> = Api::all(cluster.client.clone());
        let list = api.list_metadata(&ListParams::default()).await.ok()?;
        Some(
            list.items
                .into_iter()
                .filter_map(|n| n.metadata.name)
                .collect(),
        )
    };
    tokio::time::timeout(CLUSTER_TIMEOUT, lookup)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

async fn releases(global: &GlobalArgs) -> Vec<String> {
    let lookup = async {
        let cluster = Cluster::connect(&global.connect_options()).await.ok()?;
        let list = crate::deployment::observe::list_releases(&cluster, false)
            .await
            .ok()?;
        Some(list.into_iter().map(|(_, name)| name).collect())
    };
    tokio::time::timeout(CLUSTER_TIMEOUT, lookup)
        .await
        .ok()
        .flatten()
        .unwrap_or_default()
}

fn contexts(global: &GlobalArgs) -> Vec<String> {
    let config = match &global.kubeconfig {
        Some(path) => kube::config::Kubeconfig::read_from(path),
        None => kube::config::Kubeconfig::read(),
    };
    config
        .map(|c| c.contexts.into_iter().map(|c| c.name).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn powershell_gets_an_argument_completer_for_the_binary() {
        let text = script(Shell::PowerShell);
        assert!(
            text.contains("Register-ArgumentCompleter -Native -CommandName 'kubectl-pg'"),
            "{text}"
        );
        assert!(text.contains("'port-forward'"), "subcommands are offered");
    }

    fn args(words: &[&str]) -> Vec<String> {
        words.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn completes_subcommands_and_flags() {
        let out = complete(&args(&["mi"])).await;
        assert_eq!(out, "migrate\n:4\n");
        let out = complete(&args(&["migrate", ""])).await;
        assert!(
            out.contains("up\n") && out.contains("baseline\n") && out.ends_with(":4\n"),
            "{out}"
        );
        let out = complete(&args(&["status", "--all"])).await;
        assert_eq!(out, "--all-namespaces\n:4\n");
        let out = complete(&args(&["status", "-o", ""])).await;
        assert!(out.starts_with("table\nwide\njson\nyaml\n"), "{out}");
        // --context takes a value: the word after it is not a subcommand.
        let out = complete(&args(&["--context", "x", "st"])).await;
        assert_eq!(out, "status\n:4\n");
    }
}
