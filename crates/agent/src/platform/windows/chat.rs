//! The chat window: a topmost borderless `WS_POPUP` titled [`ui::CHAT_TITLE`], exactly
//! [`ui::CHAT_WIDTH`]×[`ui::CHAT_HEIGHT`] (client area = window area), at the bottom right of
//! the primary monitor.
//!
//! It has a read-only multi-line EDIT with the last [`MAX_HISTORY`] messages as
//! `from: text` lines, a "Hide" button, and a one-line EDIT at [`ui::REPLY_FIELD`]. The reply
//! field is subclassed: Return sends its text (it comes out of [`ChatWindow::replies`]),
//! Escape clears it. "Hide" or closing (Alt+F4) only hides the window; the next message
//! shows it again. It is shown with `SW_SHOWNOACTIVATE`, so an incoming message does not
//! take the keyboard from whoever is typing; clicking the window activates it and puts the
//! focus in the reply field.
//!
//! The window belongs to the thread that opened it: the session calls
//! [`ChatWindow::replies`] from that thread every 25 ms, which pumps the thread's messages.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
use windows_sys::Win32::UI::Controls::{EM_LIMITTEXT, EM_SCROLLCARET, EM_SETSEL};
use windows_sys::Win32::UI::Input::KeyboardAndMouse::{SetFocus, VK_ESCAPE, VK_RETURN};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    BN_CLICKED, BS_PUSHBUTTON, CallWindowProcW, DestroyWindow, ES_AUTOHSCROLL, ES_AUTOVSCROLL,
    ES_MULTILINE, ES_READONLY, GWLP_USERDATA, GWLP_WNDPROC, GetDlgItem, GetParent,
    GetWindowLongPtrW, GetWindowTextLengthW, GetWindowTextW, HWND_TOPMOST, IsWindowVisible,
    SW_HIDE, SW_SHOWNOACTIVATE, SWP_NOACTIVATE, SWP_NOMOVE, SWP_NOSIZE, SetWindowLongPtrW,
    SetWindowPos, SetWindowTextW, ShowWindow, WA_INACTIVE, WM_ACTIVATE, WM_CHAR, WM_CLOSE,
    WM_COMMAND, WM_CTLCOLORSTATIC, WM_KEYDOWN, WM_PAINT, WNDPROC, WS_CLIPCHILDREN,
    WS_EX_CLIENTEDGE, WS_EX_TOPMOST, WS_POPUP, WS_TABSTOP, WS_VSCROLL,
};

use super::wide;
use super::window::{self, SS_NOPREFIX};
use crate::platform::{ChatWindow, PlatformError, PlatformResult, ui};

/// Messages kept for display.
pub const MAX_HISTORY: usize = 50;
/// The window class.
const CLASS: &str = "GuruConnectChat";
/// Control ids.
const ID_HISTORY: usize = 2001;
const ID_REPLY: usize = 2002;
const ID_HIDE: usize = 2003;

/// Replies typed since the last `replies()`, shared with the window procedures through the
/// main window's `GWLP_USERDATA` (an `Arc` leaked there while the window lives).
type Pending = Mutex<Vec<String>>;

/// One history line: `from: text`, on one line, bounded.
pub fn history_line(from: &str, text: &str) -> String {
    let from = window::one_line(from.trim(), 64);
    let from = if from.is_empty() {
        "Technician".to_owned()
    } else {
        from
    };
    format!("{from}: {}", window::one_line(text, ui::MAX_CHAT_TEXT))
}

