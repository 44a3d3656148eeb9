//! Screen capture: DXGI Desktop Duplication where it works, GDI otherwise, chosen at run
//! time by [`WindowsCapturer`].
//!
//! - DXGI ([`super::dxgi`]): UNVERIFIED on real Windows; Wine does not implement it.
//! - GDI ([`GdiCapturer`]): `BitBlt` from the screen DC into a 32-bit top-down DIB section
//!   (BGRA, the byte layout of the X11 capturer's `Image`). Monitors come from
//!   `EnumDisplayMonitors` and the cursor from `GetCursorInfo` and `GetIconInfo`, whichever
//!   path captures the pixels.
//!
//! # Choosing the path
//!
//! The environment variable `GURUCONNECT_CAPTURE` ([`CAPTURE_ENV`]) picks it:
//!
//! - `auto` (the default, also when unset or empty): DXGI is set up for the primary display;
//!   when any step of that fails (under Wine `DuplicateOutput` is `E_NOTIMPL`, or no
//!   Direct3D device can be created) it is logged once at info, with the step and its
//!   `HRESULT`, and GDI is used. When DXGI fails later, while capturing (after one attempt
//!   to re-create a lost duplication), that is logged at warn and GDI is used from then on.
//! - `gdi`: GDI only.
//! - `dxgi`: DXGI only; opening the capturer fails with a clear
//!   [`PlatformError::Unsupported`] where DXGI is unavailable, and capture errors are
//!   returned instead of falling back.
//!
//! Any other value is a configuration error when the capturer is opened.
//! [`Capturer::backend`] says which path is capturing: `"dxgi"` or `"gdi"`.
//!
//! When `BitBlt` fails (the input desktop switched to the secure desktop, a locked session)
//! the GDI capturer tries once to attach its thread to the current input desktop and then
//! reports the error: it never returns a black image in place of a failure. That desktop
//! switch is UNVERIFIED.

use guruconnect_codec::Image;
use guruconnect_proto::DisplayInfo;
use windows_sys::Win32::Foundation::{GENERIC_ALL, LPARAM, RECT};
use windows_sys::Win32::Graphics::Gdi::{
    BI_RGB, BITMAP, BITMAPINFO, BITMAPINFOHEADER, BitBlt, CAPTUREBLT, CreateCompatibleDC,
    CreateDIBSection, DIB_RGB_COLORS, DeleteDC, DeleteObject, EnumDisplayMonitors, GdiFlush, GetDC,
    GetDIBits, GetMonitorInfoW, GetObjectW, HBITMAP, HDC, HGDIOBJ, HMONITOR, MONITORINFO,
    MONITORINFOEXW, ReleaseDC, SRCCOPY, SelectObject,
};
use windows_sys::Win32::System::StationsAndDesktops::{
    CloseDesktop, HDESK, OpenInputDesktop, SetThreadDesktop,
};
use windows_sys::Win32::UI::WindowsAndMessaging::{
    CURSOR_SHOWING, CURSORINFO, GetCursorInfo, GetIconInfo, GetSystemMetrics, ICONINFO,
    MONITORINFOF_PRIMARY, SM_CXVIRTUALSCREEN, SM_CYVIRTUALSCREEN, SM_XVIRTUALSCREEN,
    SM_YVIRTUALSCREEN,
};

use super::dxgi::DxgiCapturer;
use super::last_error;
use crate::platform::{Capturer, CursorImage, CursorState, PlatformError, PlatformResult};

/// The environment variable that picks the capture path: `auto`, `gdi` or `dxgi`.
pub const CAPTURE_ENV: &str = "GURUCONNECT_CAPTURE";

/// Largest monitor side accepted (guards the DIB allocation against nonsense rects).
const MAX_SIDE: i32 = 16384;
/// Largest cursor side accepted.
const MAX_CURSOR_SIDE: i32 = 256;

fn request_error(what: &str) -> PlatformError {
    PlatformError::Request(format!("{what} failed: {}", last_error()))
}

/// The screen's device context (`GetDC(NULL)`), released on drop.
#[derive(Debug)]
pub struct ScreenDc(HDC);

impl ScreenDc {
    /// Gets the DC of the whole virtual screen.
    pub fn get() -> PlatformResult<Self> {
        // SAFETY: GetDC(NULL) takes no pointers; the DC is released in Drop.
        let dc = unsafe { GetDC(std::ptr::null_mut()) };
        if dc.is_null() {
            return Err(PlatformError::NoDisplay {
                display: super::DESKTOP_NAME.into(),
                reason: format!(
                    "no interactive desktop: GetDC(NULL) failed: {}",
                    last_error()
                ),
            });
        }
        Ok(Self(dc))
    }
}

impl Drop for ScreenDc {
    fn drop(&mut self) {
        // SAFETY: the DC came from GetDC(NULL) and is released exactly once.
        unsafe { ReleaseDC(std::ptr::null_mut(), self.0) };
    }
}

/// A memory DC with a 32-bit top-down DIB section selected into it.
struct Surface {
    dc: HDC,
    bitmap: HBITMAP,
    previous: HGDIOBJ,
    bits: *mut u8,
    width: i32,
    height: i32,
}

