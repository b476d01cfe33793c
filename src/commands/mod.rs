//! One module per command: each turns its arguments into the domain's options, runs it, and
//! prints the result. Nothing below this folder imports it or `cli`.

pub mod completion;
pub mod dsn;
pub mod dump;
pub mod install;
pub mod logs;
pub mod migrate;
pub mod port_forward;
pub mod psql;
pub mod report;
pub mod restart;
pub mod restore;
pub mod rotate_password;
pub mod status;
pub mod switchover;
pub mod uninstall;
pub mod upgrade;
pub mod user;
pub mod version;
pub mod view;

use std::io::{BufRead, IsTerminal};

use crate::error::Error;

/// Asks `question` on a terminal (y/N on stderr). Off a terminal nothing can answer: the
/// command needs `--yes` (exit 1), so a script never changes something by accident.
pub fn confirm(question: &str, command: &str) -> Result<(), Error> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::InvalidInput {
            message: format!("{command} needs --yes when not run on a terminal"),
            hint: Some(format!("add --yes to confirm: {question}")),
        });
    }
    crate::note_inline!("{question} [y/N] ");
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{command} cancelled: nothing was changed"
        )))
    }
}

/// The requests to stop that this process takes itself, so that a command cleans up and exits
/// with the code a shell gives the signal: Ctrl-C is 130 on both families; on Unix SIGTERM is
/// 143; on Windows Ctrl-Break is 130 (it is the console's other interrupt key) and closing
/// the console window (or a logoff or shutdown) 143, as the nearest to a termination request.
/// While one is installed, Ctrl-C no longer ends the process by itself.
pub(crate) struct Interrupts {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
    #[cfg(windows)]
    ctrl_close: tokio::signal::windows::CtrlClose,
}

impl Interrupts {
    /// Installs the handlers now: a request that arrives before `recv` is kept for it.
    pub(crate) fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                int: signal(SignalKind::interrupt())?,
                term: signal(SignalKind::terminate())?,
            })
        }
        #[cfg(windows)]
        {
            use tokio::signal::windows;
            Ok(Self {
                ctrl_c: windows::ctrl_c()?,
                ctrl_break: windows::ctrl_break()?,
                ctrl_close: windows::ctrl_close()?,
            })
        }
    }

    /// The next request, as its exit code (130 or 143).
    pub(crate) async fn recv(&mut self) -> u8 {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => 130,
            _ = self.term.recv() => 143,
        }
        #[cfg(windows)]
        tokio::select! {
            _ = self.ctrl_c.recv() => 130,
            _ = self.ctrl_break.recv() => 130,
            _ = self.ctrl_close.recv() => 143,
        }
    }
}

/// While the guard lives, Ctrl-C (and Ctrl-Break on Windows) no longer end this process: for a
/// child on the same console that answers them itself (psql sends a cancel request), which we
/// must outlive. SIGTERM still ends us on Unix. The guard must be kept: on Windows a console
/// event nobody listens to any more goes on to the default handler, which exits.
pub(crate) struct CtrlCGuard {
    #[cfg(unix)]
    _int: tokio::signal::unix::Signal,
    #[cfg(windows)]
    _ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    _ctrl_break: tokio::signal::windows::CtrlBreak,
}

pub(crate) fn outlive_ctrl_c() -> std::io::Result<CtrlCGuard> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(CtrlCGuard {
            _int: signal(SignalKind::interrupt())?,
        })
    }
    #[cfg(windows)]
    {
        use tokio::signal::windows;
        Ok(CtrlCGuard {
            _ctrl_c: windows::ctrl_c()?,
            _ctrl_break: windows::ctrl_break()?,
        })
    }
}

/// The first request to stop (see [`Interrupts`]), as the exit code a shell gives it (130,
/// 143): long commands race their work against it and clean up before they exit.
pub(crate) async fn interrupted() -> u8 {
    match Interrupts::install() {
        Ok(mut interrupts) => interrupts.recv().await,
        Err(_) => std::future::pending().await,
    }
}

/// The requests to stop of [`Interrupts`] (SIGINT and SIGTERM on Unix) for a command whose
/// steps must not be cut in half. The handlers are
/// installed by [`Signals::install`]; the first signal ends at once whatever [`Signals::race`]
/// waits on (a wait that changes nothing), and is remembered for the command to act on between
/// its writes ([`Signals::received`]); a write in flight runs to its end under
/// [`Signals::shielded`], which only a second signal ends.
pub(crate) struct Signals {
    received: tokio::sync::watch::Receiver<(Option<u8>, u32)>,
    task: tokio::task::JoinHandle<()>,
}

impl Signals {
    pub(crate) fn install() -> Result<Signals, Error> {
        let mut interrupts = Interrupts::install().map_err(|source| Error::Io {
            context: "cannot install the signal handlers".into(),
            source,
        })?;
        let (tx, received) = tokio::sync::watch::channel((None, 0));
        let task = tokio::spawn(async move {
            loop {
                let code = interrupts.recv().await;
                tx.send_modify(|(first, count)| {
                    first.get_or_insert(code);
                    *count += 1;
                });
            }
        });
        Ok(Signals { received, task })
    }

    /// The exit code of the first signal, if one came.
    pub(crate) fn received(&self) -> Option<u8> {
        self.received.borrow().0
    }

    /// Until `count` signals came: the first one's exit code.
    async fn count(&self, count: u32) -> u8 {
        let mut rx = self.received.clone();
        let first = rx.wait_for(|(_, n)| *n >= count).await.map(|seen| seen.0);
        match first {
            Ok(code) => code.unwrap_or(130),
            Err(_) => std::future::pending().await,
        }
    }

    /// The first signal's exit code, once one came.
    pub(crate) async fn first(&self) -> u8 {
        self.count(1).await
    }

    /// `work`, unless a signal comes (or came) first: then [`Error::Exit`] with its code.
    pub(crate) async fn race<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::select! {
            biased;
            code = self.first() => Err(Error::Exit(code)),
            done = work => done,
        }
    }

    /// `work` to its end whatever one signal says (which it acknowledges on stderr); a second
    /// signal ends it ([`Error::Exit`]), after `say` has told what it leaves.
    pub(crate) async fn shielded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, Error>>,
        say: impl FnOnce(),
    ) -> Result<T, Error> {
        tokio::pin!(work);
        if self.received().is_none() {
            tokio::select! {
                done = &mut work => return done,
                _ = self.first() => crate::note!(
                    "interrupted: finishing the write in flight first (a second signal stops at once)"
                ),
            }
        }
        tokio::select! {
            done = work => done,
            code = self.count(2) => {
                say();
                Err(Error::Exit(code))
            }
        }
    }
}

impl Drop for Signals {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Runs `work` against `signal`: on one, the step in progress stands recorded, `how` (what to
/// run to go on) is said on stderr, and the command exits 130 or 143.
pub(crate) async fn until_signal<T>(
    signal: std::pin::Pin<&mut impl std::future::Future<Output = u8>>,
    work: impl std::future::Future<Output = Result<T, Error>>,
    how: &str,
) -> Result<T, Error> {
    tokio::select! {
        done = work => done,
        code = signal => {
            crate::note!("interrupted: {how}");
            Err(Error::Exit(code))
        }
    }
}