/// A typed reply as it is sent: trimmed, bounded, `None` when empty.
pub fn clean_reply(text: &str) -> Option<String> {
    let text = ui::truncate(text.trim(), ui::MAX_CHAT_TEXT).trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// The text of a window (an EDIT's content).
fn window_text(hwnd: HWND) -> String {
    // SAFETY: `hwnd` is a window of this process; the buffer has room for the text and NUL.
    unsafe {
        let len = usize::try_from(GetWindowTextLengthW(hwnd)).unwrap_or(0);
        let mut buf = vec![0u16; len + 1];
        let n = GetWindowTextW(
            hwnd,
            buf.as_mut_ptr(),
            i32::try_from(buf.len()).unwrap_or(0),
        );
        buf.truncate(usize::try_from(n).unwrap_or(0));
        String::from_utf16_lossy(&buf)
    }
}

fn set_text(hwnd: HWND, text: &str) {
    let text = wide(text);
    // SAFETY: NUL-terminated text that outlives the call.
    unsafe { SetWindowTextW(hwnd, text.as_ptr()) };
}

/// The reply field's subclass procedure: Return sends, Escape clears.
unsafe extern "system" fn reply_proc(hwnd: HWND, msg: u32, w: WPARAM, l: LPARAM) -> LRESULT {
    match msg {
        WM_KEYDOWN if w == usize::from(VK_RETURN) => {
            let text = window_text(hwnd);
            set_text(hwnd, "");
            if let Some(reply) = clean_reply(&text) {
                // SAFETY: the parent's GWLP_USERDATA holds the `Arc<Pending>` leaked by
                // `WindowsChat::open` until after the window is destroyed.
                let pending =
                    unsafe { GetWindowLongPtrW(GetParent(hwnd), GWLP_USERDATA) } as *const Pending;
                if !pending.is_null() {
                    // SAFETY: see above; the pointee is alive while the window exists.
                    let pending = unsafe { &*pending };
                    if let Ok(mut p) = pending.lock() {
                        p.push(reply);
                    }
                }
            }
            0
        }
        WM_KEYDOWN if w == usize::from(VK_ESCAPE) => {
            set_text(hwnd, "");
            0
        }
        // The characters of Return and Escape would only beep.
        WM_CHAR if w == 0x0d || w == 0x1b => 0,
        _ => {
            // SAFETY: GWLP_USERDATA of the reply field holds its original window procedure,
            // stored by `WindowsChat::open` before the subclass was installed.
            unsafe {
                let original: WNDPROC =
                    std::mem::transmute::<isize, WNDPROC>(GetWindowLongPtrW(hwnd, GWLP_USERDATA));
                CallWindowProcW(original, hwnd, msg, w, l)
            }
        }
    }
}

unsafe extern "system" fn chat_proc(hwnd: HWND, msg: u32, w: WPARAM, l: LPARAM) -> LRESULT {
    match msg {
        WM_COMMAND if (w & 0xffff) == ID_HIDE && ((w >> 16) & 0xffff) as u32 == BN_CLICKED => {
            // SAFETY: hiding this window, on its thread.
            unsafe { ShowWindow(hwnd, SW_HIDE) };
            0
        }
        WM_CLOSE => {
            // Closing only hides the window until the next message.
            // SAFETY: as above.
            unsafe { ShowWindow(hwnd, SW_HIDE) };
            0
        }
        WM_ACTIVATE => {
            if (w & 0xffff) as u32 != WA_INACTIVE {
                // SAFETY: the reply field is a child of this window.
                unsafe { SetFocus(GetDlgItem(hwnd, ID_REPLY as i32)) };
            }
            0
        }
        // SAFETY: handling this window's WM_PAINT on its thread.
        WM_PAINT => unsafe { window::paint_frame(hwnd) },
        // SAFETY: `w` is the control's DC for this message.
        WM_CTLCOLORSTATIC => unsafe { window::static_colours(w as _) },
        // SAFETY: forwarding this procedure's own arguments.
        _ => unsafe { window::default_proc(hwnd, msg, w, l) },
    }
}

/// The Win32 chat window.
pub struct WindowsChat {
    hwnd: HWND,
    history_edit: HWND,
    reply_edit: HWND,
    pending: *const Pending,
    history: VecDeque<String>,
}

// SAFETY: the window handles are plain process-wide values; the window is only driven
// (messages pumped) by `replies`, which the session calls from the thread that opened it.
// `pending` points at a `Mutex` (Sync) owned through a leaked `Arc`, released in Drop.
unsafe impl Send for WindowsChat {}

impl std::fmt::Debug for WindowsChat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the content: chat text stays out of logs.
        f.debug_struct("WindowsChat")
            .field("hwnd", &self.hwnd)
            .field("messages", &self.history.len())
            .finish_non_exhaustive()
    }
}