impl Surface {
    fn new(screen: &ScreenDc, width: i32, height: i32) -> PlatformResult<Self> {
        let info = BITMAPINFO {
            bmiHeader: dib_header(width, height),
            ..Default::default()
        };
        let mut bits: *mut core::ffi::c_void = std::ptr::null_mut();
        // SAFETY: `info` describes a valid 32-bit DIB; `bits` receives the section's pixel
        // pointer, owned by the bitmap, which lives as long as this Surface.
        let bitmap = unsafe {
            CreateDIBSection(
                screen.0,
                &info,
                DIB_RGB_COLORS,
                &mut bits,
                std::ptr::null_mut(),
                0,
            )
        };
        if bitmap.is_null() || bits.is_null() {
            return Err(request_error("CreateDIBSection"));
        }
        // SAFETY: a memory DC compatible with the (valid) screen DC.
        let dc = unsafe { CreateCompatibleDC(screen.0) };
        if dc.is_null() {
            // SAFETY: the bitmap was created above and is not selected anywhere.
            unsafe { DeleteObject(bitmap) };
            return Err(request_error("CreateCompatibleDC"));
        }
        // SAFETY: both handles are valid; the previous object is restored in Drop.
        let previous = unsafe { SelectObject(dc, bitmap) };
        Ok(Self {
            dc,
            bitmap,
            previous,
            bits: bits.cast(),
            width,
            height,
        })
    }

    fn len(&self) -> usize {
        usize::try_from(self.width).unwrap_or(0) * usize::try_from(self.height).unwrap_or(0) * 4
    }
}

impl Drop for Surface {
    fn drop(&mut self) {
        // SAFETY: the handles were created in `new` and are released exactly once, the
        // bitmap after it is deselected.
        unsafe {
            SelectObject(self.dc, self.previous);
            DeleteDC(self.dc);
            DeleteObject(self.bitmap);
        }
    }
}

/// A `BITMAPINFOHEADER` for a 32-bit top-down DIB.
fn dib_header(width: i32, height: i32) -> BITMAPINFOHEADER {
    BITMAPINFOHEADER {
        biSize: std::mem::size_of::<BITMAPINFOHEADER>() as u32,
        biWidth: width,
        biHeight: -height,
        biPlanes: 1,
        biBitCount: 32,
        biCompression: BI_RGB,
        ..Default::default()
    }
}

/// The virtual screen (every monitor) as `(x, y, width, height)`.
pub fn virtual_screen() -> (i32, i32, i32, i32) {
    // SAFETY: GetSystemMetrics takes no pointers.
    unsafe {
        (
            GetSystemMetrics(SM_XVIRTUALSCREEN),
            GetSystemMetrics(SM_YVIRTUALSCREEN),
            GetSystemMetrics(SM_CXVIRTUALSCREEN),
            GetSystemMetrics(SM_CYVIRTUALSCREEN),
        )
    }
}

unsafe extern "system" fn collect_monitor(
    monitor: HMONITOR,
    _dc: HDC,
    _rect: *mut RECT,
    data: LPARAM,
) -> windows_sys::core::BOOL {
    // SAFETY: `data` is the `&mut Vec<HMONITOR>` passed by `list_monitors`, alive and not
    // otherwise borrowed while EnumDisplayMonitors runs.
    let monitors = unsafe { &mut *(data as *mut Vec<HMONITOR>) };
    monitors.push(monitor);
    1
}

