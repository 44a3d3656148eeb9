//! Remote terminals: a shell on a pseudo-terminal per `TerminalOpen`, its output sent back
//! as `TerminalOutput` and its end as `TerminalExit`.
//!
//! Each terminal has a reader thread (PTY → relay, paced by the session's bounded outgoing
//! queue, so a fast shell cannot flood the relay) and a writer thread (relay → PTY, so a
//! shell that stops reading never blocks the session loop). Closing a terminal, or ending
//! the session, kills the shell.
//!
//! Who the shell runs as is a policy ([`ShellAccount::decide`]): an agent running as root
//! (the managed service) starts no shell unless `terminal_user` names the account, and an
//! agent running as a user can start a shell only as that user.
//!
//! Linux only for now (portable-pty's ConPTY path is not built for Windows yet).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;

use guruconnect_proto::{self as proto, Payload};
use portable_pty::{ChildKiller, CommandBuilder, MasterPty, PtySize, native_pty_system};
use tokio::sync::mpsc;

/// Terminals one session may have open at once.
pub const MAX_TERMINALS: usize = 4;
/// Largest output chunk per message.
const OUTPUT_CHUNK: usize = 16 * 1024;
/// Columns and rows accepted (xterm's own limits are larger; these keep a PTY sane).
const MAX_COLS: u32 = 1000;
const MAX_ROWS: u32 = 500;
/// The exit code reported when the shell did not exit by itself or never started.
const NO_EXIT_CODE: i32 = -1;

/// The account a shell runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShellAccount {
    /// The account the agent runs as, with its login shell.
    Current,
    /// Another account, through `runuser -l` (the agent runs as root).
    User(String),
}

impl ShellAccount {
    /// The policy: `configured` is `terminal_user` from the configuration (or
    /// `--terminal-user`), `running_as` the agent's own account and whether it is root.
    pub fn decide(
        configured: Option<&str>,
        running_as: &str,
        is_root: bool,
    ) -> Result<ShellAccount, String> {
        match (configured, is_root) {
            (None, true) => Err(
                "the terminal is off on this machine: the agent runs as root \
                 and no terminal_user is configured (agent.toml: terminal_user = \"name\")"
                    .into(),
            ),
            (None, false) => Ok(ShellAccount::Current),
            (Some(user), _) if !valid_user_name(user) => Err(format!(
                "terminal_user {user:?} is not a valid account name"
            )),
            (Some(user), _) if user == running_as => Ok(ShellAccount::Current),
            (Some(user), true) => Ok(ShellAccount::User(user.to_owned())),
            (Some(user), false) => Err(format!(
                "the agent runs as {running_as}, not root, so it cannot start a shell as {user}"
            )),
        }
    }

    fn command(&self) -> CommandBuilder {
        let mut cmd = match self {
            ShellAccount::Current => CommandBuilder::new_default_prog(),
            ShellAccount::User(user) => {
                let mut cmd = CommandBuilder::new("runuser");
                cmd.args(["-l", user.as_str()]);
                cmd
            }
        };
        cmd.env("TERM", "xterm-256color");
        cmd.env("COLORTERM", "truecolor");
        cmd
    }
}

/// POSIX portable user names, as `useradd` accepts them by default.
fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'$'))
}

/// The agent's own account name and whether it is root.
pub fn current_account() -> (String, bool) {
    let uid = rustix::process::geteuid();
    let name = std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| uid.as_raw().to_string());
    (name, uid.is_root())
}

/// A PTY size from what a viewer sent, or why it is unusable.
fn pty_size(cols: u32, rows: u32) -> Result<PtySize, String> {
    if !(1..=MAX_COLS).contains(&cols) || !(1..=MAX_ROWS).contains(&rows) {
        return Err(format!(
            "a terminal of {cols}×{rows} is out of range (1–{MAX_COLS} columns, 1–{MAX_ROWS} rows)"
        ));
    }
    Ok(PtySize {
        cols: u16::try_from(cols).unwrap_or(u16::MAX),
        rows: u16::try_from(rows).unwrap_or(u16::MAX),
        pixel_width: 0,
        pixel_height: 0,
    })
}

struct Terminal {
    master: Box<dyn MasterPty + Send>,
    input: std_mpsc::Sender<Vec<u8>>,
    killer: Box<dyn ChildKiller + Send + Sync>,
    closed_here: Arc<AtomicBool>,
}

/// The open terminals of one session.
pub struct Terminals {
    account: Result<ShellAccount, String>,
    open: HashMap<u32, Terminal>,
    out: mpsc::Sender<Payload>,
}

fn exit(terminal_id: u32, exit_code: i32, reason: impl Into<String>) -> Payload {
    Payload::TerminalExit(proto::TerminalExit {
        terminal_id,
        exit_code,
        reason: reason.into(),
    })
}

impl Terminals {
    /// Terminals that start shells as `account` (or refuse with its reason) and send what
    /// they print on `out`.
    pub fn new(account: Result<ShellAccount, String>, out: mpsc::Sender<Payload>) -> Self {
        Self {
            account,
            open: HashMap::new(),
            out,
        }
    }

