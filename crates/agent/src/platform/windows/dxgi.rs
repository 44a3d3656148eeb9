//! Screen capture with DXGI Desktop Duplication (`IDXGIOutput1::DuplicateOutput`), through
//! the `windows` crate's COM bindings.
//!
//! UNVERIFIED: Wine does not implement Desktop Duplication. Under Wine 8 on Xvfb the factory,
//! the adapter and output enumeration, the match of the primary monitor to its output and
//! `D3D11CreateDevice` succeed, and `IDXGIOutput1::DuplicateOutput` returns `E_NOTIMPL`; so
//! the frame path below has never run: `AcquireNextFrame`, the staging copy, `Map`, the
//! row copy from a real mapping, the `DXGI_ERROR_WAIT_TIMEOUT` and `DXGI_ERROR_ACCESS_LOST`
//! handling, rotated or multi-adapter outputs. Treat it as untested code. What is exercised
//! under Wine is that setting it up fails cleanly and capture falls back to GDI (see
//! [`super::capture::WindowsCapturer`]).
//!
//! How it works: the DXGI factory's adapters and their outputs are enumerated, and the
//! output whose `DesktopCoordinates` equal the [`DisplayInfo`] being captured is duplicated
//! on a Direct3D 11 device created on that output's own adapter (duplicating an output from
//! another adapter fails with `DXGI_ERROR_UNSUPPORTED`, e.g. on hybrid-GPU laptops). Each
//! capture acquires the next frame with a short timeout (on `DXGI_ERROR_WAIT_TIMEOUT`
//! nothing changed and the previous image is returned), copies the desktop texture to a
//! CPU-readable staging texture, maps it and copies its rows into a tightly packed,
//! top-down BGRA [`Image`] with alpha 255 (the GDI capturer's layout), then unmaps and
//! releases the frame. `DXGI_ERROR_ACCESS_LOST` (a desktop switch, a mode change) re-creates
//! the duplication once; any other failure is returned for the caller to fall back to GDI.
//! Rotated outputs are refused at set-up (the duplicated image is not rotated).

use guruconnect_codec::Image;
use guruconnect_proto::DisplayInfo;
use windows::Win32::Foundation::{E_FAIL, HMODULE, RECT};
use windows::Win32::Graphics::Direct3D::D3D_DRIVER_TYPE_UNKNOWN;
use windows::Win32::Graphics::Direct3D11::{
    D3D11_CPU_ACCESS_READ, D3D11_CREATE_DEVICE_FLAG, D3D11_MAP_READ, D3D11_MAPPED_SUBRESOURCE,
    D3D11_SDK_VERSION, D3D11_TEXTURE2D_DESC, D3D11_USAGE_STAGING, D3D11CreateDevice, ID3D11Device,
    ID3D11DeviceContext, ID3D11Texture2D,
};
use windows::Win32::Graphics::Dxgi::Common::{
    DXGI_FORMAT_B8G8R8A8_UNORM, DXGI_MODE_ROTATION_IDENTITY, DXGI_MODE_ROTATION_UNSPECIFIED,
    DXGI_SAMPLE_DESC,
};
use windows::Win32::Graphics::Dxgi::{
    CreateDXGIFactory1, DXGI_ERROR_ACCESS_LOST, DXGI_ERROR_NOT_FOUND, DXGI_ERROR_UNSUPPORTED,
    DXGI_ERROR_WAIT_TIMEOUT, DXGI_OUTDUPL_FRAME_INFO, IDXGIAdapter1, IDXGIFactory1, IDXGIOutput1,
    IDXGIOutputDuplication, IDXGIResource,
};
use windows::core::{HRESULT, Interface};

use crate::platform::PlatformError;

/// How long a capture waits for a new frame before returning the previous image.
const FRAME_TIMEOUT_MS: u32 = 15;
/// How long the first capture of a duplication waits for its first frame (there is no
/// previous image to return yet).
const FIRST_FRAME_TIMEOUT_MS: u32 = 500;
/// How many times the first frame is waited for before giving up.
const FIRST_FRAME_TRIES: u32 = 4;
/// Largest output side accepted.
const MAX_SIDE: u32 = 16384;

