//! The session indicator: a topmost borderless `WS_POPUP` titled [`ui::INDICATOR_TITLE`]
//! (the X11 indicator's title, so tests find either with `xdotool search --name`), exactly
//! [`ui::INDICATOR_WIDTH`]×[`ui::INDICATOR_HEIGHT`] (client area = window area), at the top
//! right of the primary monitor: clear of the consent prompt (centre) and the chat window
//! (bottom right).
//!
//! It says that remote support is active and lists who is connected and whether they
//! control or only watch ([`ui::indicator_lines`], one multi-line STATIC), with an
//! "End session" push button at [`ui::END_BUTTON`]; a click on it comes out of
//! [`SessionIndicator::end_clicked`]. It is shown with `SW_SHOWNOACTIVATE` and is
//! `WS_EX_NOACTIVATE`, so appearing never takes the keyboard from whoever is typing, and
//! `WS_EX_TOOLWINDOW`, so it has no taskbar button or Alt+Tab entry. Closing it (Alt+F4) is
//! ignored: the window stays while the session is active, and ending the session is the
//! button's job.
//!
//! The window belongs to the thread that opened it (the session's indicator thread), which
//! calls [`SessionIndicator::end_clicked`] every 25 ms; that pumps the thread's messages
//! without blocking.
//!
//! Verified under Wine on Xvfb only (the module tests, and `e2e_wine` clicks the button
//! with xdotool); UNVERIFIED on real Windows, like the other windows of this platform.

use std::sync::atomic::{AtomicBool, Ordering};

use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    BN_CLICKED, BS_PUSHBUTTON, DestroyWindow, GWLP_USERDATA, GetWindowLongPtrW, HWND_TOPMOST,
    IsWindowVisible, SW_HIDE, SW_SHOWNOACTIVATE, SWP_NOACTIVATE, SWP_NOMOVE, SWP_NOSIZE,
    SetWindowLongPtrW, SetWindowPos, SetWindowTextW, ShowWindow, WM_CLOSE, WM_COMMAND,
    WM_CTLCOLORSTATIC, WM_PAINT, WS_CLIPCHILDREN, WS_EX_NOACTIVATE, WS_EX_TOOLWINDOW,
    WS_EX_TOPMOST, WS_POPUP,
};

use super::window::{self, SS_NOPREFIX};
use super::{last_error, wide};
use crate::platform::{PlatformError, PlatformResult, SessionIndicator, Watcher, ui};

/// The window class.
const CLASS: &str = "GuruConnectIndicator";
/// Control ids.
const ID_TEXT: usize = 3001;
const ID_END: usize = 3002;
/// `SS_LEFTNOWORDWRAP`: one line per `\r\n`, clipped rather than wrapped, so a long name
/// never pushes the list onto the button.
const SS_LEFTNOWORDWRAP: u32 = 0x0c;
/// Longest line shown (bytes); the window clips what does not fit anyway.
const MAX_LINE: usize = 128;

