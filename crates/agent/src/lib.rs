//! The GuruConnect endpoint agent.
//!
//! It dials the relay's `/ws/agent` (with a support code, or with the machine's per-agent
//! key in managed mode), says `AgentHello`, asks the person at the machine for consent in
//! attended sessions, then streams the screen and injects the technicians' input.
//!
//! Layout:
//!
//! - `main.rs`: the command line (`--server/--code` support mode, `run`, `install`,
//!   `uninstall`, and on Windows `configure` and `service`) and the reconnect policies of
//!   the two modes;
//! - [`session`]: one connection from hello to end: the relay protocol loop
//!   (`session/mod.rs`) plus the capture, input, clipboard and chat threads
//!   (`session/{capture,input,clipboard,chat}.rs`), platform-neutral;
//! - [`encoding`]: the codec negotiation glue over `guruconnect-codec`;
//! - [`config`]: managed-mode configuration and the key file (owner-only permissions);
//! - [`enroll`]: zero-touch enrollment and the managed agent's credential;
//! - `install`: the systemd unit (Linux); on Windows `platform::windows::{service, setup,
//!   keystore}`: the GuruConnectAgent service, install/configure, DPAPI-protected keys;
//! - [`update`]: the managed agent's signed self-update (check, verify, download, self-test,
//!   swap, restart, confirm or roll back), and [`version`]: the agent's version, kept in a
//!   byte slot of the binary that can be patched without recompiling;
//! - [`backoff`]: exponential backoff with jitter;
//! - [`platform`]: the OS layer behind one seam, [`platform::Desktop`], a factory for small
//!   traits ([`platform::Capturer`], [`platform::Injector`], [`platform::ConsentPrompt`],
//!   [`platform::ClipboardAccess`], [`platform::ChatWindow`]) plus identity and inventory;
//!   `platform::linux` (X11) and `platform::windows` (Win32) implement it, and
//!   [`platform::native`] picks the one this build is for.
//!
//! Platform status: Linux/X11 works and is verified end to end by `tests/e2e_x11.rs`
//! (Xvfb, the in-process relay, real consent clicks with xdotool, lossless pixels, H.264
//! closeness, keyboard and mouse arriving in an X client, a technician's chat message opening
//! the chat window and the reply typed there reaching the viewer). Windows is cross-built
//! and exercised under Wine on Xvfb by `tests/e2e_wine.rs` (GDI capture, `SendInput`,
//! consent, clipboard, chat, enrollment, reconnect) and, installed by the MSI as a service,
//! by `tests/e2e_msi.rs`; DXGI, `SendSAS`, the secure desktop, session 0 isolation and the
//! hand-off to the console session are unverified on real Windows. Wayland and macOS
//! are not implemented. Self-update works on Linux and is verified end to end by
//! `tests/update.rs`; on Windows it is built but unverified (see [`update`]).
//!
//! `unsafe` is denied crate-wide; the MIT-SHM mapping in `platform::linux::capture` and
//! the Win32 calls in `platform::windows` are the exceptions.

#![deny(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod encoding;
pub mod enroll;
#[cfg(target_os = "linux")]
pub mod install;
pub mod platform;
pub mod session;
pub mod update;
pub mod version;