/// A failed DXGI or Direct3D step, with its `HRESULT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DxgiError {
    /// The step that failed (`"IDXGIOutput1::DuplicateOutput"`).
    pub step: &'static str,
    /// The `HRESULT` the call returned (or the closest one for a failure found here).
    pub code: HRESULT,
    /// What went wrong, in words (the system's message for the `HRESULT`, or this
    /// module's).
    pub message: String,
}

impl DxgiError {
    /// A failed call. Only the code and its message are kept: the `windows` crate's error
    /// is not built here, as `windows::core::Error::new` calls `RoOriginateErrorW`, which
    /// Wine lacks (it aborts the process).
    fn new(step: &'static str, error: windows::core::Error) -> Self {
        Self {
            step,
            code: error.code(),
            message: error.message().trim().to_owned(),
        }
    }

    /// A failure found by this module rather than returned by a call.
    fn other(step: &'static str, code: HRESULT, message: impl Into<String>) -> Self {
        Self {
            step,
            code,
            message: message.into(),
        }
    }

    /// The `HRESULT` of the failure.
    pub fn code(&self) -> HRESULT {
        self.code
    }
}

impl std::fmt::Display for DxgiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code.0 as u32;
        if self.message.is_empty() {
            write!(f, "{} failed: HRESULT {code:#010x}", self.step)
        } else {
            write!(
                f,
                "{} failed: {} (HRESULT {code:#010x})",
                self.step, self.message
            )
        }
    }
}

impl std::error::Error for DxgiError {}

impl From<DxgiError> for PlatformError {
    fn from(e: DxgiError) -> Self {
        PlatformError::Request(format!("DXGI Desktop Duplication: {e}"))
    }
}

/// `display`'s rectangle as `(x, y, width, height)`.
fn display_rect(display: &DisplayInfo) -> (i32, i32, u32, u32) {
    (display.x, display.y, display.width, display.height)
}

/// Whether a DXGI output's desktop coordinates are exactly `rect` (`(x, y, width, height)`).
pub fn rect_matches(coordinates: RECT, rect: (i32, i32, u32, u32)) -> bool {
    let width = i64::from(coordinates.right) - i64::from(coordinates.left);
    let height = i64::from(coordinates.bottom) - i64::from(coordinates.top);
    coordinates.left == rect.0
        && coordinates.top == rect.1
        && width == i64::from(rect.2)
        && height == i64::from(rect.3)
}

/// Copies `height` rows of `width` BGRA pixels out of a buffer whose rows are `pitch` bytes
/// apart into a tightly packed image, setting alpha to 255. `None` when `source` is too short
/// or `pitch` narrower than a row.
pub fn pack_rows(source: &[u8], pitch: usize, width: u32, height: u32) -> Option<Vec<u8>> {
    let row = usize::try_from(width).ok()?.checked_mul(4)?;
    let rows = usize::try_from(height).ok()?;
    if pitch < row {
        return None;
    }
    if rows > 0 {
        let needed = pitch.checked_mul(rows - 1)?.checked_add(row)?;
        if source.len() < needed {
            return None;
        }
    }
    let mut data = Vec::with_capacity(row.checked_mul(rows)?);
    for y in 0..rows {
        let start = y * pitch;
        data.extend_from_slice(&source[start..start + row]);
    }
    for px in data.chunks_exact_mut(4) {
        px[3] = 0xff;
    }
    Some(data)
}

/// Releases an acquired frame when dropped, whatever happens while it is read.
struct AcquiredFrame<'a>(&'a IDXGIOutputDuplication);

impl Drop for AcquiredFrame<'_> {
    fn drop(&mut self) {
        // SAFETY: a frame was acquired on this duplication (the guard exists only after a
        // successful AcquireNextFrame) and is released exactly once, here.
        if let Err(e) = unsafe { self.0.ReleaseFrame() } {
            tracing::debug!(error = %e, "DXGI ReleaseFrame failed");
        }
    }
}