/// The text of the list as the STATIC shows it: [`ui::indicator_lines`] on one line each.
pub fn indicator_text(watchers: &[Watcher]) -> String {
    ui::indicator_lines(watchers)
        .iter()
        .map(|line| window::one_line(line, MAX_LINE))
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// Records a click on "End session" in the flag whose address `open` put in
/// `GWLP_USERDATA`.
///
/// # Safety
/// `hwnd` must be an indicator window: its `GWLP_USERDATA` is null or points at the
/// `AtomicBool` owned by the [`WindowsIndicator`] that owns the window, which frees it only
/// after destroying the window.
unsafe fn record_end(hwnd: HWND) {
    // SAFETY: per the contract.
    unsafe {
        let flag = GetWindowLongPtrW(hwnd, GWLP_USERDATA) as *const AtomicBool;
        if let Some(flag) = flag.as_ref() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

unsafe extern "system" fn indicator_proc(hwnd: HWND, msg: u32, w: WPARAM, l: LPARAM) -> LRESULT {
    match msg {
        WM_COMMAND if (w & 0xffff) == ID_END && ((w >> 16) & 0xffff) as u32 == BN_CLICKED => {
            // SAFETY: this procedure only serves indicator windows.
            unsafe { record_end(hwnd) };
            0
        }
        // Stays while the session is active; "End session" is the way out.
        WM_CLOSE => 0,
        // SAFETY: handling this window's WM_PAINT on its thread.
        WM_PAINT => unsafe { window::paint_frame(hwnd) },
        // SAFETY: `w` is the static control's DC for this message.
        WM_CTLCOLORSTATIC => unsafe { window::static_colours(w as _) },
        // SAFETY: forwarding this procedure's own arguments.
        _ => unsafe { window::default_proc(hwnd, msg, w, l) },
    }
}

/// The Win32 session indicator.
#[derive(Debug)]
pub struct WindowsIndicator {
    hwnd: HWND,
    text: HWND,
    /// Set by the window procedure when "End session" is clicked; a leaked `Box` stored in
    /// the window's `GWLP_USERDATA`, reclaimed in Drop after the window is destroyed.
    ended: *const AtomicBool,
}

// SAFETY: the window handles are plain process-wide values; the window is only driven
// (messages pumped) by `show` and `end_clicked`, which the session calls from the thread
// that opened it. `ended` points at an `AtomicBool` (Sync), owned by this value.
unsafe impl Send for WindowsIndicator {}

impl WindowsIndicator {
    /// Creates the (hidden) window on the calling thread.
    pub fn open() -> PlatformResult<Self> {
        window::register_class(CLASS, Some(indicator_proc))?;
        let (w, h) = (
            i32::from(ui::INDICATOR_WIDTH),
            i32::from(ui::INDICATOR_HEIGHT),
        );
        let primary = super::capture::list_monitors()
            .into_iter()
            .find(|d| d.primary);
        // Top right, 20 px in, as the X11 indicator.
        let (x, y) = primary.map_or((0, 0), |d| {
            (
                (d.x + i32::try_from(d.width).unwrap_or(w) - w - 20).max(d.x),
                d.y + 20,
            )
        });
        let hwnd = window::create_popup(
            CLASS,
            ui::INDICATOR_TITLE,
            WS_EX_TOPMOST | WS_EX_NOACTIVATE | WS_EX_TOOLWINDOW,
            WS_POPUP | WS_CLIPCHILDREN,
            (x, y, w, h),
        )?;
        let ended: *const AtomicBool = Box::into_raw(Box::new(AtomicBool::new(false)));
        // SAFETY: stores the leaked Box in the window; reclaimed in Drop (also on the error
        // path below, where `indicator` is dropped).
        unsafe { SetWindowLongPtrW(hwnd, GWLP_USERDATA, ended as isize) };
        let mut indicator = Self {
            hwnd,
            text: std::ptr::null_mut(),
            ended,
        };
        indicator.build(w)?;
        Ok(indicator)
    }

    fn build(&mut self, w: i32) -> PlatformResult<()> {
        let (bx, by, bw, bh) = ui::END_BUTTON;
        self.text = window::create_child(
            self.hwnd,
            "STATIC",
            &indicator_text(&[]),
            SS_NOPREFIX | SS_LEFTNOWORDWRAP,
            0,
            (12, 10, w - 24, i32::from(by) - 10 - 6),
            ID_TEXT,
        )?;
        window::create_child(
            self.hwnd,
            "BUTTON",
            "End session",
            BS_PUSHBUTTON as u32,
            0,
            (i32::from(bx), i32::from(by), i32::from(bw), i32::from(bh)),
            ID_END,
        )?;
        Ok(())
    }

    /// Whether the window is shown (for tests).
    pub fn visible(&self) -> bool {
        // SAFETY: plain query on this window.
        unsafe { IsWindowVisible(self.hwnd) != 0 }
    }
}

impl SessionIndicator for WindowsIndicator {
    fn show(&mut self, watchers: &[Watcher]) -> PlatformResult<()> {
        let text = wide(&indicator_text(watchers));
        // SAFETY: NUL-terminated text that outlives the call; showing and raising this
        // window without activating it, on its thread.
        let ok = unsafe {
            SetWindowTextW(self.text, text.as_ptr());
            if IsWindowVisible(self.hwnd) == 0 {
                ShowWindow(self.hwnd, SW_SHOWNOACTIVATE);
            }
            SetWindowPos(
                self.hwnd,
                HWND_TOPMOST,
                0,
                0,
                0,
                0,
                SWP_NOMOVE | SWP_NOSIZE | SWP_NOACTIVATE,
            )
        };
        if ok == 0 {
            return Err(PlatformError::Request(format!(
                "showing the session indicator failed: {}",
                last_error()
            )));
        }
        window::pump();
        Ok(())
    }

    fn hide(&mut self) -> PlatformResult<()> {
        // SAFETY: hiding this window, on its thread.
        unsafe { ShowWindow(self.hwnd, SW_HIDE) };
        window::pump();
        Ok(())
    }

    fn end_clicked(&mut self) -> PlatformResult<bool> {
        window::pump();
        // SAFETY: `ended` is the leaked Box, alive until Drop.
        Ok(unsafe { &*self.ended }.swap(false, Ordering::Relaxed))
    }
}

impl Drop for WindowsIndicator {
    fn drop(&mut self) {
        // SAFETY: the window was created by `open`; after DestroyWindow no procedure of it
        // runs again, so the leaked Box can be reclaimed exactly once.
        unsafe {
            DestroyWindow(self.hwnd);
            drop(Box::from_raw(self.ended.cast_mut()));
        }
        window::pump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use windows_sys::Win32::Foundation::RECT;
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        GetClientRect, GetDlgItem, GetWindowRect, GetWindowTextW, PostMessageW, SendMessageW,
    };

    fn watcher(name: &str, control: bool) -> Watcher {
        Watcher {
            name: name.into(),
            control,
        }
    }

    /// The text of a window (the STATIC's content).
    fn text_of(hwnd: HWND) -> String {
        let mut buf = [0u16; 1024];
        // SAFETY: `buf` has room for the given number of UTF-16 units.
        let n = unsafe { GetWindowTextW(hwnd, buf.as_mut_ptr(), buf.len() as i32) };
        String::from_utf16_lossy(&buf[..usize::try_from(n).unwrap_or(0)])
    }

    #[test]
    fn the_text_is_the_shared_lines_on_one_line_each() {
        let text = indicator_text(&[watcher("alice\nbob", true), watcher("carol", false)]);
        let lines: Vec<&str> = text.split("\r\n").collect();
        assert_eq!(lines[0], "Remote support is active on this computer.");
        assert_eq!(
            lines.len(),
            ui::indicator_lines(&[watcher("a", true), watcher("b", false)]).len()
        );
        assert!(lines.iter().all(|l| !l.contains('\n')), "{lines:?}");
        assert!(text.contains("carol is watching"), "{text}");
    }

    #[test]
    fn shows_the_list_at_the_top_right_and_reports_end_session() {
        let mut indicator = WindowsIndicator::open().expect("open");
        assert!(!indicator.visible(), "hidden until shown");
        let (mut window, mut client) = (RECT::default(), RECT::default());
        // SAFETY: valid out pointers for this window.
        unsafe {
            GetWindowRect(indicator.hwnd, &mut window);
            GetClientRect(indicator.hwnd, &mut client);
        }
        assert_eq!(
            (window.right - window.left, window.bottom - window.top),
            (
                i32::from(ui::INDICATOR_WIDTH),
                i32::from(ui::INDICATOR_HEIGHT)
            )
        );
        assert_eq!(
            (client.right, client.bottom),
            (
                i32::from(ui::INDICATOR_WIDTH),
                i32::from(ui::INDICATOR_HEIGHT)
            )
        );
        assert_eq!(window.top, 20);

        let watchers = [watcher("alice", true), watcher("Tom & Jerry", false)];
        indicator.show(&watchers).expect("show");
        assert!(indicator.visible());
        assert_eq!(text_of(indicator.text), indicator_text(&watchers));
        assert!(!indicator.end_clicked().expect("poll"));

        // Closing is ignored; only the button ends the session.
        // SAFETY: WM_CLOSE to this window.
        unsafe { SendMessageW(indicator.hwnd, WM_CLOSE, 0, 0) };
        assert!(indicator.visible());
        assert!(!indicator.end_clicked().expect("poll"));

        const BM_CLICK: u32 = 0x00F5;
        // SAFETY: posting a click to the button of this thread's window.
        unsafe { PostMessageW(GetDlgItem(indicator.hwnd, ID_END as i32), BM_CLICK, 0, 0) };
        assert!(
            indicator.end_clicked().expect("poll"),
            "the click is reported"
        );
        assert!(!indicator.end_clicked().expect("poll"), "once");

        indicator.hide().expect("hide");
        assert!(!indicator.visible());
        indicator.show(&[]).expect("show again");
        assert!(indicator.visible());
        assert!(text_of(indicator.text).contains("No technician is connected"));
    }
}