/// The monitors in enumeration order; ids are indices. Without any (which Windows does not
/// do), the virtual screen is one display.
pub fn list_monitors() -> Vec<DisplayInfo> {
    let mut handles: Vec<HMONITOR> = Vec::new();
    // SAFETY: the callback only pushes into `handles`, which outlives the call.
    unsafe {
        EnumDisplayMonitors(
            std::ptr::null_mut(),
            std::ptr::null(),
            Some(collect_monitor),
            &mut handles as *mut Vec<HMONITOR> as LPARAM,
        )
    };
    let mut displays: Vec<DisplayInfo> = handles
        .iter()
        .filter_map(|&monitor| {
            let mut info = MONITORINFOEXW::default();
            info.monitorInfo.cbSize = std::mem::size_of::<MONITORINFOEXW>() as u32;
            // SAFETY: `info` is a MONITORINFOEXW with cbSize set, as the call requires.
            let ok = unsafe {
                GetMonitorInfoW(
                    monitor,
                    (&mut info as *mut MONITORINFOEXW).cast::<MONITORINFO>(),
                )
            };
            if ok == 0 {
                return None;
            }
            let r = info.monitorInfo.rcMonitor;
            let (width, height) = (r.right - r.left, r.bottom - r.top);
            if width <= 0 || height <= 0 {
                return None;
            }
            let device = super::from_wide(&info.szDevice);
            Some(DisplayInfo {
                id: 0,
                name: device.trim_start_matches(r"\\.\").to_owned(),
                x: r.left,
                y: r.top,
                width: u32::try_from(width).ok()?,
                height: u32::try_from(height).ok()?,
                primary: info.monitorInfo.dwFlags & MONITORINFOF_PRIMARY != 0,
            })
        })
        .collect();
    if displays.is_empty() {
        let (x, y, w, h) = virtual_screen();
        displays.push(DisplayInfo {
            id: 0,
            name: "screen".into(),
            x,
            y,
            width: u32::try_from(w).unwrap_or(0),
            height: u32::try_from(h).unwrap_or(0),
            primary: true,
        });
    }
    for (i, d) in displays.iter_mut().enumerate() {
        d.id = u32::try_from(i).unwrap_or(u32::MAX);
        if d.name.is_empty() {
            d.name = format!("monitor-{i}");
        }
    }
    if !displays.iter().any(|d| d.primary) {
        displays[0].primary = true;
    }
    displays
}

/// `display`'s rectangle clipped to the virtual screen, as `(x, y, width, height)`.
pub fn clip_to_screen(
    display: &DisplayInfo,
    screen: (i32, i32, i32, i32),
) -> PlatformResult<(i32, i32, i32, i32)> {
    let (sx, sy, sw, sh) = (
        i64::from(screen.0),
        i64::from(screen.1),
        i64::from(screen.2),
        i64::from(screen.3),
    );
    let x0 = i64::from(display.x).clamp(sx, sx + sw);
    let y0 = i64::from(display.y).clamp(sy, sy + sh);
    let x1 = (i64::from(display.x) + i64::from(display.width)).clamp(sx, sx + sw);
    let y1 = (i64::from(display.y) + i64::from(display.height)).clamp(sy, sy + sh);
    let (w, h) = (x1 - x0, y1 - y0);
    if w <= 0 || h <= 0 {
        return Err(PlatformError::Request(
            "display is outside the screen".into(),
        ));
    }
    if w > i64::from(MAX_SIDE) || h > i64::from(MAX_SIDE) {
        return Err(PlatformError::Unsupported(format!(
            "a {w}x{h} display is larger than {MAX_SIDE} pixels"
        )));
    }
    let conv = |v: i64| {
        i32::try_from(v).map_err(|_| PlatformError::Request("display rect overflow".into()))
    };
    Ok((conv(x0)?, conv(y0)?, conv(w)?, conv(h)?))
}

/// GDI screen capturer.
pub struct GdiCapturer {
    surface: Option<Surface>,
    desktop: HDESK,
    cursor_handle: usize,
    cursor_serial: u32,
}

// SAFETY: the raw handles (memory DC, DIB section, desktop) are process-wide GDI/USER
// objects, not tied to the creating thread; `&mut self` keeps their use to one thread at a
// time, and the DIB pointer is only read after a BitBlt that completed on that thread.
unsafe impl Send for GdiCapturer {}

impl std::fmt::Debug for GdiCapturer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GdiCapturer")
            .field(
                "surface",
                &self.surface.as_ref().map(|s| (s.width, s.height)),
            )
            .field("cursor_serial", &self.cursor_serial)
            .finish_non_exhaustive()
    }
}

impl GdiCapturer {
    /// Opens GDI capture (checks that a screen DC can be had).
    pub fn open() -> PlatformResult<Self> {
        ScreenDc::get()?;
        Ok(Self {
            surface: None,
            desktop: std::ptr::null_mut(),
            cursor_handle: 0,
            cursor_serial: 1,
        })
    }

    /// Attaches this thread to the current input desktop (after a switch to the secure
    /// desktop or back). Returns whether it did. UNVERIFIED on real Windows.
    fn follow_input_desktop(&mut self) -> bool {
        // SAFETY: plain call; the handle is kept (and closed) by this capturer.
        let desk = unsafe { OpenInputDesktop(0, 0, GENERIC_ALL) };
        if desk.is_null() {
            return false;
        }
        // SAFETY: `desk` is valid; SetThreadDesktop fails harmlessly when the thread owns
        // windows or hooks.
        if unsafe { SetThreadDesktop(desk) } == 0 {
            // SAFETY: `desk` was opened above and is not in use.
            unsafe { CloseDesktop(desk) };
            return false;
        }
        if !self.desktop.is_null() {
            // SAFETY: the previous desktop handle is no longer the thread's desktop.
            unsafe { CloseDesktop(self.desktop) };
        }
        self.desktop = desk;
        tracing::info!("capture: attached to the current input desktop");
        true
    }

    fn blit(&mut self, x: i32, y: i32, w: i32, h: i32) -> PlatformResult<Vec<u8>> {
        let screen = ScreenDc::get()?;
        if self
            .surface
            .as_ref()
            .is_none_or(|s| s.width != w || s.height != h)
        {
            self.surface = None;
            self.surface = Some(Surface::new(&screen, w, h)?);
        }
        let surface = self
            .surface
            .as_ref()
            .ok_or_else(|| PlatformError::Request("no capture surface".into()))?;
        // SAFETY: both DCs are valid; the blit stays within the w×h surface.
        let ok = unsafe { BitBlt(surface.dc, 0, 0, w, h, screen.0, x, y, SRCCOPY | CAPTUREBLT) };
        if ok == 0 {
            return Err(request_error("BitBlt from the screen"));
        }
        // SAFETY: GdiFlush takes no arguments; it completes the batched blit before the
        // pixels are read.
        unsafe { GdiFlush() };
        // SAFETY: `bits` points at the DIB section's `len()` bytes (w×h×4, top-down), owned
        // by the surface that is alive for this borrow; the blit has completed.
        let pixels = unsafe { std::slice::from_raw_parts(surface.bits, surface.len()) };
        let mut data = pixels.to_vec();
        for px in data.chunks_exact_mut(4) {
            px[3] = 0xff;
        }
        Ok(data)
    }

