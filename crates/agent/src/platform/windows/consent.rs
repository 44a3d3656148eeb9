//! The consent prompt for attended sessions: a topmost borderless `WS_POPUP` titled
//! [`ui::CONSENT_TITLE`], exactly [`ui::CONSENT_WIDTH`]×[`ui::CONSENT_HEIGHT`] (client area
//! = window area), centred on the primary monitor, naming the technician, with "Allow" and
//! "Deny" push buttons at [`ui::ALLOW_BUTTON`] and [`ui::DENY_BUTTON`].
//!
//! It fails closed: only "Allow" grants (a click, or Space on the button after the user
//! moved the focus to it: the prompt starts with the focus on "Deny"). "Deny", closing the
//! window (Alt+F4), the timeout (`timeout_seconds`, else [`ui::CONSENT_TIMEOUT`]), `cancel`
//! becoming true (polled every 100 ms), or failing to create the window all deny. The
//! prompt runs its own message loop on the calling thread and destroys the window before
//! it returns. The same window, titled [`ui::TRANSFER_TITLE`], asks about each file
//! transfer in a support-code session (unverified on real Windows; tested under Wine).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use guruconnect_proto::ConsentRequest;
use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
use windows_sys::Win32::UI::Input::KeyboardAndMouse::SetFocus;
use windows_sys::Win32::UI::WindowsAndMessaging::{
    BN_CLICKED, BS_PUSHBUTTON, DestroyWindow, DispatchMessageW, GWLP_USERDATA, GetMessageW,
    GetWindowLongPtrW, HWND_TOPMOST, KillTimer, MSG, PostQuitMessage, SW_SHOW, SWP_NOMOVE,
    SWP_NOSIZE, SetForegroundWindow, SetTimer, SetWindowLongPtrW, SetWindowPos, ShowWindow,
    TranslateMessage, WM_CLOSE, WM_COMMAND, WM_CTLCOLORSTATIC, WM_PAINT, WS_CLIPCHILDREN,
    WS_EX_TOPMOST, WS_POPUP, WS_TABSTOP,
};

use super::window::{self, SS_NOPREFIX};
use crate::platform::{ConsentPrompt, PlatformResult, ui};

/// The window class of the prompt.
const CLASS: &str = "GuruConnectConsent";
/// Control id of "Allow".
const ID_ALLOW: usize = 1001;
/// Control id of "Deny".
const ID_DENY: usize = 1002;
/// The timer that wakes the loop to check `cancel` and the deadline.
const POLL_TIMER: usize = 1;
/// How often `cancel` and the deadline are checked.
const POLL_MS: u32 = 100;
/// Longest request timeout honoured.
const MAX_TIMEOUT_SECONDS: u32 = 600;

/// Records the answer in the `Cell` whose address `prompt` put in `GWLP_USERDATA`.
///
/// # Safety
/// `hwnd` must be a consent window: its `GWLP_USERDATA` is null or points at the `Cell`
/// of the `prompt` call that owns it, which outlives the window.
unsafe fn answer(hwnd: HWND, granted: bool) {
    // SAFETY: per the contract.
    unsafe {
        let cell = GetWindowLongPtrW(hwnd, GWLP_USERDATA) as *const Cell<Option<bool>>;
        if let Some(cell) = cell.as_ref() {
            cell.set(Some(granted));
        }
    }
}

/// The time the prompt waits for an answer.
pub fn timeout(request: &ConsentRequest) -> Duration {
    match request.timeout_seconds {
        0 => ui::CONSENT_TIMEOUT,
        s => Duration::from_secs(u64::from(s.clamp(1, MAX_TIMEOUT_SECONDS))),
    }
}

/// The text lines of the prompt.
pub fn lines(request: &ConsentRequest) -> Vec<String> {
    let [who, what] = ui::consent_lines("GuruConnect", &window::one_line(&request.technician, 256));
    let mut lines = vec![who, what];
    let organization = window::one_line(request.organization.trim(), 64);
    if !organization.is_empty() {
        lines.push(format!("Organization: {organization}"));
    }
    lines.push(format!(
        "Allow only if you expect it. Denies in {} s.",
        timeout(request).as_secs()
    ));
    lines
}

unsafe extern "system" fn consent_proc(hwnd: HWND, msg: u32, w: WPARAM, l: LPARAM) -> LRESULT {
    match msg {
        WM_COMMAND if (w >> 16) as u32 & 0xffff == BN_CLICKED => {
            // SAFETY: this procedure only serves consent windows.
            match w & 0xffff {
                ID_ALLOW => unsafe { answer(hwnd, true) },
                ID_DENY => unsafe { answer(hwnd, false) },
                _ => {}
            }
            0
        }
        WM_CLOSE => {
            // SAFETY: as above.
            unsafe { answer(hwnd, false) };
            0
        }
        // SAFETY: handling this window's WM_PAINT on its thread.
        WM_PAINT => unsafe { window::paint_frame(hwnd) },
        // SAFETY: `w` is the static control's DC for this message.
        WM_CTLCOLORSTATIC => unsafe { window::static_colours(w as _) },
        // SAFETY: forwarding this procedure's own arguments.
        _ => unsafe { window::default_proc(hwnd, msg, w, l) },
    }
}

