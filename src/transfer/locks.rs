//! A transfer waiting on another session's lock says so, and gives up when told to.
//!
//! pg_restore and pg_dump's scripts set `lock_timeout = 0` themselves, so the server's own
//! setting cannot bound the wait: a second session watches the transfer's (found by its
//! `application_name`) in `pg_locks`, names the session that blocks it, and cancels the
//! waiting statement once it has waited longer than `--lock-timeout`. The cancelled statement
//! fails, and the transfer's single transaction rolls back with it.

use std::convert::Infallible;
use std::sync::Mutex;
use std::time::Duration;

use crate::cluster::release::Target;
use crate::cluster::Cluster;
use crate::migration::history::literal;

/// How often the watcher looks: the first line comes after this much waiting.
const POLL: Duration = Duration::from_secs(2);

/// What the watcher saw and did, for the transfer's error.
#[derive(Debug, Default)]
pub struct Waits {
    gave_up: Mutex<Option<String>>,
}

impl Waits {
    /// Why the watcher cancelled the transfer's statement, if it did.
    pub fn gave_up(&self) -> Option<String> {
        self.gave_up.lock().ok().and_then(|g| g.clone())
    }
}

/// One wait: the transfer's session waits on a lock `blocker` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Wait {
    seconds: u64,
    blocker: String,
}

/// `WAITING_SECONDS|BLOCKER_PID|APPLICATION|STATE|QUERY` as the watcher's SQL prints it.
fn parse(row: &str) -> Option<Wait> {
    let mut fields = row.splitn(5, '|');
    let seconds = fields.next()?.trim().parse().ok()?;
    let pid = fields.next()?;
    let application = fields.next()?;
    let state = fields.next()?;
    let query = fields.next()?.trim();
    Some(Wait {
        seconds,
        blocker: format!("pid {pid} ({application}, {state}: {query})"),
    })
}

/// The longest wait of the transfer's sessions on a lock, with the session that blocks it.
fn wait_sql(tag: &str) -> String {
    format!(
        "select floor(extract(epoch from now() - coalesce(l.waitstart, w.query_start)))::bigint \
         || '|' || b.pid || '|' || coalesce(nullif(b.application_name, ''), 'no application_name') \
         || '|' || coalesce(b.state, 'unknown state') \
         || '|' || left(regexp_replace(coalesce(b.query, ''), '\\s+', ' ', 'g'), 120) \
         from pg_stat_activity w \
         join pg_locks l on l.pid = w.pid and not l.granted \
         cross join lateral unnest(pg_blocking_pids(w.pid)) as bp(pid) \
         join pg_stat_activity b on b.pid = bp.pid \
         where w.application_name = {} \
         order by coalesce(l.waitstart, w.query_start) limit 1;\n",
        literal(tag)
    )
}

/// Cancels the statements of the transfer that still wait on a lock after `limit`.
fn cancel_sql(tag: &str, limit: Duration) -> String {
    format!(
        "select count(pg_cancel_backend(w.pid)) from pg_stat_activity w \
         join pg_locks l on l.pid = w.pid and not l.granted \
         where w.application_name = {} \
         and now() - coalesce(l.waitstart, w.query_start) >= make_interval(secs => {});\n",
        literal(tag),
        limit.as_secs_f64()
    )
}

/// Watches the transfer tagged `tag` until dropped (it never returns): a line on stderr
/// for each new blocker, and with `limit`, the waiting statement cancelled once it waited
/// that long (recorded in `waits`). A failed look is skipped: the watch only informs.
pub async fn watch(
    cluster: &Cluster,
    target: &Target,
    tag: &str,
    limit: Option<Duration>,
    waits: &Waits,
) -> Infallible {
    let poll = limit.map_or(POLL, |l| l.clamp(Duration::from_millis(500), POLL));
    let mut told: Option<String> = None;
    loop {
        tokio::time::sleep(poll).await;
        let Ok(rows) = super::snapshot::psql(cluster, target, "postgres", &wait_sql(tag)).await
        else {
            continue;
        };
        let Some(wait) = rows.lines().find_map(parse) else {
            told = None;
            continue;
        };
        if told.as_deref() != Some(wait.blocker.as_str()) {
            crate::note!(
                "waiting for a lock held by {} ({}s so far{})",
                wait.blocker,
                wait.seconds,
                match limit {
                    Some(l) => format!(
                        "; giving up after --lock-timeout {}",
                        crate::migration::engine::format_duration(l)
                    ),
                    None => "; --lock-timeout bounds the wait".into(),
                }
            );
            told = Some(wait.blocker.clone());
        }
        let Some(limit) = limit else { continue };
        if Duration::from_secs(wait.seconds) < limit {
            continue;
        }
        // Recorded before the cancel: the transfer fails as soon as the cancel lands, and this
        // watch is dropped with it, perhaps before the cancel's own answer arrives.
        let reason = format!(
            "gave up after waiting {} (--lock-timeout) for a lock held by {}",
            crate::migration::engine::format_duration(limit),
            wait.blocker
        );
        if let Ok(mut g) = waits.gave_up.lock() {
            *g = Some(reason);
        }
        let cancelled = super::snapshot::psql(cluster, target, "postgres", &cancel_sql(tag, limit))
            .await
            .map(|n| n.trim() != "0");
        if matches!(cancelled, Ok(false)) {
            // The lock came in the meantime: nothing was cancelled.
            if let Ok(mut g) = waits.gave_up.lock() {
                *g = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_names_its_blocker() {
        let w = parse("4|1234|test-lock|idle in transaction|select a|b from t").unwrap();
        assert_eq!(w.seconds, 4);
        assert_eq!(
            w.blocker,
            "pid 1234 (test-lock, idle in transaction: select a|b from t)"
        );
        assert_eq!(parse(""), None);
        assert!(wait_sql("kubectl-pg-1-'x").contains("'kubectl-pg-1-''x'"));
        assert!(cancel_sql("t", Duration::from_millis(1500)).contains("secs => 1.5"));
    }
}