    /// Updates the cursor serial from the current cursor handle; returns the cursor info.
    fn cursor_info(&mut self) -> PlatformResult<CURSORINFO> {
        let mut info = CURSORINFO {
            cbSize: std::mem::size_of::<CURSORINFO>() as u32,
            ..Default::default()
        };
        // SAFETY: `info` is a CURSORINFO with cbSize set.
        if unsafe { GetCursorInfo(&mut info) } == 0 {
            return Err(request_error("GetCursorInfo"));
        }
        let handle = info.hCursor as usize;
        if handle != self.cursor_handle {
            self.cursor_handle = handle;
            self.cursor_serial = self.cursor_serial.wrapping_add(1);
        }
        Ok(info)
    }
}

impl Drop for GdiCapturer {
    fn drop(&mut self) {
        self.surface = None;
        if !self.desktop.is_null() {
            // SAFETY: the desktop handle was opened by this capturer and is closed once.
            unsafe { CloseDesktop(self.desktop) };
        }
    }
}

/// A bitmap's pixels as 32-bit top-down BGRA, with its size.
fn bitmap_pixels(dc: &ScreenDc, bitmap: HBITMAP) -> Option<(i32, i32, Vec<u8>)> {
    if bitmap.is_null() {
        return None;
    }
    let mut bm = BITMAP::default();
    // SAFETY: `bm` is a BITMAP of the size passed.
    let n = unsafe {
        GetObjectW(
            bitmap,
            std::mem::size_of::<BITMAP>() as i32,
            (&mut bm as *mut BITMAP).cast(),
        )
    };
    let (w, h) = (bm.bmWidth, bm.bmHeight.abs());
    if n == 0 || w <= 0 || h <= 0 || w > MAX_CURSOR_SIDE || h > 2 * MAX_CURSOR_SIDE {
        return None;
    }
    let mut info = BITMAPINFO {
        bmiHeader: dib_header(w, h),
        ..Default::default()
    };
    let mut data = vec![0u8; usize::try_from(w * h * 4).ok()?];
    // SAFETY: `data` holds w×h 32-bit pixels, the format `info` asks for; the bitmap is
    // valid and not selected into any DC.
    let lines = unsafe {
        GetDIBits(
            dc.0,
            bitmap,
            0,
            h as u32,
            data.as_mut_ptr().cast(),
            &mut info,
            DIB_RGB_COLORS,
        )
    };
    (lines == h).then_some((w, h, data))
}

/// Builds straight-alpha RGBA from a cursor's colour bitmap (BGRA, may be `None` for a
/// monochrome cursor) and its mask (BGRA; for monochrome cursors twice as tall: AND mask
/// above XOR mask). Returns `(width, height, rgba)`.
pub fn cursor_rgba(
    color: Option<(i32, i32, &[u8])>,
    mask: Option<(i32, i32, &[u8])>,
) -> Option<(u32, u32, Vec<u8>)> {
    let bit = |px: &[u8]| px[0] != 0 || px[1] != 0 || px[2] != 0;
    match (color, mask) {
        (Some((w, h, color)), mask) => {
            let has_alpha = color.chunks_exact(4).any(|px| px[3] != 0);
            let mask = mask.filter(|(mw, mh, m)| *mw == w && *mh >= h && m.len() >= color.len());
            let mut rgba = Vec::with_capacity(color.len());
            for (i, px) in color.chunks_exact(4).enumerate() {
                let alpha = if has_alpha {
                    px[3]
                } else {
                    match mask {
                        Some((_, _, m)) if bit(&m[i * 4..i * 4 + 4]) => 0,
                        _ => 0xff,
                    }
                };
                rgba.extend_from_slice(&[px[2], px[1], px[0], alpha]);
            }
            Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?, rgba))
        }
        (None, Some((w, h2, mask))) => {
            let h = h2 / 2;
            if h <= 0 {
                return None;
            }
            let half = usize::try_from(w * h * 4).ok()?;
            if mask.len() < 2 * half {
                return None;
            }
            let (and, xor) = mask.split_at(half);
            let mut rgba = Vec::with_capacity(half);
            for (a, x) in and.chunks_exact(4).zip(xor.chunks_exact(4)) {
                rgba.extend_from_slice(&match (bit(a), bit(x)) {
                    (false, false) => [0, 0, 0, 0xff],
                    (false, true) => [0xff, 0xff, 0xff, 0xff],
                    (true, false) => [0, 0, 0, 0],
                    // "Invert the screen": drawn as black, the closest fixed colour.
                    (true, true) => [0, 0, 0, 0xff],
                });
            }
            Some((u32::try_from(w).ok()?, u32::try_from(h).ok()?, rgba))
        }
        (None, None) => None,
    }
}