/// Unmaps a mapped staging texture when dropped.
struct Mapped<'a> {
    context: &'a ID3D11DeviceContext,
    texture: &'a ID3D11Texture2D,
}

impl Drop for Mapped<'_> {
    fn drop(&mut self) {
        // SAFETY: subresource 0 of this texture was mapped on this context (the guard exists
        // only after a successful Map) and is unmapped exactly once, here.
        unsafe { self.context.Unmap(self.texture, 0) };
    }
}

/// The duplication of one output.
struct Duplication {
    rect: (i32, i32, u32, u32),
    device: ID3D11Device,
    context: ID3D11DeviceContext,
    duplication: IDXGIOutputDuplication,
    staging: Option<ID3D11Texture2D>,
    last: Option<Image>,
}

impl std::fmt::Debug for Duplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Duplication")
            .field("rect", &self.rect)
            .field("has_frame", &self.last.is_some())
            .finish_non_exhaustive()
    }
}

/// The adapter and output whose desktop coordinates are `rect`.
fn find_output(rect: (i32, i32, u32, u32)) -> Result<(IDXGIAdapter1, IDXGIOutput1), DxgiError> {
    // SAFETY: plain factory creation; the returned interface owns its reference.
    let factory: IDXGIFactory1 =
        unsafe { CreateDXGIFactory1() }.map_err(|e| DxgiError::new("CreateDXGIFactory1", e))?;
    let mut seen = Vec::new();
    for a in 0u32.. {
        // SAFETY: enumeration by index; DXGI_ERROR_NOT_FOUND ends it.
        let adapter = match unsafe { factory.EnumAdapters1(a) } {
            Ok(adapter) => adapter,
            Err(e) if e.code() == DXGI_ERROR_NOT_FOUND => break,
            Err(e) => return Err(DxgiError::new("IDXGIFactory1::EnumAdapters1", e)),
        };
        for o in 0u32.. {
            // SAFETY: enumeration by index; DXGI_ERROR_NOT_FOUND ends it.
            let output = match unsafe { adapter.EnumOutputs(o) } {
                Ok(output) => output,
                Err(e) if e.code() == DXGI_ERROR_NOT_FOUND => break,
                Err(e) => return Err(DxgiError::new("IDXGIAdapter::EnumOutputs", e)),
            };
            // SAFETY: GetDesc fills and returns a plain struct.
            let desc = unsafe { output.GetDesc() }
                .map_err(|e| DxgiError::new("IDXGIOutput::GetDesc", e))?;
            let c = desc.DesktopCoordinates;
            seen.push(format!(
                "{}x{}+{}+{}",
                i64::from(c.right) - i64::from(c.left),
                i64::from(c.bottom) - i64::from(c.top),
                c.left,
                c.top
            ));
            if !desc.AttachedToDesktop.as_bool() || !rect_matches(c, rect) {
                continue;
            }
            if desc.Rotation != DXGI_MODE_ROTATION_IDENTITY
                && desc.Rotation != DXGI_MODE_ROTATION_UNSPECIFIED
            {
                return Err(DxgiError::other(
                    "IDXGIOutput::GetDesc",
                    DXGI_ERROR_UNSUPPORTED,
                    format!(
                        "the output is rotated ({}), which this capturer does not undo",
                        desc.Rotation.0
                    ),
                ));
            }
            let output1 = output
                .cast::<IDXGIOutput1>()
                .map_err(|e| DxgiError::new("QueryInterface(IDXGIOutput1)", e))?;
            return Ok((adapter, output1));
        }
    }
    Err(DxgiError::other(
        "finding the output",
        DXGI_ERROR_NOT_FOUND,
        format!(
            "no DXGI output is attached at {}x{}+{}+{} (outputs: {})",
            rect.2,
            rect.3,
            rect.0,
            rect.1,
            if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            }
        ),
    ))
}