    /// Opens a terminal; the answer (a refusal) comes back as a `TerminalExit`.
    pub fn open(&mut self, open: &proto::TerminalOpen) -> Option<Payload> {
        let id = open.terminal_id;
        if self.open.contains_key(&id) {
            return Some(exit(id, NO_EXIT_CODE, "this terminal is already open"));
        }
        if self.open.len() >= MAX_TERMINALS {
            return Some(exit(
                id,
                NO_EXIT_CODE,
                format!("at most {MAX_TERMINALS} terminals may be open at once"),
            ));
        }
        let account = match &self.account {
            Ok(account) => account.clone(),
            Err(why) => return Some(exit(id, NO_EXIT_CODE, why.clone())),
        };
        match self.start(id, &account, open.cols, open.rows) {
            Ok(terminal) => {
                self.open.insert(id, terminal);
                None
            }
            Err(why) => {
                tracing::warn!(terminal = id, "terminal not started: {why}");
                Some(exit(id, NO_EXIT_CODE, why))
            }
        }
    }

    fn start(
        &self,
        id: u32,
        account: &ShellAccount,
        cols: u32,
        rows: u32,
    ) -> Result<Terminal, String> {
        let size = pty_size(cols, rows)?;
        let pair = native_pty_system()
            .openpty(size)
            .map_err(|e| format!("cannot open a pseudo-terminal: {e}"))?;
        let mut child = pair
            .slave
            .spawn_command(account.command())
            .map_err(|e| format!("cannot start the shell: {e}"))?;
        // Only the shell holds the slave side, so its end reads as end of file here.
        drop(pair.slave);
        let killer = child.clone_killer();
        let mut reader = pair
            .master
            .try_clone_reader()
            .map_err(|e| format!("cannot read the pseudo-terminal: {e}"))?;
        let mut writer = pair
            .master
            .take_writer()
            .map_err(|e| format!("cannot write to the pseudo-terminal: {e}"))?;
        let (input, keys) = std_mpsc::channel::<Vec<u8>>();
        let closed_here = Arc::new(AtomicBool::new(false));

        let out = self.out.clone();
        let closed = closed_here.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("terminal-{id}-out"))
            .spawn(move || {
                let mut buf = vec![0u8; OUTPUT_CHUNK];
                // Linux reports the shell's end as EIO on the master side.
                while let Ok(n @ 1..) = reader.read(&mut buf) {
                    let chunk = Payload::TerminalOutput(proto::TerminalOutput {
                        terminal_id: id,
                        data: buf[..n].to_vec(),
                    });
                    if out.blocking_send(chunk).is_err() {
                        return; // the session is over
                    }
                }
                let code = child.wait().ok().map_or(NO_EXIT_CODE, |s| {
                    i32::try_from(s.exit_code()).unwrap_or(NO_EXIT_CODE)
                });
                let reason = if closed.load(Ordering::Relaxed) {
                    "closed by the technician".to_owned()
                } else {
                    format!("the shell exited with code {code}")
                };
                let _ = out.blocking_send(exit(id, code, reason));
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start a thread: {e}"));
        }
        let spawned = std::thread::Builder::new()
            .name(format!("terminal-{id}-in"))
            .spawn(move || {
                while let Ok(data) = keys.recv() {
                    if writer
                        .write_all(&data)
                        .and_then(|()| writer.flush())
                        .is_err()
                    {
                        return;
                    }
                }
            });
        if let Err(e) = spawned {
            return Err(format!("cannot start a thread: {e}"));
        }
        tracing::info!(terminal = id, ?account, cols, rows, "terminal opened");
        Ok(Terminal {
            master: pair.master,
            input,
            killer,
            closed_here,
        })
    }

    /// Passes keystrokes to a terminal's shell.
    pub fn input(&self, input: proto::TerminalInput) {
        if let Some(t) = self.open.get(&input.terminal_id) {
            let _ = t.input.send(input.data);
        }
    }

    /// Resizes a terminal (the shell gets SIGWINCH).
    pub fn resize(&self, resize: &proto::TerminalResize) {
        if let (Some(t), Ok(size)) = (
            self.open.get(&resize.terminal_id),
            pty_size(resize.cols, resize.rows),
        ) && let Err(e) = t.master.resize(size)
        {
            tracing::warn!(terminal = resize.terminal_id, "resize failed: {e}");
        }
    }

    /// Kills a terminal's shell; its `TerminalExit` follows from the reader thread.
    pub fn close(&mut self, terminal_id: u32) {
        if let Some(mut t) = self.open.remove(&terminal_id) {
            t.closed_here.store(true, Ordering::Relaxed);
            let _ = t.killer.kill();
        }
    }

    /// Forgets a terminal whose shell ended (its `TerminalExit` is on its way).
    pub fn ended(&mut self, terminal_id: u32) {
        self.open.remove(&terminal_id);
    }

