//! The GuruConnect endpoint agent.
//!
//! It dials the relay's `/ws/agent` (with a support code, or with the machine's per-agent
//! key in managed mode), says `AgentHello`, asks the person at the machine for consent in
//! attended sessions, then streams the screen and injects the technicians' input.
//!
//! Layout:
//!
//! - `main.rs`: the command line (`--server/--code` support mode, `run`, `install`,
//!   `uninstall`) and the reconnect policies of the two modes;
//! - [`session`]: one connection from hello to end: the relay protocol loop plus the
//!   capture, input, clipboard and chat threads;
//! - [`encoding`]: the codec negotiation glue over `guruconnect-codec`;
//! - [`config`]: managed-mode configuration and the key file (owner-only permissions);
//! - [`enroll`]: zero-touch enrollment and the managed agent's credential;
//! - [`install`]: the systemd unit;
//! - [`backoff`]: exponential backoff with jitter;
//! - [`platform`]: the OS layer behind small traits ([`platform::Capturer`],
//!   [`platform::Injector`], [`platform::ConsentPrompt`], [`platform::ClipboardAccess`],
//!   [`platform::ChatWindow`]), with [`platform::linux`] as the one implementation.
//!
//! Platform status: Linux/X11 works and is verified end to end by `tests/e2e_x11.rs`
//! (Xvfb, the in-process relay, real consent clicks with xdotool, lossless pixels, H.264
//! closeness, keyboard and mouse arriving in an X client, a technician's chat message opening
//! the chat window and the reply typed there reaching the viewer). Wayland, Windows and
//! macOS are not implemented. Enrollment and trust-on-first-use key provisioning are verified by
//! `tests/enroll.rs`; self-update is not implemented.
//!
//! `unsafe` is denied crate-wide; the MIT-SHM mapping in
//! [`platform::linux::capture`] is the one exception.

#![deny(unsafe_code)]

pub mod backoff;
pub mod config;
pub mod encoding;
pub mod enroll;
pub mod install;
pub mod platform;
pub mod session;