impl Duplication {
    /// Sets up the duplication of the output at `rect`.
    fn open(rect: (i32, i32, u32, u32)) -> Result<Self, DxgiError> {
        if rect.2 == 0 || rect.3 == 0 || rect.2 > MAX_SIDE || rect.3 > MAX_SIDE {
            return Err(DxgiError::other(
                "checking the display",
                DXGI_ERROR_UNSUPPORTED,
                format!("a {}x{} display cannot be duplicated", rect.2, rect.3),
            ));
        }
        let (adapter, output) = find_output(rect)?;
        let mut device: Option<ID3D11Device> = None;
        let mut context: Option<ID3D11DeviceContext> = None;
        // SAFETY: the adapter is valid; with an explicit adapter the driver type must be
        // UNKNOWN; the out pointers are to locals that outlive the call.
        unsafe {
            D3D11CreateDevice(
                &adapter,
                D3D_DRIVER_TYPE_UNKNOWN,
                HMODULE::default(),
                D3D11_CREATE_DEVICE_FLAG(0),
                None,
                D3D11_SDK_VERSION,
                Some(&mut device),
                None,
                Some(&mut context),
            )
        }
        .map_err(|e| DxgiError::new("D3D11CreateDevice", e))?;
        let (Some(device), Some(context)) = (device, context) else {
            return Err(DxgiError::other(
                "D3D11CreateDevice",
                E_FAIL,
                "no device or immediate context was returned",
            ));
        };
        // SAFETY: both interfaces are valid; the duplication holds its own references.
        let duplication = unsafe { output.DuplicateOutput(&device) }
            .map_err(|e| DxgiError::new("IDXGIOutput1::DuplicateOutput", e))?;
        // SAFETY: GetDesc fills and returns a plain struct.
        let desc = unsafe { duplication.GetDesc() };
        if desc.Rotation != DXGI_MODE_ROTATION_IDENTITY
            && desc.Rotation != DXGI_MODE_ROTATION_UNSPECIFIED
        {
            return Err(DxgiError::other(
                "IDXGIOutputDuplication::GetDesc",
                DXGI_ERROR_UNSUPPORTED,
                format!("the output is rotated ({})", desc.Rotation.0),
            ));
        }
        Ok(Self {
            rect,
            device,
            context,
            duplication,
            staging: None,
            last: None,
        })
    }

    /// The staging texture for frames described by `desc`, created on first use.
    fn staging(&mut self, desc: &D3D11_TEXTURE2D_DESC) -> Result<ID3D11Texture2D, DxgiError> {
        if let Some(staging) = &self.staging {
            return Ok(staging.clone());
        }
        let staging_desc = D3D11_TEXTURE2D_DESC {
            Width: desc.Width,
            Height: desc.Height,
            MipLevels: 1,
            ArraySize: 1,
            Format: desc.Format,
            SampleDesc: DXGI_SAMPLE_DESC {
                Count: 1,
                Quality: 0,
            },
            Usage: D3D11_USAGE_STAGING,
            BindFlags: 0,
            CPUAccessFlags: D3D11_CPU_ACCESS_READ.0 as u32,
            MiscFlags: 0,
        };
        let mut staging: Option<ID3D11Texture2D> = None;
        // SAFETY: `staging_desc` describes a valid staging texture without initial data;
        // the out pointer is to a local that outlives the call.
        unsafe {
            self.device
                .CreateTexture2D(&staging_desc, None, Some(&mut staging))
        }
        .map_err(|e| DxgiError::new("ID3D11Device::CreateTexture2D(staging)", e))?;
        let staging = staging.ok_or_else(|| {
            DxgiError::other(
                "ID3D11Device::CreateTexture2D(staging)",
                E_FAIL,
                "no texture was returned",
            )
        })?;
        self.staging = Some(staging.clone());
        Ok(staging)
    }

