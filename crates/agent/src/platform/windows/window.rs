//! Small Win32 window helpers shared by the consent prompt and the chat window: class
//! registration, borderless popups (client area = window area, so tests click client
//! coordinates), child controls with the GUI font, a white background with a grey frame,
//! and the message pump.

use windows_sys::Win32::Foundation::{
    ERROR_CLASS_ALREADY_EXISTS, GetLastError, HWND, LPARAM, LRESULT, RECT, WPARAM,
};
use windows_sys::Win32::Graphics::Gdi::{
    BeginPaint, DEFAULT_GUI_FONT, EndPaint, FillRect, FrameRect, GRAY_BRUSH, GetStockObject,
    HBRUSH, HDC, PAINTSTRUCT, SetBkMode, TRANSPARENT, WHITE_BRUSH,
};
use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
use windows_sys::Win32::UI::WindowsAndMessaging::{
    CreateWindowExW, DefWindowProcW, DispatchMessageW, GetClientRect, HMENU, IDC_ARROW,
    LoadCursorW, MSG, PM_REMOVE, PeekMessageW, RegisterClassExW, SendMessageW, TranslateMessage,
    WINDOW_EX_STYLE, WINDOW_STYLE, WM_SETFONT, WNDCLASSEXW, WNDPROC, WS_CHILD, WS_VISIBLE,
};

use super::{last_error, wide};
use crate::platform::{PlatformError, PlatformResult};

/// `SS_NOPREFIX`: a static control shows `&` literally.
pub const SS_NOPREFIX: u32 = 0x80;

/// Registers a window class (once per process; later calls are no-ops).
pub fn register_class(name: &str, proc: WNDPROC) -> PlatformResult<()> {
    let class = wide(name);
    // SAFETY: the class name and procedure outlive the call (the name is copied by the
    // system); the cursor and brush are shared system objects.
    let atom = unsafe {
        let wc = WNDCLASSEXW {
            cbSize: std::mem::size_of::<WNDCLASSEXW>() as u32,
            lpfnWndProc: proc,
            hInstance: GetModuleHandleW(std::ptr::null()),
            hCursor: LoadCursorW(std::ptr::null_mut(), IDC_ARROW),
            hbrBackground: GetStockObject(WHITE_BRUSH) as HBRUSH,
            lpszClassName: class.as_ptr(),
            ..Default::default()
        };
        RegisterClassExW(&wc)
    };
    // SAFETY: reads the thread's last error.
    if atom == 0 && unsafe { GetLastError() } != ERROR_CLASS_ALREADY_EXISTS {
        return Err(PlatformError::Request(format!(
            "RegisterClassExW({name}) failed: {}",
            last_error()
        )));
    }
    Ok(())
}

/// Creates a top-level borderless popup of `class` (hidden until shown).
pub fn create_popup(
    class: &str,
    title: &str,
    ex_style: WINDOW_EX_STYLE,
    style: WINDOW_STYLE,
    (x, y, width, height): (i32, i32, i32, i32),
) -> PlatformResult<HWND> {
    let class = wide(class);
    let title = wide(title);
    // SAFETY: NUL-terminated strings that outlive the call; no parent, no menu, no param.
    let hwnd = unsafe {
        CreateWindowExW(
            ex_style,
            class.as_ptr(),
            title.as_ptr(),
            style,
            x,
            y,
            width,
            height,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            GetModuleHandleW(std::ptr::null()),
            std::ptr::null(),
        )
    };
    if hwnd.is_null() {
        return Err(PlatformError::Request(format!(
            "CreateWindowExW failed: {}",
            last_error()
        )));
    }
    Ok(hwnd)
}

/// Creates a visible child control (`"STATIC"`, `"BUTTON"`, `"EDIT"`) with the GUI font.
pub fn create_child(
    parent: HWND,
    class: &str,
    text: &str,
    style: WINDOW_STYLE,
    ex_style: WINDOW_EX_STYLE,
    (x, y, width, height): (i32, i32, i32, i32),
    id: usize,
) -> PlatformResult<HWND> {
    let class = wide(class);
    let text = wide(text);
    // SAFETY: `parent` is a live window of this thread; the strings outlive the call; the
    // "menu" of a child window is its control id.
    let hwnd = unsafe {
        CreateWindowExW(
            ex_style,
            class.as_ptr(),
            text.as_ptr(),
            WS_CHILD | WS_VISIBLE | style,
            x,
            y,
            width,
            height,
            parent,
            id as HMENU,
            GetModuleHandleW(std::ptr::null()),
            std::ptr::null(),
        )
    };
    if hwnd.is_null() {
        return Err(PlatformError::Request(format!(
            "creating a child control failed: {}",
            last_error()
        )));
    }
    // SAFETY: WM_SETFONT with a stock font (never deleted) on the control just created.
    unsafe {
        SendMessageW(
            hwnd,
            WM_SETFONT,
            GetStockObject(DEFAULT_GUI_FONT) as WPARAM,
            1,
        );
    }
    Ok(hwnd)
}

/// Paints the white background with a one-pixel grey frame (WM_PAINT of a popup).
///
/// # Safety
/// `hwnd` must be the window whose WM_PAINT is being handled, on its thread.
pub unsafe fn paint_frame(hwnd: HWND) -> LRESULT {
    let mut ps = PAINTSTRUCT::default();
    let mut rect = RECT::default();
    // SAFETY: per the contract, `hwnd` is being painted on its own thread; `ps` and `rect`
    // are valid out structs; stock brushes are never deleted.
    unsafe {
        let dc = BeginPaint(hwnd, &mut ps);
        GetClientRect(hwnd, &mut rect);
        FillRect(dc, &rect, GetStockObject(WHITE_BRUSH) as HBRUSH);
        FrameRect(dc, &rect, GetStockObject(GRAY_BRUSH) as HBRUSH);
        EndPaint(hwnd, &ps);
    }
    0
}

/// The answer to WM_CTLCOLORSTATIC: transparent text on white.
///
/// # Safety
/// `dc` must be the device context passed with the message.
pub unsafe fn static_colours(dc: HDC) -> LRESULT {
    // SAFETY: `dc` is the control's DC for this message; the stock brush is never deleted.
    unsafe {
        SetBkMode(dc, TRANSPARENT as i32);
        GetStockObject(WHITE_BRUSH) as LRESULT
    }
}

/// Dispatches every pending message of the calling thread (all its windows).
pub fn pump() {
    let mut msg = MSG::default();
    // SAFETY: the standard PeekMessage loop on the calling thread; `msg` is a valid buffer.
    unsafe {
        while PeekMessageW(&mut msg, std::ptr::null_mut(), 0, 0, PM_REMOVE) != 0 {
            TranslateMessage(&msg);
            DispatchMessageW(&msg);
        }
    }
}

/// `DefWindowProcW` (for window procedures' default branch).
///
/// # Safety
/// The arguments must be those the window procedure received.
pub unsafe fn default_proc(hwnd: HWND, msg: u32, w: WPARAM, l: LPARAM) -> LRESULT {
    // SAFETY: forwarding a window procedure's own arguments.
    unsafe { DefWindowProcW(hwnd, msg, w, l) }
}

/// Text fit for a one-line control: control characters become spaces, at most `max` bytes.
pub fn one_line(text: &str, max: usize) -> String {
    crate::platform::ui::truncate(text, max)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_text() {
        assert_eq!(one_line("a\r\nb\tc", 100), "a  b c");
        assert_eq!(one_line("héllo", 2), "h");
    }
}