impl Capturer for GdiCapturer {
    fn backend(&self) -> &'static str {
        "gdi"
    }

    fn displays(&self) -> Vec<DisplayInfo> {
        list_monitors()
    }

    fn capture(&mut self, display: &DisplayInfo) -> PlatformResult<Image> {
        let (x, y, w, h) = clip_to_screen(display, virtual_screen())?;
        let data = match self.blit(x, y, w, h) {
            Ok(data) => data,
            Err(first) => {
                if !self.follow_input_desktop() {
                    return Err(first);
                }
                self.blit(x, y, w, h)?
            }
        };
        Ok(Image {
            width: u32::try_from(w).unwrap_or(0),
            height: u32::try_from(h).unwrap_or(0),
            data,
        })
    }

    fn cursor(&mut self, display: &DisplayInfo) -> PlatformResult<CursorState> {
        let info = self.cursor_info()?;
        let x = info.ptScreenPos.x.saturating_sub(display.x);
        let y = info.ptScreenPos.y.saturating_sub(display.y);
        let inside = x >= 0
            && y >= 0
            && i64::from(x) < i64::from(display.width)
            && i64::from(y) < i64::from(display.height);
        Ok(CursorState {
            x,
            y,
            visible: inside && info.flags & CURSOR_SHOWING != 0 && !info.hCursor.is_null(),
            serial: self.cursor_serial,
        })
    }

    fn cursor_image(&mut self) -> PlatformResult<Option<CursorImage>> {
        let info = self.cursor_info()?;
        if info.hCursor.is_null() {
            return Ok(None);
        }
        let mut icon = ICONINFO::default();
        // SAFETY: `icon` is a valid out struct; the bitmaps it receives are deleted below.
        if unsafe { GetIconInfo(info.hCursor, &mut icon) } == 0 {
            return Err(request_error("GetIconInfo"));
        }
        let dc = ScreenDc::get()?;
        let color = bitmap_pixels(&dc, icon.hbmColor);
        let mask = bitmap_pixels(&dc, icon.hbmMask);
        // SAFETY: GetIconInfo created these bitmaps for the caller, who must delete them.
        unsafe {
            if !icon.hbmColor.is_null() {
                DeleteObject(icon.hbmColor);
            }
            if !icon.hbmMask.is_null() {
                DeleteObject(icon.hbmMask);
            }
        }
        let Some((width, height, rgba)) = cursor_rgba(
            color.as_ref().map(|(w, h, d)| (*w, *h, d.as_slice())),
            mask.as_ref().map(|(w, h, d)| (*w, *h, d.as_slice())),
        ) else {
            return Ok(None);
        };
        Ok(Some(CursorImage {
            width,
            height,
            hot_x: icon.xHotspot.min(width.saturating_sub(1)),
            hot_y: icon.yHotspot.min(height.saturating_sub(1)),
            rgba,
            serial: self.cursor_serial,
        }))
    }
}

/// Which capture path to use (see the module doc; [`CAPTURE_ENV`] maps onto it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CapturePreference {
    /// DXGI Desktop Duplication when it can be set up, else GDI (logged).
    #[default]
    Auto,
    /// GDI only.
    Gdi,
    /// DXGI Desktop Duplication only; unavailable is an error.
    Dxgi,
}

impl CapturePreference {
    /// Parses a [`CAPTURE_ENV`] value (case-insensitive, trimmed; empty is `Auto`).
    pub fn parse(value: &str) -> Option<Self> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Some(Self::Auto),
            "gdi" => Some(Self::Gdi),
            "dxgi" => Some(Self::Dxgi),
            _ => None,
        }
    }

    /// The preference [`CAPTURE_ENV`] asks for (`Auto` when unset); an unknown value is an
    /// error.
    pub fn from_env() -> PlatformResult<Self> {
        match std::env::var(CAPTURE_ENV) {
            Err(std::env::VarError::NotPresent) => Ok(Self::Auto),
            Err(std::env::VarError::NotUnicode(_)) => Err(PlatformError::Unsupported(format!(
                "{CAPTURE_ENV} is not valid Unicode; expected auto, gdi or dxgi"
            ))),
            Ok(value) => Self::parse(&value).ok_or_else(|| {
                PlatformError::Unsupported(format!(
                    "{CAPTURE_ENV}={value:?} is not a capture path; expected auto, gdi or dxgi"
                ))
            }),
        }
    }
}

/// The Windows capturer: DXGI Desktop Duplication when it is available (UNVERIFIED), GDI
/// otherwise or after DXGI fails; monitors and the cursor always come from GDI/USER.
#[derive(Debug)]
pub struct WindowsCapturer {
    gdi: GdiCapturer,
    dxgi: Option<DxgiCapturer>,
    preference: CapturePreference,
}

impl WindowsCapturer {
    /// Opens capture with the path [`CAPTURE_ENV`] asks for.
    pub fn open() -> PlatformResult<Self> {
        Self::open_with(CapturePreference::from_env()?)
    }