    /// The next frame, or the previous one when nothing changed within the timeout.
    fn next_frame(&mut self) -> Result<Image, DxgiError> {
        let (timeout, tries) = if self.last.is_some() {
            (FRAME_TIMEOUT_MS, 1)
        } else {
            (FIRST_FRAME_TIMEOUT_MS, FIRST_FRAME_TRIES)
        };
        for _ in 0..tries {
            let mut info = DXGI_OUTDUPL_FRAME_INFO::default();
            let mut resource: Option<IDXGIResource> = None;
            // SAFETY: the out pointers are to locals that outlive the call; a frame acquired
            // here is released by the guard below.
            match unsafe {
                self.duplication
                    .AcquireNextFrame(timeout, &mut info, &mut resource)
            } {
                Ok(()) => {}
                Err(e) if e.code() == DXGI_ERROR_WAIT_TIMEOUT => {
                    if let Some(last) = &self.last {
                        return Ok(last.clone());
                    }
                    continue;
                }
                Err(e) => return Err(DxgiError::new("AcquireNextFrame", e)),
            }
            let duplication = self.duplication.clone();
            let _frame = AcquiredFrame(&duplication);
            let image = self.read_frame(resource)?;
            self.last = Some(image.clone());
            return Ok(image);
        }
        Err(DxgiError::other(
            "AcquireNextFrame",
            DXGI_ERROR_WAIT_TIMEOUT,
            format!(
                "no first frame within {} ms",
                FIRST_FRAME_TIMEOUT_MS * FIRST_FRAME_TRIES
            ),
        ))
    }

    /// Copies an acquired desktop image into an [`Image`] (the frame is still held).
    fn read_frame(&mut self, resource: Option<IDXGIResource>) -> Result<Image, DxgiError> {
        let resource = resource.ok_or_else(|| {
            DxgiError::other("AcquireNextFrame", E_FAIL, "no desktop resource returned")
        })?;
        let texture = resource
            .cast::<ID3D11Texture2D>()
            .map_err(|e| DxgiError::new("QueryInterface(ID3D11Texture2D)", e))?;
        let mut desc = D3D11_TEXTURE2D_DESC::default();
        // SAFETY: `desc` is a valid out struct.
        unsafe { texture.GetDesc(&mut desc) };
        if desc.Format != DXGI_FORMAT_B8G8R8A8_UNORM {
            return Err(DxgiError::other(
                "reading the frame",
                DXGI_ERROR_UNSUPPORTED,
                format!("desktop format {} is not BGRA8", desc.Format.0),
            ));
        }
        if (desc.Width, desc.Height) != (self.rect.2, self.rect.3) {
            // A mode change that has not surfaced as ACCESS_LOST yet: treat it as one.
            return Err(DxgiError::other(
                "reading the frame",
                DXGI_ERROR_ACCESS_LOST,
                format!(
                    "the desktop image is {}x{}, the display {}x{}",
                    desc.Width, desc.Height, self.rect.2, self.rect.3
                ),
            ));
        }
        let staging = self.staging(&desc)?;
        // SAFETY: both textures are valid, on this device, of the same size and format.
        unsafe { self.context.CopyResource(&staging, &texture) };
        let mut mapped = D3D11_MAPPED_SUBRESOURCE::default();
        // SAFETY: the staging texture was created with CPU read access; `mapped` is a
        // valid out struct; the mapping is undone by the guard below.
        unsafe {
            self.context
                .Map(&staging, 0, D3D11_MAP_READ, 0, Some(&mut mapped))
        }
        .map_err(|e| DxgiError::new("ID3D11DeviceContext::Map", e))?;
        let _mapped = Mapped {
            context: &self.context,
            texture: &staging,
        };
        let pitch = mapped.RowPitch as usize;
        let row = desc.Width as usize * 4;
        if mapped.pData.is_null() || pitch < row {
            return Err(DxgiError::other(
                "ID3D11DeviceContext::Map",
                E_FAIL,
                format!("unusable mapping (row pitch {pitch} for {row}-byte rows)"),
            ));
        }
        let len = pitch * (desc.Height as usize).saturating_sub(1) + row;
        // SAFETY: a mapped 2D staging texture exposes `Height` rows `RowPitch` bytes apart,
        // each at least `Width * 4` bytes (checked above); that is `len` readable bytes from
        // `pData`, valid until the guard unmaps it after this borrow ends.
        let source = unsafe { std::slice::from_raw_parts(mapped.pData.cast::<u8>(), len) };
        let data = pack_rows(source, pitch, desc.Width, desc.Height).ok_or_else(|| {
            DxgiError::other("reading the frame", E_FAIL, "mapped rows out of bounds")
        })?;
        Ok(Image {
            width: desc.Width,
            height: desc.Height,
            data,
        })
    }
}

