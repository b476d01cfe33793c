//! A write block no client can lift, for a major upgrade: pg_hba.conf refuses every TCP
//! connection and the sessions already open are ended.
//!
//! Why it holds: every client reaches the server over TCP (the Services, a port-forward, `psql
//! --local`), and pg_hba.conf is read by the server, not negotiated with the client, so no
//! session setting (`BEGIN READ WRITE`, `SET default_transaction_read_only`) gets around it;
//! the running sessions are terminated once the server has applied the rule, so none that
//! began before writes on. The upgrade's own tools run in the pod over the local socket,
//! which the rule leaves open: a shell in the pod is administrator access, not a client.

use crate::cluster::exec;
use crate::cluster::release::Target;
use crate::error::Error;
use crate::manifests::render::CONTAINER;
use crate::transfer::snapshot;

/// The comment that marks the blocking line, so that unblocking removes exactly it.
pub const MARK: &str = "# kubectl-pg: writes blocked during a major upgrade";

/// The shell script that edits pg_hba.conf (`$1` is `block` or `unblock`, `$2` a pg_hba.conf
/// to start from instead of the server's own) and reloads; [`WAIT_APPLIED`] follows it.
const SCRIPT: &str = r#"set -u
f="$PGDATA/pg_hba.conf"
mark='MARK'
src="${2:-$f}"
[ -f "$src" ] || src="$f"
case "$1" in
block)
    if ! grep -qF "$mark" "$f"; then
        { printf 'host all all all reject %s\n' "$mark"; cat "$f"; } > "$f.kubectl-pg" &&
            cat "$f.kubectl-pg" > "$f" && rm -f "$f.kubectl-pg" || exit 1
    fi ;;
unblock)
    if [ "$src" != "$f" ] || grep -qF "$mark" "$f"; then
        grep -vF "$mark" "$src" > "$f.kubectl-pg"
        cat "$f.kubectl-pg" > "$f" && rm -f "$f.kubectl-pg" || exit 1
    fi ;;
esac
psql -X -q -At -U "$POSTGRES_USER" -d postgres -c 'select pg_reload_conf()' >/dev/null || exit 1
login="$POSTGRES_USER"
"#;

/// The end of a script that waits, up to a minute, until the running server applies the rule
/// (`$1` is `block` or `unblock`): a TCP login as `$login` refused by pg_hba.conf when blocked,
/// anything else when not.
pub const WAIT_APPLIED: &str = r#"i=0
while :; do
    out=$(PGCONNECT_TIMEOUT=5 psql -X -w -h 127.0.0.1 -U "$login" -d postgres -c 'select 1' 2>&1)
    case "$1:$out" in
        block:*"pg_hba.conf rejects"*) break ;;
        unblock:*"pg_hba.conf rejects"*) ;;
        unblock:*) break ;;
    esac
    i=$((i + 1))
    [ "$i" -lt 600 ] || { echo "the server did not apply pg_hba.conf: $out" >&2; exit 1; }
    sleep 0.1
done
"#;

/// Ends every client session but the caller's, each waited for (up to 5 s) so that a commit in
/// flight either finished before the block's snapshot or never happened.
const TERMINATE: &str = "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity \
     WHERE pid <> pg_backend_pid() AND backend_type = 'client backend';\n";

/// Blocks writes on the server of `target`: refuses TCP logins, then ends the open sessions.
/// Idempotent.
pub async fn block(cluster: &crate::cluster::Cluster, target: &Target) -> Result<(), Error> {
    edit(cluster, target, "block", None).await?;
    snapshot::psql(cluster, target, "postgres", TERMINATE).await?;
    Ok(())
}

/// Allows writes again: the blocking line is removed (or, given `from`, pg_hba.conf becomes
/// that file without it: the old major's rules, carried to a new data directory). Idempotent.
pub async fn unblock(
    cluster: &crate::cluster::Cluster,
    target: &Target,
    from: Option<&str>,
) -> Result<(), Error> {
    edit(cluster, target, "unblock", from).await
}

async fn edit(
    cluster: &crate::cluster::Cluster,
    target: &Target,
    what: &str,
    from: Option<&str>,
) -> Result<(), Error> {
    let script = format!("{}{WAIT_APPLIED}", SCRIPT.replace("MARK", MARK));
    let mut argv = vec!["sh", "-c", &script, "kubectl-pg", what];
    if let Some(from) = from {
        argv.push(from);
    }
    let out = exec::run(
        cluster,
        &target.namespace,
        &target.pod,
        CONTAINER,
        &argv,
        "",
    )
    .await?;
    if !out.success {
        return Err(Error::Tool {
            tool: "pg_hba.conf".into(),
            message: format!(
                "could not {what} writes in pod {}: {}",
                target.pod,
                out.reason()
            ),
            hints: Vec::new(),
        });
    }
    Ok(())
}

/// The cluster's identity (pg_control's system identifier): initdb makes a new one, so the
/// same value proves the same data directory.
pub async fn system_identifier(
    cluster: &crate::cluster::Cluster,
    target: &Target,
) -> Result<String, Error> {
    let out = snapshot::psql(
        cluster,
        target,
        "postgres",
        "SELECT system_identifier FROM pg_control_system();\n",
    )
    .await?;
    Ok(out.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_blocking_line_is_a_valid_pg_hba_rule_with_its_mark() {
        let script = format!("{}{WAIT_APPLIED}", SCRIPT.replace("MARK", MARK));
        assert!(script.contains("printf 'host all all all reject %s\\n' \"$mark\""));
        assert!(script.contains(&format!("mark='{MARK}'")));
        // The mark is a pg_hba comment and holds no quote that would end the shell word.
        assert!(MARK.starts_with('#') && !MARK.contains('\''));
    }
}
