//! Windows desktop support over Win32 (`windows-sys`, and the `windows` crate for the COM
//! interfaces of DXGI): screen capture (DXGI Desktop Duplication with a GDI fallback chosen
//! at run time, see [`capture`]; `GURUCONNECT_CAPTURE=auto|gdi|dxgi`), `SendInput`,
//! Win32 consent, chat and session indicator windows, clipboard text (`arboard`), and
//! identity and inventory from the registry, SMBIOS and `sysinfo`.
//!
//! # What is verified, and where
//!
//! This code is cross-built on Debian (`scripts/windows/build-agent.sh`) and its tests run
//! under Wine 8.0 on Xvfb (`scripts/windows/test.sh`). Wine implements the Win32 calls
//! used here on top of X11, so the following are exercised there:
//!
//! - monitors (`EnumDisplayMonitors`), GDI capture (`BitBlt` into a DIB section) and the
//!   cursor position and shape (`GetCursorInfo`, `GetIconInfo`, `GetDIBits`);
//! - the capture path's run-time choice: DXGI Desktop Duplication cannot be set up under
//!   Wine (the output is found and the Direct3D device created, then `DuplicateOutput`
//!   returns `E_NOTIMPL`), so `auto` logs why (the failed step and its `HRESULT`) and
//!   captures with GDI, and forcing `dxgi` is a clear `Unsupported` error;
//! - `SendInput`: absolute mouse moves over the virtual desktop, buttons, wheel, keys by
//!   scancode, Unicode text;
//! - the consent prompt, the chat window and the session indicator (real Win32 windows and
//!   controls, clicked and typed into with xdotool), the clipboard, `LockWorkStation`'s
//!   absence of effect;
//! - identity and inventory (what Wine reports: its registry, SMBIOS synthesised from the
//!   host's DMI, its Windows version).
//!
//! UNVERIFIED on real Windows (Wine cannot exercise them; treat them as untested code):
//!
//! - DXGI Desktop Duplication ([`dxgi`]): implemented but never run (Wine does not
//!   implement `DuplicateOutput`): matching outputs to monitors, acquiring frames, the
//!   staging copy and `Map`, returning the previous image on `DXGI_ERROR_WAIT_TIMEOUT`,
//!   re-creating a duplication after `DXGI_ERROR_ACCESS_LOST` and the fall back to GDI
//!   (logged at warn) when it keeps failing. Where it is unavailable capture uses GDI
//!   (`backend()` is `"gdi"`), which is slower on large or high-refresh desktops and cannot
//!   see hardware-overlay content.
//! - `SendSAS` (Ctrl+Alt+Del): loaded dynamically from `sas.dll`, which Wine lacks; it only
//!   works for a service (session 0, LocalSystem) with the `SoftwareSASGeneration` policy.
//!   Elsewhere [`crate::platform::Injector::special`] returns a clear `Unsupported` error.
//! - The secure desktop (UAC prompts, the logon and lock screens): capture and input follow
//!   the input desktop with `OpenInputDesktop`/`SetThreadDesktop` when `BitBlt` fails, which
//!   needs the agent to run as LocalSystem in the user's session; that switch is untested.
//! - Session 0: a service has no interactive desktop. [`WindowsDesktop::check`] reports
//!   that; the `GuruConnectAgent` service ([`service`]) therefore only supervises, and runs
//!   the agent in the console session. Wine has one session and ignores the token, so that
//!   move is unverified (see [`service`]).
//! - Keys at rest ([`keystore`]): DPAPI with machine scope and a private DACL; Wine's DPAPI
//!   and its (unenforced) ACLs are not Windows'.
//! - Per-monitor DPI awareness (set at start-up) and mixed-DPI multi-monitor layouts.

#![allow(unsafe_code)]

pub mod capture;
pub mod chat;
pub mod consent;
pub mod dxgi;
pub mod indicator;
pub mod input;
pub mod inventory;
pub mod keystore;
pub mod machine_uid;
pub mod service;
pub mod setup;
mod window;

use guruconnect_proto::AgentStatus;
use windows_sys::Win32::Foundation::GetLastError;
use windows_sys::Win32::System::RemoteDesktop::ProcessIdToSessionId;
use windows_sys::Win32::System::StationsAndDesktops::{
    CloseDesktop, DESKTOP_READOBJECTS, OpenInputDesktop,
};
use windows_sys::Win32::System::Threading::GetCurrentProcessId;

use super::{
    Capturer, ChatWindow, ClipboardAccess, ConsentPrompt, Desktop, Identity, Injector,
    PlatformError, PlatformResult, SessionIndicator,
};

/// The desktop this module uses, named for people (`PlatformError::NoDisplay`).
pub const DESKTOP_NAME: &str = r"interactive desktop WinSta0\Default";

/// A NUL-terminated UTF-16 copy of `text` for Win32 `W` functions.
pub fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(std::iter::once(0)).collect()
}

/// The text of a UTF-16 buffer up to its first NUL (lossy).
pub fn from_wide(buffer: &[u16]) -> String {
    let end = buffer.iter().position(|&c| c == 0).unwrap_or(buffer.len());
    String::from_utf16_lossy(&buffer[..end])
}

/// The calling thread's last Win32 error, as text for error messages.
pub fn last_error() -> String {
    // SAFETY: GetLastError only reads the calling thread's error slot.
    let code = unsafe { GetLastError() };
    format!(
        "{} (Win32 error {code})",
        std::io::Error::from_raw_os_error(code as i32)
    )
}