    /// Opens capture with an explicit preference; DXGI is probed on the primary display.
    /// The choice is logged at info.
    pub fn open_with(preference: CapturePreference) -> PlatformResult<Self> {
        let gdi = GdiCapturer::open()?;
        let dxgi = match preference {
            CapturePreference::Gdi => {
                tracing::info!(
                    backend = "gdi",
                    "screen capture: GDI BitBlt ({CAPTURE_ENV}=gdi)"
                );
                None
            }
            CapturePreference::Auto => match probe_dxgi() {
                Ok(dxgi) => {
                    tracing::info!(backend = "dxgi", "screen capture: DXGI Desktop Duplication");
                    Some(dxgi)
                }
                Err(e) => {
                    tracing::info!(
                        backend = "gdi",
                        "DXGI Desktop Duplication unavailable ({e}); capturing with GDI"
                    );
                    None
                }
            },
            CapturePreference::Dxgi => {
                let dxgi = probe_dxgi().map_err(|e| {
                    PlatformError::Unsupported(format!(
                        "{CAPTURE_ENV}=dxgi, but DXGI Desktop Duplication is unavailable: {e}"
                    ))
                })?;
                tracing::info!(
                    backend = "dxgi",
                    "screen capture: DXGI Desktop Duplication ({CAPTURE_ENV}=dxgi)"
                );
                Some(dxgi)
            }
        };
        Ok(Self {
            gdi,
            dxgi,
            preference,
        })
    }
}

/// Sets up DXGI for the primary display.
fn probe_dxgi() -> Result<DxgiCapturer, super::dxgi::DxgiError> {
    let displays = list_monitors();
    let primary = displays
        .iter()
        .find(|d| d.primary)
        .or(displays.first())
        .cloned()
        .unwrap_or_default();
    DxgiCapturer::open(&primary)
}