/// Desktop Duplication capture of one output at a time (the display last captured).
/// UNVERIFIED on real Windows (see the module doc).
#[derive(Debug)]
pub struct DxgiCapturer {
    current: Option<Duplication>,
}

impl DxgiCapturer {
    /// Sets up the duplication of `display`'s output; the error says which step failed,
    /// with its `HRESULT`.
    pub fn open(display: &DisplayInfo) -> Result<Self, DxgiError> {
        Ok(Self {
            current: Some(Duplication::open(display_rect(display))?),
        })
    }

    /// Captures `display`: the next frame of its output, or the previous one when nothing
    /// changed. A lost duplication (`DXGI_ERROR_ACCESS_LOST`) is re-created once; other
    /// failures are returned.
    pub fn capture(&mut self, display: &DisplayInfo) -> Result<Image, DxgiError> {
        let rect = display_rect(display);
        if self.current.as_ref().is_none_or(|d| d.rect != rect) {
            self.current = None;
            self.current = Some(Duplication::open(rect)?);
        }
        let current = self.current.as_mut().ok_or_else(|| {
            DxgiError::other("capture", E_FAIL, "no duplication after opening one")
        })?;
        match current.next_frame() {
            Ok(image) => Ok(image),
            Err(e) if e.code() == DXGI_ERROR_ACCESS_LOST => {
                tracing::info!(
                    error = %e,
                    "DXGI Desktop Duplication lost access (desktop switch or mode change); re-creating it"
                );
                self.current = None;
                let mut again = Duplication::open(rect)?;
                let image = again.next_frame()?;
                self.current = Some(again);
                Ok(image)
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_rects_match_exactly() {
        let r = RECT {
            left: -1920,
            top: 0,
            right: 0,
            bottom: 1080,
        };
        assert!(rect_matches(r, (-1920, 0, 1920, 1080)));
        assert!(!rect_matches(r, (0, 0, 1920, 1080)));
        assert!(!rect_matches(r, (-1920, 0, 1920, 1079)));
    }

    #[test]
    fn rows_are_packed_with_opaque_alpha() {
        // 2×2 pixels in rows 12 bytes apart (4 bytes of padding each).
        let source = [
            1, 2, 3, 0, 4, 5, 6, 7, 9, 9, 9, 9, //
            8, 9, 10, 11, 12, 13, 14, 15,
        ];
        assert_eq!(
            pack_rows(&source, 12, 2, 2),
            Some(vec![
                1, 2, 3, 255, 4, 5, 6, 255, 8, 9, 10, 255, 12, 13, 14, 255
            ])
        );
        assert_eq!(pack_rows(&source, 7, 2, 2), None, "pitch under a row");
        assert_eq!(pack_rows(&source[..19], 12, 2, 2), None, "too short");
        assert_eq!(pack_rows(&[], 0, 0, 0), Some(vec![]));
    }

    #[test]
    fn errors_name_the_step_and_hresult() {
        let e = DxgiError::other("DuplicateOutput", DXGI_ERROR_UNSUPPORTED, "nope");
        assert_eq!(
            e.to_string(),
            "DuplicateOutput failed: nope (HRESULT 0x887a0004)"
        );
    }
}