/// The Win32 consent prompt.
#[derive(Debug, Default, Clone, Copy)]
pub struct WindowsConsent;

impl ConsentPrompt for WindowsConsent {
    fn ask(&self, request: &ConsentRequest, cancel: &AtomicBool) -> bool {
        crate::platform::fail_closed(prompt(
            ui::CONSENT_TITLE,
            &lines(request),
            timeout(request),
            cancel,
        ))
    }

    fn asks_transfers(&self) -> bool {
        true
    }

    fn ask_transfer(&self, lines: &[String], cancel: &AtomicBool) -> bool {
        let lines: Vec<String> = lines.iter().map(|l| window::one_line(l, 200)).collect();
        crate::platform::fail_closed(prompt(
            ui::TRANSFER_TITLE,
            &lines,
            ui::TRANSFER_TIMEOUT,
            cancel,
        ))
    }
}

/// Creates the window and its controls; the caller destroys it.
fn create(title: &str, lines: &[String]) -> PlatformResult<HWND> {
    window::register_class(CLASS, Some(consent_proc))?;
    let (w, h) = (i32::from(ui::CONSENT_WIDTH), i32::from(ui::CONSENT_HEIGHT));
    let primary = super::capture::list_monitors()
        .into_iter()
        .find(|d| d.primary);
    let (x, y) = primary.map_or((0, 0), |d| {
        (
            d.x + (i32::try_from(d.width).unwrap_or(w) - w) / 2,
            d.y + (i32::try_from(d.height).unwrap_or(h) - h) / 2,
        )
    });
    let hwnd = window::create_popup(
        CLASS,
        title,
        WS_EX_TOPMOST,
        WS_POPUP | WS_CLIPCHILDREN,
        (x, y, w, h),
    )?;
    let build = || -> PlatformResult<()> {
        for (i, line) in lines.iter().enumerate() {
            let top = 18 + 24 * i32::try_from(i).unwrap_or(0);
            window::create_child(
                hwnd,
                "STATIC",
                line,
                SS_NOPREFIX,
                0,
                (20, top, w - 40, 20),
                0,
            )?;
        }
        let rect = |r: (i16, i16, u16, u16)| {
            (
                i32::from(r.0),
                i32::from(r.1),
                i32::from(r.2),
                i32::from(r.3),
            )
        };
        let style = BS_PUSHBUTTON as u32 | WS_TABSTOP;
        window::create_child(
            hwnd,
            "BUTTON",
            "Allow",
            style,
            0,
            rect(ui::ALLOW_BUTTON),
            ID_ALLOW,
        )?;
        let deny = window::create_child(
            hwnd,
            "BUTTON",
            "Deny",
            style,
            0,
            rect(ui::DENY_BUTTON),
            ID_DENY,
        )?;
        // SAFETY: the windows were created above on this thread.
        unsafe {
            ShowWindow(hwnd, SW_SHOW);
            SetWindowPos(hwnd, HWND_TOPMOST, 0, 0, 0, 0, SWP_NOMOVE | SWP_NOSIZE);
            SetForegroundWindow(hwnd);
            SetFocus(deny);
        }
        Ok(())
    };
    if let Err(e) = build() {
        // SAFETY: the window was created above and is not used after this.
        unsafe { DestroyWindow(hwnd) };
        return Err(e);
    }
    Ok(hwnd)
}