impl Capturer for WindowsCapturer {
    fn backend(&self) -> &'static str {
        if self.dxgi.is_some() { "dxgi" } else { "gdi" }
    }

    fn displays(&self) -> Vec<DisplayInfo> {
        self.gdi.displays()
    }

    fn capture(&mut self, display: &DisplayInfo) -> PlatformResult<Image> {
        if let Some(dxgi) = self.dxgi.as_mut() {
            match dxgi.capture(display) {
                Ok(image) => return Ok(image),
                Err(e) if self.preference == CapturePreference::Dxgi => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(
                        backend = "gdi",
                        "DXGI Desktop Duplication failed while capturing ({e}); capturing with GDI from now on"
                    );
                    self.dxgi = None;
                }
            }
        }
        self.gdi.capture(display)
    }

    fn cursor(&mut self, display: &DisplayInfo) -> PlatformResult<CursorState> {
        self.gdi.cursor(display)
    }

    fn cursor_image(&mut self) -> PlatformResult<Option<CursorImage>> {
        self.gdi.cursor_image()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitors_are_listed_with_one_primary() {
        let displays = list_monitors();
        assert!(!displays.is_empty());
        assert_eq!(displays.iter().filter(|d| d.primary).count(), 1);
        for (i, d) in displays.iter().enumerate() {
            assert_eq!(d.id as usize, i);
            assert!(d.width > 0 && d.height > 0);
        }
        let primary = displays.iter().find(|d| d.primary).expect("primary");
        assert_eq!((primary.x, primary.y), (0, 0));
    }

    #[test]
    fn clipping_to_the_virtual_screen() {
        let screen = (0, 0, 1280, 800);
        let d = |x, y, width, height| DisplayInfo {
            x,
            y,
            width,
            height,
            ..DisplayInfo::default()
        };
        assert_eq!(
            clip_to_screen(&d(0, 0, 1280, 800), screen).ok(),
            Some((0, 0, 1280, 800))
        );
        assert_eq!(
            clip_to_screen(&d(-10, 0, 100, 50), screen).ok(),
            Some((0, 0, 90, 50))
        );
        assert!(clip_to_screen(&d(2000, 0, 100, 100), screen).is_err());
        assert!(clip_to_screen(&d(0, 0, 0, 100), screen).is_err());
    }

    #[test]
    fn monochrome_and_colour_cursors_become_rgba() {
        // 1×1 monochrome: AND=0, XOR=1 → white; AND=1, XOR=0 → transparent.
        let white = [0u8, 0, 0, 0, 0xff, 0xff, 0xff, 0];
        assert_eq!(
            cursor_rgba(None, Some((1, 2, &white))),
            Some((1, 1, vec![0xff, 0xff, 0xff, 0xff]))
        );
        let clear = [0xffu8, 0xff, 0xff, 0, 0, 0, 0, 0];
        assert_eq!(
            cursor_rgba(None, Some((1, 2, &clear))).map(|c| c.2[3]),
            Some(0)
        );
        // A colour cursor with alpha keeps it (BGRA → RGBA).
        let colour = [1u8, 2, 3, 0x80];
        assert_eq!(
            cursor_rgba(Some((1, 1, &colour)), None),
            Some((1, 1, vec![3, 2, 1, 0x80]))
        );
        // Without alpha the mask decides.
        let opaque = [1u8, 2, 3, 0];
        let masked = [0xffu8, 0xff, 0xff, 0];
        assert_eq!(
            cursor_rgba(Some((1, 1, &opaque)), Some((1, 1, &masked))).map(|c| c.2[3]),
            Some(0)
        );
        assert_eq!(
            cursor_rgba(Some((1, 1, &opaque)), None).map(|c| c.2[3]),
            Some(0xff)
        );
    }

    /// Paints a rectangle on a topmost window with GDI and finds it in the capture.
    #[test]
    fn gdi_capture_sees_a_painted_window() {
        let displays = list_monitors();
        let primary = displays
            .iter()
            .find(|d| d.primary)
            .expect("primary")
            .clone();
        let mut capturer = GdiCapturer::open().expect("open");
        assert_eq!(capturer.backend(), "gdi");
        assert_sees_a_painted_window(&mut capturer, &primary);
    }

    /// A full, opaque image of `display`.
    fn assert_full_image(image: &Image, display: &DisplayInfo) {
        assert_eq!((image.width, image.height), (display.width, display.height));
        assert_eq!(
            image.data.len(),
            display.width as usize * display.height as usize * 4
        );
        assert!(image.data.chunks_exact(4).all(|px| px[3] == 0xff));
    }

    /// Captures `primary` with `capturer`, then paints a window and finds it in a capture.
    fn assert_sees_a_painted_window(capturer: &mut dyn Capturer, primary: &DisplayInfo) {
        let image = capturer.capture(primary).expect("capture");
        assert_full_image(&image, primary);

        // A solid-colour popup at (100, 120), 200×100, BGR (0x20, 0x80, 0xE0).
        let window = test_support::ColourWindow::show(100, 120, 200, 100, (0xE0, 0x80, 0x20));
        let found = (0..40).any(|_| {
            window.pump();
            let image = capturer.capture(primary).expect("capture");
            let at = |x: u32, y: u32| {
                let i = ((y * image.width + x) * 4) as usize;
                [image.data[i], image.data[i + 1], image.data[i + 2]]
            };
            if at(200, 170) == [0x20, 0x80, 0xE0] && at(101, 121) == [0x20, 0x80, 0xE0] {
                true
            } else {
                std::thread::sleep(std::time::Duration::from_millis(50));
                false
            }
        });
        drop(window);
        assert!(
            found,
            "the painted window never showed up in the {} capture",
            capturer.backend()
        );
    }

    #[test]
    fn capture_preferences_parse() {
        assert_eq!(CapturePreference::parse(""), Some(CapturePreference::Auto));
        assert_eq!(
            CapturePreference::parse(" Auto "),
            Some(CapturePreference::Auto)
        );
        assert_eq!(
            CapturePreference::parse("gdi"),
            Some(CapturePreference::Gdi)
        );
        assert_eq!(
            CapturePreference::parse("DXGI"),
            Some(CapturePreference::Dxgi)
        );
        assert_eq!(CapturePreference::parse("opengl"), None);
        assert_eq!(CapturePreference::default(), CapturePreference::Auto);
    }

    /// The run-time choice. `auto` captures with DXGI exactly when forcing DXGI works, else
    /// with GDI; forcing DXGI where it is unavailable (Wine) is a clear `Unsupported` error
    /// naming the failed step and its HRESULT; where it works, it captures the full display.
    #[test]
    fn auto_falls_back_to_gdi_and_forced_dxgi_is_clear() {
        let primary = list_monitors()
            .into_iter()
            .find(|d| d.primary)
            .expect("primary");
        let dxgi_works = match WindowsCapturer::open_with(CapturePreference::Dxgi) {
            Ok(mut forced) => {
                assert_eq!(forced.backend(), "dxgi");
                let image = forced.capture(&primary).expect("forced DXGI capture");
                assert_full_image(&image, &primary);
                assert_eq!(forced.backend(), "dxgi", "forced DXGI never falls back");
                true
            }
            Err(e) => {
                let message = e.to_string();
                assert!(
                    matches!(e, PlatformError::Unsupported(_)),
                    "not Unsupported: {message}"
                );
                assert!(
                    message.contains("GURUCONNECT_CAPTURE=dxgi")
                        && message.contains("DXGI Desktop Duplication is unavailable")
                        && message.contains(" failed")
                        && message.contains("HRESULT 0x"),
                    "unclear error: {message}"
                );
                eprintln!("forcing DXGI: {message}");
                false
            }
        };

        let mut auto = WindowsCapturer::open_with(CapturePreference::Auto).expect("auto");
        assert_eq!(
            auto.backend(),
            if dxgi_works { "dxgi" } else { "gdi" },
            "auto picks DXGI exactly when it can be set up"
        );
        assert_sees_a_painted_window(&mut auto, &primary);
        assert!(matches!(auto.backend(), "dxgi" | "gdi"));
        let cursor = auto.cursor(&primary).expect("cursor");
        assert!(cursor.x >= 0 && cursor.y >= 0);
        drop(auto);

        let mut gdi = WindowsCapturer::open_with(CapturePreference::Gdi).expect("gdi");
        assert_eq!(gdi.backend(), "gdi");
        let image = gdi.capture(&primary).expect("GDI capture");
        assert_full_image(&image, &primary);
    }

    #[test]
    fn cursor_position_and_shape() {
        let primary = list_monitors()
            .into_iter()
            .find(|d| d.primary)
            .expect("primary");
        let mut capturer = GdiCapturer::open().expect("open");
        let state = capturer.cursor(&primary).expect("cursor");
        assert!(state.x >= 0 && state.y >= 0);
        let again = capturer.cursor(&primary).expect("cursor");
        assert_eq!(
            state.serial, again.serial,
            "serial changes only with the cursor"
        );
        if let Some(image) = capturer.cursor_image().expect("cursor image") {
            assert!(image.width > 0 && image.height > 0);
            assert_eq!(image.rgba.len(), (image.width * image.height * 4) as usize);
            assert!(image.hot_x < image.width && image.hot_y < image.height);
            assert!(
                image.rgba.chunks_exact(4).any(|px| px[3] != 0),
                "fully transparent"
            );
            assert_eq!(image.serial, state.serial);
        }
    }
}