/// A `REG_SZ` value under `HKEY_LOCAL_MACHINE` (64-bit view), trimmed; `None` when it is
/// missing, empty or not a string.
pub fn hklm_string(subkey: &str, value: &str) -> Option<String> {
    use windows_sys::Win32::System::Registry::{
        HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RRF_SUBKEY_WOW6464KEY, RegGetValueW,
    };
    let subkey = wide(subkey);
    let value = wide(value);
    let flags = RRF_RT_REG_SZ | RRF_SUBKEY_WOW6464KEY;
    let mut size = 0u32;
    // SAFETY: NUL-terminated names; a null buffer asks for the size in bytes.
    let status = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            subkey.as_ptr(),
            value.as_ptr(),
            flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            &mut size,
        )
    };
    if status != 0 || size == 0 || size > 64 * 1024 {
        return None;
    }
    let mut buf = vec![0u16; (size as usize).div_ceil(2) + 1];
    let mut size = u32::try_from(buf.len() * 2).ok()?;
    // SAFETY: `buf` has `size` bytes; RegGetValueW NUL-terminates REG_SZ data.
    let status = unsafe {
        RegGetValueW(
            HKEY_LOCAL_MACHINE,
            subkey.as_ptr(),
            value.as_ptr(),
            flags,
            std::ptr::null_mut(),
            buf.as_mut_ptr().cast(),
            &mut size,
        )
    };
    if status != 0 {
        return None;
    }
    let text = from_wide(&buf);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The Terminal Services session this process runs in (0 for services).
pub fn session_id() -> Option<u32> {
    let mut session = 0u32;
    // SAFETY: `session` is a valid out pointer for the duration of the call.
    let ok = unsafe { ProcessIdToSessionId(GetCurrentProcessId(), &mut session) };
    (ok != 0).then_some(session)
}

/// Makes the process per-monitor DPI aware, so GDI coordinates are physical pixels (capture
/// and input agree on every monitor). Idempotent; a failure only means it was already set
/// (by a manifest or an earlier call) or the system is older than Windows 10 1703.
pub fn init_dpi_awareness() {
    use windows_sys::Win32::UI::HiDpi::{
        DPI_AWARENESS_CONTEXT_PER_MONITOR_AWARE_V2, SetProcessDpiAwarenessContext,
    };
    use windows_sys::Win32::UI::WindowsAndMessaging::SetProcessDPIAware;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: both calls take no pointers; they only change the process's DPI mode.
        unsafe {
            if SetProcessDpiAwarenessContext(DPI_AWARENESS_CONTEXT_PER_MONITOR_AWARE_V2) == 0 {
                SetProcessDPIAware();
            }
        }
    });
}

/// Checks that the interactive (input) desktop can be opened by this process.
pub fn check_desktop() -> PlatformResult<()> {
    // SAFETY: plain call without pointers; the handle is closed below.
    let desk = unsafe { OpenInputDesktop(0, 0, DESKTOP_READOBJECTS) };
    if desk.is_null() {
        let mut reason = format!(
            "no interactive desktop: OpenInputDesktop failed: {}",
            last_error()
        );
        if session_id() == Some(0) {
            reason.push_str(
                "; the agent runs in session 0 (as a service), which has no user desktop",
            );
        }
        return Err(PlatformError::NoDisplay {
            display: DESKTOP_NAME.into(),
            reason,
        });
    }
    // SAFETY: `desk` is the valid desktop handle opened above, closed once.
    unsafe { CloseDesktop(desk) };
    // A screen DC is what capture needs; make sure one can be had.
    capture::ScreenDc::get().map(|_| ())
}

/// The Windows desktop: the session's factory for everything on the machine.
#[derive(Debug, Default, Clone, Copy)]
pub struct WindowsDesktop;

impl Desktop for WindowsDesktop {
    fn check(&self) -> PlatformResult<()> {
        init_dpi_awareness();
        check_desktop()
    }

    fn capturer(&self) -> PlatformResult<Box<dyn Capturer>> {
        init_dpi_awareness();
        Ok(Box::new(capture::WindowsCapturer::open()?))
    }

    fn injector(&self) -> PlatformResult<Box<dyn Injector>> {
        init_dpi_awareness();
        Ok(Box::new(input::SendInputInjector::open()?))
    }

    fn consent(&self) -> Box<dyn ConsentPrompt> {
        Box::new(consent::WindowsConsent)
    }

    fn clipboard(&self) -> PlatformResult<Box<dyn ClipboardAccess>> {
        Ok(Box::new(crate::platform::clipboard::TextClipboard::open()?))
    }

    fn chat(&self) -> PlatformResult<Box<dyn ChatWindow>> {
        init_dpi_awareness();
        Ok(Box::new(chat::WindowsChat::open()?))
    }

    fn indicator(&self) -> PlatformResult<Box<dyn SessionIndicator>> {
        init_dpi_awareness();
        Ok(Box::new(indicator::WindowsIndicator::open()?))
    }

    fn identity(&self) -> Identity {
        Identity {
            machine_uid: machine_uid::machine_uid(),
            hostname: inventory::hostname(),
            os: "windows",
            os_version: inventory::os_version(),
        }
    }

    fn inventory(&self) -> AgentStatus {
        inventory::collect()
    }

    fn local_user(&self) -> String {
        inventory::local_user()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wide_strings_round_trip() {
        let w = wide("héllo");
        assert_eq!(w.last(), Some(&0));
        assert_eq!(from_wide(&w), "héllo");
        assert_eq!(from_wide(&[0x41, 0, 0x42]), "A");
    }

    #[test]
    fn the_desktop_is_reachable() {
        WindowsDesktop.check().expect("interactive desktop");
    }

    #[test]
    fn identity_is_windows() {
        let id = WindowsDesktop.identity();
        assert_eq!(id.os, "windows");
        assert_eq!(id.machine_uid.len(), 64);
        assert!(!id.hostname.is_empty());
        assert!(id.os_version.starts_with("Windows"), "{}", id.os_version);
    }
}