impl WindowsChat {
    /// Creates the (hidden) window on the calling thread.
    pub fn open() -> PlatformResult<Self> {
        window::register_class(CLASS, Some(chat_proc))?;
        let (w, h) = (i32::from(ui::CHAT_WIDTH), i32::from(ui::CHAT_HEIGHT));
        let primary = super::capture::list_monitors()
            .into_iter()
            .find(|d| d.primary);
        // Bottom right, clear of the centre where the consent prompt appears.
        let (x, y) = primary.map_or((0, 0), |d| {
            (
                (d.x + i32::try_from(d.width).unwrap_or(w) - w - 20).max(d.x),
                (d.y + i32::try_from(d.height).unwrap_or(h) - h - 40).max(d.y),
            )
        });
        let hwnd = window::create_popup(
            CLASS,
            ui::CHAT_TITLE,
            WS_EX_TOPMOST,
            WS_POPUP | WS_CLIPCHILDREN,
            (x, y, w, h),
        )?;
        let pending: *const Pending = Arc::into_raw(Arc::new(Mutex::new(Vec::new())));
        // SAFETY: stores the leaked Arc in the window; reclaimed in Drop (or below).
        unsafe { SetWindowLongPtrW(hwnd, GWLP_USERDATA, pending as isize) };
        let mut chat = Self {
            hwnd,
            history_edit: std::ptr::null_mut(),
            reply_edit: std::ptr::null_mut(),
            pending,
            history: VecDeque::new(),
        };
        // On error, `chat` is dropped, which destroys the window and frees `pending`.
        chat.build(w)?;
        Ok(chat)
    }

    fn build(&mut self, w: i32) -> PlatformResult<()> {
        let (fx, fy, fw, fh) = ui::REPLY_FIELD;
        let (fx, fy, fw, fh) = (i32::from(fx), i32::from(fy), i32::from(fw), i32::from(fh));
        window::create_child(
            self.hwnd,
            "STATIC",
            ui::CHAT_TITLE,
            SS_NOPREFIX,
            0,
            (10, 10, 300, 18),
            0,
        )?;
        window::create_child(
            self.hwnd,
            "BUTTON",
            "Hide",
            BS_PUSHBUTTON as u32 | WS_TABSTOP,
            0,
            (w - 80, 6, 70, 24),
            ID_HIDE,
        )?;
        self.history_edit = window::create_child(
            self.hwnd,
            "EDIT",
            "",
            (ES_MULTILINE | ES_READONLY | ES_AUTOVSCROLL) as u32 | WS_VSCROLL,
            WS_EX_CLIENTEDGE,
            (fx, 36, fw, fy - 36 - 8),
            ID_HISTORY,
        )?;
        self.reply_edit = window::create_child(
            self.hwnd,
            "EDIT",
            "",
            ES_AUTOHSCROLL as u32 | WS_TABSTOP,
            WS_EX_CLIENTEDGE,
            (fx, fy, fw, fh),
            ID_REPLY,
        )?;
        // SAFETY: the reply field was just created on this thread. Its original procedure
        // goes into its GWLP_USERDATA before the subclass that reads it is installed.
        unsafe {
            windows_sys::Win32::UI::WindowsAndMessaging::SendMessageW(
                self.reply_edit,
                EM_LIMITTEXT,
                ui::MAX_CHAT_TEXT,
                0,
            );
            let original = GetWindowLongPtrW(self.reply_edit, GWLP_WNDPROC);
            SetWindowLongPtrW(self.reply_edit, GWLP_USERDATA, original);
            SetWindowLongPtrW(
                self.reply_edit,
                GWLP_WNDPROC,
                reply_proc as *const () as isize,
            );
        }
        Ok(())
    }

    fn push(&mut self, line: String) {
        self.history.push_back(line);
        while self.history.len() > MAX_HISTORY {
            self.history.pop_front();
        }
    }

    fn refresh(&self) {
        let text: Vec<&str> = self.history.iter().map(String::as_str).collect();
        set_text(self.history_edit, &text.join("\r\n"));
        // SAFETY: EM_SETSEL/EM_SCROLLCARET on the history EDIT of this window: caret to the
        // end, scrolled into view.
        unsafe {
            use windows_sys::Win32::UI::WindowsAndMessaging::SendMessageW;
            let end = GetWindowTextLengthW(self.history_edit).max(0);
            SendMessageW(self.history_edit, EM_SETSEL, end as usize, end as isize);
            SendMessageW(self.history_edit, EM_SCROLLCARET, 0, 0);
        }
    }