/// Windows used by the tests of this platform (a solid colour popup).
#[cfg(test)]
pub mod test_support {
    use windows_sys::Win32::Foundation::{HWND, LPARAM, LRESULT, WPARAM};
    use windows_sys::Win32::Graphics::Gdi::{CreateSolidBrush, DeleteObject, HBRUSH, UpdateWindow};
    use windows_sys::Win32::System::LibraryLoader::GetModuleHandleW;
    use windows_sys::Win32::UI::WindowsAndMessaging::{
        CreateWindowExW, DefWindowProcW, DestroyWindow, DispatchMessageW, HWND_TOPMOST, MSG,
        PM_REMOVE, PeekMessageW, RegisterClassExW, SW_SHOWNOACTIVATE, SWP_NOACTIVATE, SetWindowPos,
        ShowWindow, TranslateMessage, WNDCLASSEXW, WS_EX_TOOLWINDOW, WS_EX_TOPMOST, WS_POPUP,
    };

    use std::sync::atomic::{AtomicU32, Ordering};

    use crate::platform::windows::wide;

    unsafe extern "system" fn proc(hwnd: HWND, msg: u32, w: WPARAM, l: LPARAM) -> LRESULT {
        // SAFETY: forwarding the window procedure's own arguments.
        unsafe { DefWindowProcW(hwnd, msg, w, l) }
    }

    /// A topmost popup filled with one colour (its class brush).
    pub struct ColourWindow {
        hwnd: HWND,
        brush: HBRUSH,
    }

    impl ColourWindow {
        /// Shows a `w×h` popup at `(x, y)` filled with `rgb`.
        pub fn show(x: i32, y: i32, w: i32, h: i32, rgb: (u8, u8, u8)) -> Self {
            let colour = u32::from(rgb.0) | u32::from(rgb.1) << 8 | u32::from(rgb.2) << 16;
            // One class per window: a class outlives its window, and a reused class would
            // paint with the brush an earlier window already deleted.
            static SERIAL: AtomicU32 = AtomicU32::new(0);
            let serial = SERIAL.fetch_add(1, Ordering::Relaxed);
            let class = wide(&format!("GuruConnectTestColour{colour:06x}-{serial}"));
            // SAFETY: test-only window creation with valid, NUL-terminated strings that
            // outlive the calls; the window and brush are destroyed in Drop.
            unsafe {
                let brush = CreateSolidBrush(colour);
                let wc = WNDCLASSEXW {
                    cbSize: std::mem::size_of::<WNDCLASSEXW>() as u32,
                    lpfnWndProc: Some(proc),
                    hInstance: GetModuleHandleW(std::ptr::null()),
                    hbrBackground: brush,
                    lpszClassName: class.as_ptr(),
                    ..Default::default()
                };
                RegisterClassExW(&wc);
                let title = wide("GuruConnect test colour");
                let hwnd = CreateWindowExW(
                    WS_EX_TOPMOST | WS_EX_TOOLWINDOW,
                    class.as_ptr(),
                    title.as_ptr(),
                    WS_POPUP,
                    x,
                    y,
                    w,
                    h,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    wc.hInstance,
                    std::ptr::null(),
                );
                assert!(!hwnd.is_null(), "CreateWindowExW");
                ShowWindow(hwnd, SW_SHOWNOACTIVATE);
                SetWindowPos(hwnd, HWND_TOPMOST, x, y, w, h, SWP_NOACTIVATE);
                UpdateWindow(hwnd);
                Self { hwnd, brush }
            }
        }

        /// Handles pending messages of this thread (painting).
        pub fn pump(&self) {
            let mut msg = MSG::default();
            // SAFETY: standard message pump on the thread that created the window.
            unsafe {
                while PeekMessageW(&mut msg, std::ptr::null_mut(), 0, 0, PM_REMOVE) != 0 {
                    TranslateMessage(&msg);
                    DispatchMessageW(&msg);
                }
            }
        }
    }

    impl Drop for ColourWindow {
        fn drop(&mut self) {
            // SAFETY: the window and brush were created in `show` and are destroyed once.
            unsafe {
                DestroyWindow(self.hwnd);
                DeleteObject(self.brush);
            }
            self.pump();
        }
    }
}