    /// Number of open terminals.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    /// Whether no terminal is open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

impl Drop for Terminals {
    fn drop(&mut self) {
        for (_, mut t) in self.open.drain() {
            t.closed_here.store(true, Ordering::Relaxed);
            let _ = t.killer.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_needs_a_configured_account_and_users_only_get_their_own() {
        assert!(ShellAccount::decide(None, "root", true).is_err());
        assert_eq!(
            ShellAccount::decide(Some("root"), "root", true),
            Ok(ShellAccount::Current)
        );
        assert_eq!(
            ShellAccount::decide(Some("support"), "root", true),
            Ok(ShellAccount::User("support".into()))
        );
        assert_eq!(
            ShellAccount::decide(None, "alice", false),
            Ok(ShellAccount::Current)
        );
        assert_eq!(
            ShellAccount::decide(Some("alice"), "alice", false),
            Ok(ShellAccount::Current)
        );
        let refused = ShellAccount::decide(Some("root"), "alice", false).expect_err("refused");
        assert!(
            refused.contains("cannot start a shell as root"),
            "{refused}"
        );
        for bad in ["", "-rf", "a b", "x;reboot", "ü"] {
            assert!(
                ShellAccount::decide(Some(bad), "root", true).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn sizes_out_of_range_are_refused() {
        assert!(pty_size(80, 24).is_ok());
        assert!(pty_size(0, 24).is_err());
        assert!(pty_size(80, 0).is_err());
        assert!(pty_size(100_000, 24).is_err());
    }

    fn recv_until(
        rx: &mut mpsc::Receiver<Payload>,
        mut done: impl FnMut(&Payload, &str) -> bool,
    ) -> (String, Option<proto::TerminalExit>) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut text = String::new();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out; got {text:?}"
            );
            match rx.try_recv() {
                Ok(p) => {
                    let stop = {
                        if let Payload::TerminalOutput(o) = &p {
                            text.push_str(&String::from_utf8_lossy(&o.data));
                        }
                        done(&p, &text)
                    };
                    if let Payload::TerminalExit(e) = p {
                        return (text, Some(e));
                    }
                    if stop {
                        return (text, None);
                    }
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    #[test]
    fn a_shell_echoes_resizes_and_reports_its_exit_code() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut terminals = Terminals::new(Ok(ShellAccount::Current), tx);
        let open = proto::TerminalOpen {
            terminal_id: 7,
            cols: 100,
            rows: 30,
        };
        assert_eq!(terminals.open(&open), None);
        assert!(matches!(
            terminals.open(&open),
            Some(Payload::TerminalExit(_))
        ));
        terminals.input(proto::TerminalInput {
            terminal_id: 7,
            data: b"stty size; echo gc-$((6*7))\n".to_vec(),
        });
        let (text, _) = recv_until(&mut rx, |_, t| t.contains("gc-42"));
        assert!(text.contains("30 100"), "{text:?}");
        terminals.resize(&proto::TerminalResize {
            terminal_id: 7,
            cols: 120,
            rows: 40,
        });
        terminals.input(proto::TerminalInput {
            terminal_id: 7,
            data: b"stty size; exit 3\n".to_vec(),
        });
        let (text, exit) = recv_until(&mut rx, |_, _| false);
        assert!(text.contains("40 120"), "{text:?}");
        let exit = exit.expect("an exit");
        assert_eq!((exit.terminal_id, exit.exit_code), (7, 3), "{exit:?}");
        terminals.ended(7);
        assert!(terminals.is_empty());
    }

    #[test]
    fn closing_kills_the_shell_and_says_so() {
        let (tx, mut rx) = mpsc::channel(4);
        let mut terminals = Terminals::new(Ok(ShellAccount::Current), tx);
        let open = proto::TerminalOpen {
            terminal_id: 1,
            cols: 80,
            rows: 24,
        };
        assert_eq!(terminals.open(&open), None);
        terminals.input(proto::TerminalInput {
            terminal_id: 1,
            data: b"echo ready; sleep 600\n".to_vec(),
        });
        recv_until(&mut rx, |_, t| t.contains("ready"));
        terminals.close(1);
        let (_, exit) = recv_until(&mut rx, |_, _| false);
        let exit = exit.expect("an exit");
        assert_eq!(exit.reason, "closed by the technician", "{exit:?}");
    }

    #[test]
    fn a_refused_account_is_the_answer_to_every_open() {
        let (tx, _rx) = mpsc::channel(4);
        let why = ShellAccount::decide(None, "root", true).expect_err("refused");
        let mut terminals = Terminals::new(Err(why.clone()), tx);
        let answer = terminals.open(&proto::TerminalOpen {
            terminal_id: 2,
            cols: 80,
            rows: 24,
        });
        let Some(Payload::TerminalExit(exit)) = answer else {
            panic!("{answer:?}")
        };
        assert_eq!((exit.exit_code, exit.reason), (-1, why));
        assert!(terminals.is_empty());
    }
}