    /// Whether the window is shown (for tests).
    pub fn visible(&self) -> bool {
        // SAFETY: plain query on this window.
        unsafe { IsWindowVisible(self.hwnd) != 0 }
    }

    /// The history as shown (for tests).
    pub fn history_text(&self) -> String {
        window_text(self.history_edit)
    }
}

impl ChatWindow for WindowsChat {
    fn show(&mut self, from: &str, text: &str) -> PlatformResult<()> {
        self.push(history_line(from, text));
        self.refresh();
        // SAFETY: showing and raising this window without activating it.
        let ok = unsafe {
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
                "showing the chat window failed: {}",
                super::last_error()
            )));
        }
        window::pump();
        Ok(())
    }

    fn replies(&mut self) -> PlatformResult<Vec<String>> {
        window::pump();
        // SAFETY: `pending` is the leaked Arc, alive until Drop.
        let replies = match unsafe { &*self.pending }.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => Vec::new(),
        };
        if !replies.is_empty() {
            for reply in &replies {
                self.push(history_line("You", reply));
            }
            self.refresh();
        }
        Ok(replies)
    }
}

impl Drop for WindowsChat {
    fn drop(&mut self) {
        // SAFETY: the window was created by `open`; after DestroyWindow no procedure of it
        // runs again, so the leaked Arc can be reclaimed exactly once.
        unsafe {
            DestroyWindow(self.hwnd);
            drop(Arc::from_raw(self.pending));
        }
        window::pump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use windows_sys::Win32::Foundation::RECT;
    use windows_sys::Win32::UI::WindowsAndMessaging::{GetClientRect, GetWindowRect, SendMessageW};

    #[test]
    fn lines_and_replies_are_cleaned() {
        assert_eq!(history_line(" alice ", "hi\nthere"), "alice: hi there");
        assert_eq!(history_line("", "x"), "Technician: x");
        assert_eq!(clean_reply("  ok \r\n"), Some("ok".into()));
        assert_eq!(clean_reply("   "), None);
        assert_eq!(
            clean_reply(&"é".repeat(5000)).map(|r| r.len()),
            Some(ui::MAX_CHAT_TEXT)
        );
    }

    #[test]
    fn messages_show_the_window_and_return_sends_a_reply() {
        let mut chat = WindowsChat::open().expect("open");
        assert!(!chat.visible(), "hidden until the first message");
        let (mut window, mut client) = (RECT::default(), RECT::default());
        // SAFETY: valid out pointers for this window.
        unsafe {
            GetWindowRect(chat.hwnd, &mut window);
            GetClientRect(chat.hwnd, &mut client);
        }
        assert_eq!(
            (window.right - window.left, window.bottom - window.top),
            (i32::from(ui::CHAT_WIDTH), i32::from(ui::CHAT_HEIGHT))
        );
        assert_eq!(
            (client.right, client.bottom),
            (i32::from(ui::CHAT_WIDTH), i32::from(ui::CHAT_HEIGHT))
        );

        chat.show("alice", "hello").expect("show");
        assert!(chat.visible());
        assert!(chat.history_text().contains("alice: hello"));
        for i in 0..60 {
            chat.show("alice", &format!("m{i}")).expect("show");
        }
        let history = chat.history_text();
        assert_eq!(history.lines().count(), MAX_HISTORY);
        assert!(history.ends_with("alice: m59"));

        // Type into the reply field and press Return (messages to the control itself, as
        // the keyboard would deliver them).
        set_text(chat.reply_edit, "  thanks  ");
        // SAFETY: a key-down message to the reply field of this thread's window.
        unsafe { SendMessageW(chat.reply_edit, WM_KEYDOWN, usize::from(VK_RETURN), 0) };
        assert_eq!(chat.replies().expect("replies"), vec!["thanks".to_owned()]);
        assert!(window_text(chat.reply_edit).is_empty());
        assert!(chat.history_text().ends_with("You: thanks"));
        assert!(chat.replies().expect("replies").is_empty());

        // Closing hides; the next message shows it again.
        // SAFETY: WM_CLOSE to this window.
        unsafe { SendMessageW(chat.hwnd, WM_CLOSE, 0, 0) };
        assert!(!chat.visible());
        chat.show("alice", "back").expect("show");
        assert!(chat.visible());
    }
}