fn prompt(
    title: &str,
    lines: &[String],
    timeout: Duration,
    cancel: &AtomicBool,
) -> PlatformResult<bool> {
    let given: Cell<Option<bool>> = Cell::new(None);
    let deadline = Instant::now() + timeout;
    let hwnd = create(title, lines)?;
    // SAFETY: the window procedure records the answer in `given` through this pointer;
    // `given` outlives the window, which is destroyed before this function returns. The
    // timer is killed before that too.
    unsafe {
        SetWindowLongPtrW(
            hwnd,
            GWLP_USERDATA,
            &given as *const Cell<Option<bool>> as isize,
        );
        SetTimer(hwnd, POLL_TIMER, POLL_MS, None);
    }
    let mut msg = MSG::default();
    let answer = loop {
        if let Some(answer) = given.get() {
            break answer;
        }
        if cancel.load(Ordering::Relaxed) || Instant::now() >= deadline {
            break false;
        }
        // SAFETY: the standard GetMessage loop on the thread that owns the window; the
        // timer guarantees a message at least every POLL_MS.
        match unsafe { GetMessageW(&mut msg, std::ptr::null_mut(), 0, 0) } {
            0 => {
                // WM_QUIT belongs to whoever runs this thread: put it back and deny.
                // SAFETY: re-posts the quit message with its exit code.
                unsafe { PostQuitMessage(msg.wParam as i32) };
                break false;
            }
            -1 => break false,
            _ => {
                // SAFETY: dispatching the message just retrieved.
                unsafe {
                    TranslateMessage(&msg);
                    DispatchMessageW(&msg);
                }
            }
        }
    };
    // SAFETY: the timer and window were created above; nothing uses them afterwards.
    unsafe {
        KillTimer(hwnd, POLL_TIMER);
        DestroyWindow(hwnd);
    }
    window::pump();
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use windows_sys::Win32::Foundation::RECT;
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        FindWindowW, GetClientRect, GetDlgItem, GetWindowRect, PostMessageW,
    };

    fn request(timeout_seconds: u32) -> ConsentRequest {
        ConsentRequest {
            technician: "Alice & Bob\n".into(),
            organization: "Acme".into(),
            timeout_seconds,
        }
    }

    #[test]
    fn lines_name_the_technician_and_the_timeout() {
        let lines = lines(&request(30));
        assert!(
            lines[0].starts_with("Alice & Bob (GuruConnect)"),
            "{lines:?}"
        );
        assert!(lines.iter().any(|l| l == "Organization: Acme"));
        assert!(lines.last().is_some_and(|l| l.contains("30 s")));
        assert_eq!(timeout(&request(0)), ui::CONSENT_TIMEOUT);
        assert_eq!(timeout(&request(100_000)), Duration::from_secs(600));
    }

    #[test]
    fn times_out_to_deny() {
        let start = Instant::now();
        assert!(!WindowsConsent.ask(&request(1), &AtomicBool::new(false)));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{took:?}"
        );
        // The window is gone.
        let title = super::super::wide(ui::CONSENT_TITLE);
        // SAFETY: NUL-terminated title.
        assert!(unsafe { FindWindowW(std::ptr::null(), title.as_ptr()) }.is_null());
    }

    #[test]
    fn cancel_denies() {
        let cancel = std::sync::Arc::new(AtomicBool::new(false));
        let setter = {
            let cancel = cancel.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(300));
                cancel.store(true, Ordering::Relaxed);
            })
        };
        let start = Instant::now();
        assert!(!WindowsConsent.ask(&request(30), &cancel));
        assert!(start.elapsed() < Duration::from_secs(3));
        setter.join().expect("join");
    }

    /// Clicks a button by sending it BM_CLICK from another thread once the window exists,
    /// and checks the window's geometry on the way.
    fn answer_with(id: usize) -> bool {
        answer_prompt(ui::CONSENT_TITLE, id, || {
            WindowsConsent.ask(&request(20), &AtomicBool::new(false))
        })
    }

    /// Runs `ask` while another thread clicks button `id` of the window titled `title`.
    fn answer_prompt(title: &'static str, id: usize, ask: impl FnOnce() -> bool) -> bool {
        let clicker = std::thread::spawn(move || {
            let title = super::super::wide(title);
            for _ in 0..100 {
                // SAFETY: NUL-terminated title.
                let hwnd = unsafe { FindWindowW(std::ptr::null(), title.as_ptr()) };
                if !hwnd.is_null() {
                    let (mut window, mut client) = (RECT::default(), RECT::default());
                    // SAFETY: valid out pointers; the window may vanish, which only makes
                    // the calls fail.
                    unsafe {
                        GetWindowRect(hwnd, &mut window);
                        GetClientRect(hwnd, &mut client);
                    }
                    const BM_CLICK: u32 = 0x00F5;
                    // SAFETY: looking up a child and posting to a (possibly stale) window
                    // handle only fail when the window is gone.
                    unsafe {
                        let button = GetDlgItem(hwnd, id as i32);
                        PostMessageW(button, BM_CLICK, 0, 0);
                    }
                    return (window, client);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("the prompt window never appeared");
        });
        let granted = ask();
        let (window, client) = clicker.join().expect("clicker");
        assert_eq!(
            (window.right - window.left, window.bottom - window.top),
            (i32::from(ui::CONSENT_WIDTH), i32::from(ui::CONSENT_HEIGHT))
        );
        assert_eq!(
            (client.right, client.bottom),
            (i32::from(ui::CONSENT_WIDTH), i32::from(ui::CONSENT_HEIGHT))
        );
        granted
    }

    #[test]
    fn allow_grants_and_deny_denies() {
        assert!(answer_with(ID_ALLOW));
        assert!(!answer_with(ID_DENY));
    }

    #[test]
    fn each_transfer_is_asked_about_in_its_own_window() {
        assert!(WindowsConsent.asks_transfers());
        let lines = ui::transfer_lines(true, "report.pdf", Some(1_500_000));
        let ask = |id| {
            answer_prompt(ui::TRANSFER_TITLE, id, || {
                WindowsConsent.ask_transfer(&lines, &AtomicBool::new(false))
            })
        };
        assert!(ask(ID_ALLOW));
        assert!(!ask(ID_DENY));
    }
}
