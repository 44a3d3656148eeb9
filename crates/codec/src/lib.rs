//! GuruConnect frame codecs, shared by the agent, the native viewer and the benchmarks.
//!
//! Images are BGRA8, tightly packed (`stride = width * 4`), see [`Image`].
//!
//! * [`dirty_tiles`] compares two captures on a [`TILE`]×[`TILE`] grid and returns the
//!   changed regions.
//! * [`Encoder`] turns a sequence of captures into [`EncodedFrame`]s (and, through
//!   [`EncodedFrame::to_video_frame`], into `VideoFrame` wire messages); [`Decoder`] applies
//!   them to a canvas.
//!
//! # Payload formats (`VideoFrame.data`)
//!
//! **`CODEC_RAW_ZSTD` (lossless, always available).** `VideoFrame.rects` lists the changed
//! rectangles. `data` is one zstd frame whose decompressed content is the concatenation, for
//! each rect in order, of its rows of BGRA pixels: `rect.height` rows of `rect.width * 4`
//! bytes, top row first. There is no header and no padding, so the decompressed length is
//! exactly `Σ width * height * 4`. Alpha is always 0xff. A decoder copies each rect into its canvas, which it
//! (re)allocates opaque black at `VideoFrame.width × VideoFrame.height` whenever that size
//! changes. `keyframe` is set when the rects cover the whole image.
//!
//! **`CODEC_H264`.** `rects` is empty; `data` is one complete H.264 access unit in Annex-B
//! form (start codes, SPS/PPS in front of every IDR), baseline profile as produced by
//! openh264 (no B frames), BT.601 limited-range YUV 4:2:0. A picture is coded as one or
//! more slices (runs of consecutive macroblocks), so an access unit may hold several slice
//! NAL units: the encoder uses one slice per encoder thread, [`default_slices`] (the number
//! of cores, at most 4). The coded picture has even dimensions: an odd width or height is
//! padded by repeating the last column or row, and the decoder crops to
//! `VideoFrame.width × VideoFrame.height`. `keyframe` is set when the access unit is an IDR.
//! An encoder that fails switches permanently to the lossless codec (SPEC §6), so a decoder
//! must accept a change of codec at any keyframe.
//!
//! The H.264 encoder converts only the 16-row bands of a capture that changed since the
//! previous one to YUV, and openh264 encodes the slices in parallel; [`H264Tuning`] records
//! the measured choice of openh264 settings.

#![deny(unsafe_code)]

mod h264_params;

use std::time::Instant;

use bytes::Bytes;
use guruconnect_proto::{Codec, VideoFrame};
use openh264::Timestamp;
use openh264::encoder::FrameType;
use openh264::formats::{BgraSliceU8, YUVBuffer, YUVSource};

/// Tile edge in pixels for dirty-region detection.
pub const TILE: u32 = 64;

/// Largest width or height a [`Decoder`] accepts (larger frames are malformed).
pub const MAX_DIMENSION: u32 = 16_384;

/// Largest pixel count (`width * height`) a [`Decoder`] accepts: 8192 × 8192.
pub const MAX_PIXELS: u64 = 1 << 26;

/// zstd level of the lossless codec: level 1 is the fastest and plenty for screen content.
const ZSTD_LEVEL: i32 = 1;

/// Quality hint used until [`Encoder::set_quality`] is called.
const DEFAULT_QUALITY: u32 = 70;

/// A captured or decoded image: BGRA8, rows of `width * 4` bytes. In a capture the fourth
/// byte may be the desktop's padding (X11's BGRX) rather than alpha: encoders ignore it and
/// the lossless stream always carries 0xff there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height * 4` bytes, BGRA.
    pub data: Vec<u8>,
}

impl Image {
    /// An image of the given size filled with one BGRA colour.
    pub fn filled(width: u32, height: u32, bgra: [u8; 4]) -> Self {
        let pixels = width as usize * height as usize;
        Self {
            width,
            height,
            data: bgra.repeat(pixels),
        }
    }

    /// Whether `data` has exactly `width * height * 4` bytes.
    pub fn is_valid(&self) -> bool {
        self.data.len() as u64 == u64::from(self.width) * u64::from(self.height) * 4
    }

    /// The rect covering the whole image.
    pub fn full_rect(&self) -> Rect {
        Rect {
            x: 0,
            y: 0,
            width: self.width,
            height: self.height,
        }
    }

    fn stride(&self) -> usize {
        self.width as usize * 4
    }
}

/// A pixel rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rect {
    /// Left.
    pub x: u32,
    /// Top.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl Rect {
    /// Number of pixels.
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// One encoded update.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedFrame {
    /// Codec used.
    pub codec: Codec,
    /// Full image width.
    pub width: u32,
    /// Full image height.
    pub height: u32,
    /// Changed rectangles (lossless); empty for H.264.
    pub rects: Vec<Rect>,
    /// Payload: zstd of the rects' BGRA rows concatenated in order (lossless), or one
    /// H.264 Annex-B access unit.
    pub data: Bytes,
    /// A full picture a decoder can start from.
    pub keyframe: bool,
}

impl EncodedFrame {
    /// Into the wire message.
    pub fn to_video_frame(
        &self,
        display_id: u32,
        sequence: u64,
        capture_timestamp_us: u64,
    ) -> VideoFrame {
        VideoFrame {
            codec: self.codec as i32,
            display_id,
            width: self.width,
            height: self.height,
            rects: self
                .rects
                .iter()
                .map(|r| guruconnect_proto::Rect {
                    x: i32::try_from(r.x).unwrap_or(i32::MAX),
                    y: i32::try_from(r.y).unwrap_or(i32::MAX),
                    width: r.width,
                    height: r.height,
                })
                .collect(),
            data: self.data.clone(),
            keyframe: self.keyframe,
            sequence,
            capture_timestamp_us,
            ..VideoFrame::default()
        }
    }
}

/// Splits a whole picture into horizontal lossless bands whose payloads each stay under
/// `max_bytes` even when zstd cannot shrink them (photos, noise): the relay caps agent
/// messages, and one 1080p frame of noise is 8 MB. Only the first band carries the
/// keyframe flag, so a viewer waiting for a full picture starts with it and then receives
/// the rest.
pub fn lossless_bands(image: &Image, keyframe: bool, max_bytes: usize) -> Vec<EncodedFrame> {
    let row_bytes = (image.width as usize).max(1) * 4;
    // Room for zstd's worst-case expansion of incompressible rows.
    let rows_per_band = ((max_bytes * 3 / 4) / row_bytes).max(1);
    let height = image.height as usize;
    let mut bands = Vec::new();
    let mut y = 0usize;
    while y < height {
        let rows = rows_per_band.min(height - y);
        let band = Image {
            width: image.width,
            height: u32::try_from(rows).unwrap_or(u32::MAX),
            data: image.data[y * row_bytes..(y + rows) * row_bytes].to_vec(),
        };
        if let Some(mut part) = Encoder::new(Codec::RawZstd).encode(&band, true) {
            let offset = u32::try_from(y).unwrap_or(u32::MAX);
            for rect in &mut part.rects {
                rect.y += offset;
            }
            part.width = image.width;
            part.height = image.height;
            part.keyframe = keyframe && y == 0;
            bands.push(part);
        }
        y += rows;
    }
    bands
}

/// Codec failures.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Malformed input.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
    /// Codec not available in this build.
    #[error("codec unavailable")]
    Unavailable,
}

/// The tiles of a [`TILE`]×[`TILE`] grid (edge tiles clipped) whose pixels differ between
/// `prev` and `cur`; runs of adjacent dirty tiles in one tile row are merged into one wider
/// rect. Rects are ordered top to bottom, left to right. Images of different sizes (or with
/// a `data` length that does not match their size) give one rect covering `cur`; equal
/// images give none.
pub fn dirty_tiles(prev: &Image, cur: &Image) -> Vec<Rect> {
    if prev.width != cur.width || prev.height != cur.height || !prev.is_valid() || !cur.is_valid() {
        return vec![cur.full_rect()];
    }
    let (width, height) = (cur.width, cur.height);
    let stride = cur.stride();
    let cols = width.div_ceil(TILE) as usize;
    let mut dirty = vec![false; cols];
    let mut rects = Vec::new();
    let mut ty = 0;
    while ty < height {
        let th = TILE.min(height - ty);
        dirty.fill(false);
        let mut clean_left = cols;
        for y in ty..ty + th {
            let row = y as usize * stride;
            let prev_row = &prev.data[row..row + stride];
            let cur_row = &cur.data[row..row + stride];
            for (col, flag) in dirty.iter_mut().enumerate() {
                if *flag {
                    continue;
                }
                let x0 = col * TILE as usize * 4;
                let x1 = (x0 + TILE as usize * 4).min(stride);
                if prev_row[x0..x1] != cur_row[x0..x1] {
                    *flag = true;
                    clean_left -= 1;
                }
            }
            if clean_left == 0 {
                break;
            }
        }
        let mut col = 0;
        while col < cols {
            if !dirty[col] {
                col += 1;
                continue;
            }
            let start = col;
            while col < cols && dirty[col] {
                col += 1;
            }
            let x = start as u32 * TILE;
            let x_end = (col as u32 * TILE).min(width);
            rects.push(Rect {
                x,
                y: ty,
                width: x_end - x,
                height: th,
            });
        }
        ty += th;
    }
    rects
}

/// PSNR in dB between two same-size images over the B,G,R channels (f64::INFINITY if
/// identical). Images of different sizes or with invalid data give 0.0.
pub fn psnr(a: &Image, b: &Image) -> f64 {
    if a.width != b.width || a.height != b.height || !a.is_valid() || !b.is_valid() {
        return 0.0;
    }
    let mut sum: u64 = 0;
    for (pa, pb) in a.data.chunks_exact(4).zip(b.data.chunks_exact(4)) {
        for c in 0..3 {
            let d = u64::from(pa[c].abs_diff(pb[c]));
            sum += d * d;
        }
    }
    if sum == 0 {
        return f64::INFINITY;
    }
    let samples = (a.data.len() / 4 * 3) as f64;
    let mse = sum as f64 / samples;
    10.0 * (255.0 * 255.0 / mse).log10()
}

/// Concatenates the rows of `rects` of `image` into `out` (the lossless payload before zstd).
fn gather_rects(image: &Image, rects: &[Rect], out: &mut Vec<u8>) {
    out.clear();
    let stride = image.stride();
    for r in rects {
        for y in r.y..r.y + r.height {
            let start = y as usize * stride + r.x as usize * 4;
            out.extend_from_slice(&image.data[start..start + r.width as usize * 4]);
        }
    }
    // Captures may leave the fourth byte as X11's padding; the stream is opaque BGRA.
    for px in out.chunks_exact_mut(4) {
        px[3] = 0xff;
    }
}

/// How openh264 encodes: usage mode, complexity, rate control, slices (one thread per
/// slice) and the deblocking filter. [`H264Tuning::default`] is the measured choice
/// (docs/benchmarks.md, "H.264 encoder speed and text quality"): camera mode at low
/// complexity, buffer-based rate control, [`default_slices`] slices, no deblocking. On a
/// text-heavy 1080p screen at the same QP it gave a higher Y-PSNR and SSIM than
/// screen-content mode at medium complexity with deblocking (the previous setting), for a
/// quarter of its CPU time while typing. The other values exist for that benchmark
/// (`cargo run --release -p guruconnect-codec --example h264_tune`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct H264Tuning {
    /// openh264's usage type.
    pub usage: H264Usage,
    /// openh264's complexity mode.
    pub complexity: H264Complexity,
    /// openh264's rate-control mode.
    pub rate_control: H264RateControl,
    /// Slices per picture, each encoded on its own thread (1..=16; 1 = one slice, one thread).
    pub slices: u16,
    /// H.264's in-loop deblocking filter. It smooths block edges, which on text at the QPs
    /// used here blurs glyph strokes: off, the text page measured ~3 dB higher Y-PSNR
    /// and the encoder ~10 % less CPU.
    pub deblocking: bool,
}

impl Default for H264Tuning {
    fn default() -> Self {
        Self {
            usage: H264Usage::Camera,
            complexity: H264Complexity::Low,
            rate_control: H264RateControl::Bufferbased,
            slices: default_slices(),
            deblocking: false,
        }
    }
}

/// One slice (and thread) per available core, at most 4.
pub fn default_slices() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| u16::try_from(n.get().min(4)).unwrap_or(1))
}

/// openh264 usage types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Usage {
    /// `SCREEN_CONTENT_REAL_TIME`.
    Screen,
    /// `CAMERA_VIDEO_REAL_TIME`.
    Camera,
}

/// openh264 complexity modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Complexity {
    /// `LOW_COMPLEXITY`.
    Low,
    /// `MEDIUM_COMPLEXITY`.
    Medium,
    /// `HIGH_COMPLEXITY`.
    High,
}

/// openh264 rate-control modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264RateControl {
    /// `RC_BUFFERBASED_MODE`: settles at the minimum QP.
    Bufferbased,
    /// `RC_QUALITY_MODE`.
    Quality,
    /// `RC_BITRATE_MODE`.
    Bitrate,
    /// `RC_OFF_MODE`.
    Off,
}

/// Rows per band of the incremental BGRA → YUV conversion (one macroblock row).
const BAND: usize = 16;

/// Time spent in the stages of H.264 encoding since the [`Encoder`] was created (wall
/// clock of the calling thread; openh264's own threads are not counted separately).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct H264StageTimes {
    /// Finding the changed 16-row bands (comparison with the previous picture).
    pub compare: std::time::Duration,
    /// BGRA → YUV 4:2:0 conversion of the changed bands.
    pub convert: std::time::Duration,
    /// openh264's `EncodeFrame` and copying out the access unit.
    pub encode: std::time::Duration,
    /// Pictures encoded.
    pub frames: u64,
}

/// An I420 picture that is updated band by band.
struct Planes {
    width: usize,
    height: usize,
    /// Y, then U, then V, tightly packed.
    data: Vec<u8>,
}

impl YUVSource for Planes {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.width, self.width / 2, self.width / 2)
    }

    fn y(&self) -> &[u8] {
        &self.data[..self.width * self.height]
    }

    fn u(&self) -> &[u8] {
        let y = self.width * self.height;
        &self.data[y..y + y / 4]
    }

    fn v(&self) -> &[u8] {
        let y = self.width * self.height;
        &self.data[y + y / 4..]
    }
}

/// The H.264 half of an [`Encoder`].
struct H264 {
    encoder: openh264::encoder::Encoder,
    /// Quality the encoder was configured for.
    quality: u32,
    tuning: H264Tuning,
    /// Target bitrate and frame rate applied (bitrate rate control only).
    rate: Option<(u32, f32)>,
    /// Coded (even) size.
    coded: (u32, u32),
    /// The picture as last given to openh264.
    planes: Planes,
    /// Whether `planes` holds the previous image (false until the first picture).
    primed: bool,
    /// Conversion scratch: one band, and the shorter last band.
    band: YUVBuffer,
    last_band: YUVBuffer,
    /// Scratch for odd-sized images padded to the coded size.
    padded: Vec<u8>,
    /// Which bands changed in the picture being encoded.
    dirty: Vec<bool>,
}

impl H264 {
    fn new(
        width: u32,
        height: u32,
        quality: u32,
        tuning: H264Tuning,
    ) -> Result<Self, openh264::Error> {
        let coded = (width.next_multiple_of(2), height.next_multiple_of(2));
        let q = quality.clamp(1, 100);
        // Buffer-based rate control moves the QP down one step per delivered frame, so it
        // settles at `min_qp`: quality 100 → QP 16 (visually lossless), 70 → 25, 1 → 45.
        let min_qp = 45 - (q - 1) * 29 / 99;
        // Bitrate rate control raises the QP as far as the target needs.
        let max_qp = if tuning.rate_control == H264RateControl::Bitrate {
            51
        } else {
            (min_qp + 3).min(51)
        };
        // Only used for validation by buffer-based rate control; ~0.1 bit per pixel at 30 fps.
        let bps = (f64::from(coded.0) * f64::from(coded.1) * 3.0).clamp(100_000.0, 50e6);
        let encoder = h264_params::open(&h264_params::Settings {
            width: coded.0,
            height: coded.1,
            min_qp: min_qp as u8,
            max_qp: max_qp as u8,
            bps: bps as u32,
            fps: 30.0,
            tuning,
        })?;
        let (cw, ch) = (coded.0 as usize, coded.1 as usize);
        let bands = ch.div_ceil(BAND);
        let last = ch - (bands - 1) * BAND;
        Ok(Self {
            encoder,
            quality,
            tuning,
            rate: None,
            coded,
            planes: Planes {
                width: cw,
                height: ch,
                data: vec![0; cw * ch * 3 / 2],
            },
            primed: false,
            band: YUVBuffer::new(cw, BAND.min(ch)),
            last_band: YUVBuffer::new(cw, last),
            padded: Vec::new(),
            dirty: vec![true; bands],
        })
    }

    /// Marks the 16-row bands of `image` that differ from `prev` (all of them when there
    /// is no comparable previous picture); returns how many changed.
    fn find_dirty(&mut self, image: &Image, prev: Option<&Image>) -> usize {
        let prev = match prev {
            Some(p) if self.primed && (p.width, p.height) == (image.width, image.height) => p,
            _ => {
                self.dirty.fill(true);
                return self.dirty.len();
            }
        };
        let stride = image.stride();
        let rows = image.height as usize;
        let mut count = 0;
        for (i, flag) in self.dirty.iter_mut().enumerate() {
            // Coded rows i*BAND.. map to image rows up to `rows` (the padded row repeats
            // the last image row, which lies in the same band).
            let start = (i * BAND).min(rows) * stride;
            let end = ((i + 1) * BAND).min(rows) * stride;
            *flag = image.data[start..end] != prev.data[start..end];
            count += usize::from(*flag);
        }
        count
    }

    /// Converts the dirty bands of `source` (BGRA at the coded size) into `planes`.
    fn convert(&mut self, source: &[u8]) {
        let (cw, ch) = (self.coded.0 as usize, self.coded.1 as usize);
        let y_len = cw * ch;
        let (y_plane, uv) = self.planes.data.split_at_mut(y_len);
        let (u_plane, v_plane) = uv.split_at_mut(y_len / 4);
        for (i, &dirty) in self.dirty.iter().enumerate() {
            if !dirty {
                continue;
            }
            let y0 = i * BAND;
            let y1 = (y0 + BAND).min(ch);
            let buf = if y1 - y0 == BAND {
                &mut self.band
            } else {
                &mut self.last_band
            };
            buf.read_bgra8(BgraSliceU8::new(
                &source[y0 * cw * 4..y1 * cw * 4],
                (cw, y1 - y0),
            ));
            y_plane[y0 * cw..y1 * cw].copy_from_slice(buf.y());
            let (c0, c1) = (y0 / 2 * cw / 2, y1 / 2 * cw / 2);
            u_plane[c0..c1].copy_from_slice(buf.u());
            v_plane[c0..c1].copy_from_slice(buf.v());
        }
    }

    /// Encodes the bands marked by [`H264::find_dirty`]; returns the Annex-B access unit and
    /// whether it is an IDR.
    fn encode(
        &mut self,
        image: &Image,
        force_idr: bool,
        timestamp: Timestamp,
        times: &mut H264StageTimes,
    ) -> Result<(Vec<u8>, bool), openh264::Error> {
        let started = Instant::now();
        let (cw, ch) = (self.coded.0 as usize, self.coded.1 as usize);
        let mut padded = std::mem::take(&mut self.padded);
        let source: &[u8] = if (image.width as usize, image.height as usize) == (cw, ch) {
            &image.data
        } else {
            pad_to(image, cw, ch, &mut padded);
            &padded
        };
        self.convert(source);
        self.padded = padded;
        self.primed = true;
        let converted = Instant::now();
        times.convert += converted - started;
        if force_idr {
            self.encoder.force_intra_frame();
        }
        let stream = self.encoder.encode_at(&self.planes, timestamp)?;
        let idr = stream.frame_type() == FrameType::IDR;
        let data = stream.to_vec();
        times.encode += converted.elapsed();
        times.frames += 1;
        if data.is_empty() {
            return Err(openh264::Error::msg("encoder produced no access unit"));
        }
        if force_idr && !idr {
            return Err(openh264::Error::msg("encoder ignored a forced IDR"));
        }
        Ok((data, idr))
    }
}

/// Copies `image` into `out` at `cw × ch` (each at most one larger than the image), repeating
/// the last column and row.
fn pad_to(image: &Image, cw: usize, ch: usize, out: &mut Vec<u8>) {
    out.clear();
    let stride = image.stride();
    let extra = cw - image.width as usize;
    for y in 0..image.height as usize {
        let row = &image.data[y * stride..(y + 1) * stride];
        out.extend_from_slice(row);
        if extra > 0 {
            out.extend_from_slice(&row[stride - 4..]);
        }
    }
    if ch > image.height as usize {
        let last = out.len() - cw * 4;
        out.extend_from_within(last..);
    }
}

/// Turns captures into [`EncodedFrame`]s: H.264 (openh264) or lossless tiles + zstd.
pub struct Encoder {
    /// Whether H.264 is still in use (false after the first failure, or when not preferred).
    use_h264: bool,
    h264: Option<H264>,
    quality: u32,
    tuning: H264Tuning,
    /// H.264 target bitrate (bits/s) and frame rate, once capped ([`Encoder::set_bitrate_cap`]).
    rate: Option<(u32, f32)>,
    h264_times: H264StageTimes,
    /// The previous encoded image (`None` before the first frame).
    prev: Option<Image>,
    zstd: Option<zstd::bulk::Compressor<'static>>,
    scratch: Vec<u8>,
    started: Instant,
    inject_failure: bool,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("codec", &self.codec())
            .field("quality", &self.quality)
            .finish_non_exhaustive()
    }
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new(Codec::RawZstd)
    }
}

impl Encoder {
    /// `preferred` = Codec::H264 or Codec::RawZstd. If H.264 cannot be initialised, silently uses RawZstd (log nothing; `codec()` tells).
    pub fn new(preferred: Codec) -> Self {
        let mut encoder = Self {
            use_h264: false,
            h264: None,
            quality: DEFAULT_QUALITY,
            tuning: H264Tuning::default(),
            rate: None,
            h264_times: H264StageTimes::default(),
            prev: None,
            zstd: zstd::bulk::Compressor::new(ZSTD_LEVEL).ok(),
            scratch: Vec::new(),
            started: Instant::now(),
            inject_failure: false,
        };
        if preferred == Codec::H264 {
            // Probe: the size is a placeholder, the encoder is rebuilt at the image size.
            if let Ok(h264) = H264::new(64, 64, encoder.quality, encoder.tuning) {
                encoder.use_h264 = true;
                encoder.h264 = Some(h264);
            }
        }
        encoder
    }

    /// The codec the next frame will use.
    pub fn codec(&self) -> Codec {
        if self.use_h264 {
            Codec::H264
        } else {
            Codec::RawZstd
        }
    }

    /// Sets a quality hint 1..=100 (H.264 bitrate/QP; lossless ignores it).
    ///
    /// For H.264 it sets the QP the encoder settles at (100 → QP 16, 70 → 25, the default,
    /// 1 → 45). A changed quality rebuilds the H.264 encoder at the next encoded frame, which
    /// is therefore an IDR.
    pub fn set_quality(&mut self, quality: u32) {
        self.quality = quality.clamp(1, 100);
    }

    /// Sets how openh264 encodes (benchmarks; the default is the measured choice). A changed
    /// tuning rebuilds the H.264 encoder at the next encoded frame, which is therefore an IDR.
    pub fn set_h264_tuning(&mut self, tuning: H264Tuning) {
        self.tuning = tuning;
    }

    /// Caps the H.264 bitrate: `Some((bits_per_second, frames_per_second))` spreads that many
    /// bits over that frame rate; `None` lifts the cap. The first cap moves openh264 to
    /// bitrate rate control in screen-content mode (a new encoder, so the next picture is an
    /// IDR); later changes,
    /// lifting the cap included, apply to the running encoder without a keyframe. Lossless
    /// ignores it.
    pub fn set_bitrate_cap(&mut self, cap: Option<(u32, f32)>) {
        match cap {
            Some((bps, fps)) => {
                self.tuning.rate_control = H264RateControl::Bitrate;
                // Screen-content mode's motion search finds a scroll or a moved window;
                // camera mode at low complexity does not, and on a link that holds frames
                // back every frame moves further (docs/benchmarks.md, "Adaptive quality").
                self.tuning.usage = H264Usage::Screen;
                self.rate = Some((
                    bps.clamp(50_000, h264_params::MAX_BPS),
                    fps.clamp(1.0, 60.0),
                ));
            }
            None if self.tuning.rate_control == H264RateControl::Bitrate => {
                self.rate = Some((h264_params::MAX_BPS, 30.0));
            }
            None => self.rate = None,
        }
    }

    /// Time spent in the stages of H.264 encoding so far.
    pub fn h264_stage_times(&self) -> H264StageTimes {
        self.h264_times
    }

    /// Test hook: the next H.264 encode fails as if openh264 had returned an error.
    #[doc(hidden)]
    pub fn inject_h264_failure(&mut self) {
        self.inject_failure = true;
    }

    /// [`Encoder::encode`] for a transport that caps messages at `max_bytes`: a frame that
    /// would exceed it is sent as [`lossless_bands`] of the whole picture instead.
    pub fn encode_capped(
        &mut self,
        image: &Image,
        force_keyframe: bool,
        max_bytes: usize,
    ) -> Vec<EncodedFrame> {
        match self.encode(image, force_keyframe) {
            Some(frame) if frame.data.len() > max_bytes => {
                lossless_bands(image, frame.keyframe, max_bytes)
            }
            Some(frame) => vec![frame],
            None => Vec::new(),
        }
    }

    /// Encodes `image` if it changed since the previous call (dirty tiles), or a full keyframe when `force_keyframe` or on the first call or on a size change. None when nothing changed and no keyframe was forced.
    /// On ANY H.264 encoder error this encoder switches permanently to lossless and returns a lossless keyframe for this image (the fallback SPEC §6 requires).
    ///
    /// Also `None` for an image whose `data` length is not `width * height * 4` (a caller
    /// bug). An empty (0-pixel) image always gives a lossless keyframe with no rects.
    pub fn encode(&mut self, image: &Image, force_keyframe: bool) -> Option<EncodedFrame> {
        if !image.is_valid() {
            return None;
        }
        let size_changed = self
            .prev
            .as_ref()
            .is_none_or(|p| (p.width, p.height) != (image.width, image.height));
        let keyframe = force_keyframe || size_changed;

        if image.width == 0 || image.height == 0 {
            self.remember(image);
            return self.encode_lossless(image, vec![]);
        }

        if self.use_h264 {
            match self.encode_h264(image, keyframe) {
                Ok(frame) => return frame,
                Err(_) => {
                    // SPEC §6: any encoder failure falls back to lossless, permanently.
                    self.use_h264 = false;
                    self.h264 = None;
                    self.remember(image);
                    return self.encode_lossless(image, vec![image.full_rect()]);
                }
            }
        }

        let rects = match (&self.prev, keyframe) {
            (Some(prev), false) => dirty_tiles(prev, image),
            _ => vec![image.full_rect()],
        };
        if rects.is_empty() {
            return None;
        }
        if keyframe {
            self.remember(image);
        } else {
            self.remember_rects(image, &rects);
        }
        self.encode_lossless(image, rects)
    }

    /// Updates the previous picture (same size as `image`) where `rects` say it changed:
    /// typing changes a few kilobytes of an 8 MB picture.
    fn remember_rects(&mut self, image: &Image, rects: &[Rect]) {
        let Some(prev) = self.prev.as_mut() else {
            return self.remember(image);
        };
        let stride = image.stride();
        for r in rects {
            for y in r.y..r.y + r.height {
                let start = y as usize * stride + r.x as usize * 4;
                let end = start + r.width as usize * 4;
                prev.data[start..end].copy_from_slice(&image.data[start..end]);
            }
        }
    }

    fn remember(&mut self, image: &Image) {
        match &mut self.prev {
            Some(prev) => {
                prev.width = image.width;
                prev.height = image.height;
                prev.data.clear();
                prev.data.extend_from_slice(&image.data);
            }
            None => self.prev = Some(image.clone()),
        }
    }

    /// `Ok(None)` when nothing changed and no keyframe is due.
    fn encode_h264(
        &mut self,
        image: &Image,
        keyframe: bool,
    ) -> Result<Option<EncodedFrame>, openh264::Error> {
        if std::mem::take(&mut self.inject_failure) {
            return Err(openh264::Error::msg("injected failure"));
        }
        let coded = (
            image.width.next_multiple_of(2),
            image.height.next_multiple_of(2),
        );
        let h264 = match self.h264.take() {
            Some(h) if h.coded == coded && h.quality == self.quality && h.tuning == self.tuning => {
                h
            }
            // New size, quality or tuning: a fresh encoder, whose first picture is an IDR.
            _ => H264::new(image.width, image.height, self.quality, self.tuning)?,
        };
        let h264 = self.h264.insert(h264);
        if let Some((bps, fps)) = self.rate
            && h264.tuning.rate_control == H264RateControl::Bitrate
            && h264.rate != Some((bps, fps))
        {
            h264_params::set_rate(&mut h264.encoder, bps, fps)?;
            h264.rate = Some((bps, fps));
        }
        let started = Instant::now();
        let primed = h264.primed;
        if !primed && !keyframe && self.prev.as_ref().is_some_and(|p| p == image) {
            // A fresh encoder (new quality or tuning) and nothing new to show.
            return Ok(None);
        }
        // A fresh encoder marks every band (its picture buffer is empty); a primed one
        // only the changed bands, possibly none for a forced keyframe of an unchanged
        // picture, which its buffer already holds.
        let changed = h264.find_dirty(image, self.prev.as_ref());
        self.h264_times.compare += started.elapsed();
        if changed == 0 && !keyframe {
            return Ok(None);
        }
        let ts = Timestamp::from_millis(
            u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        );
        let (data, idr) = h264.encode(image, keyframe, ts, &mut self.h264_times)?;
        // Remember the picture: only the changed bands when the previous one is comparable.
        match &mut self.prev {
            Some(prev) if primed && (prev.width, prev.height) == (image.width, image.height) => {
                let stride = image.stride();
                let rows = image.height as usize;
                for (i, _) in h264.dirty.iter().enumerate().filter(|(_, d)| **d) {
                    let start = (i * BAND).min(rows) * stride;
                    let end = ((i + 1) * BAND).min(rows) * stride;
                    prev.data[start..end].copy_from_slice(&image.data[start..end]);
                }
            }
            _ => self.remember(image),
        }
        Ok(Some(EncodedFrame {
            codec: Codec::H264,
            width: image.width,
            height: image.height,
            rects: Vec::new(),
            data: Bytes::from(data),
            keyframe: idr,
        }))
    }

    fn encode_lossless(&mut self, image: &Image, rects: Vec<Rect>) -> Option<EncodedFrame> {
        gather_rects(image, &rects, &mut self.scratch);
        let compressed = match &mut self.zstd {
            Some(c) => c.compress(&self.scratch),
            None => zstd::bulk::compress(&self.scratch, ZSTD_LEVEL),
        }
        // zstd only fails on allocation failure or bad parameters; nothing to send then.
        .ok()?;
        let covered: u64 = rects.iter().map(Rect::area).sum();
        let keyframe = covered == u64::from(image.width) * u64::from(image.height);
        Some(EncodedFrame {
            codec: Codec::RawZstd,
            width: image.width,
            height: image.height,
            rects,
            data: Bytes::from(compressed),
            keyframe,
        })
    }
}

/// Applies [`VideoFrame`]s of either codec to a canvas.
pub struct Decoder {
    canvas: Image,
    h264: Option<openh264::decoder::Decoder>,
    /// Scratch for the decoded RGBA picture at its coded size.
    rgba: Vec<u8>,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("width", &self.canvas.width)
            .field("height", &self.canvas.height)
            .finish_non_exhaustive()
    }
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder with an empty (0×0) canvas.
    pub fn new() -> Self {
        Self {
            canvas: Image::default(),
            h264: None,
            rgba: Vec::new(),
        }
    }

    /// The canvas as of the last decoded frame.
    pub fn image(&self) -> &Image {
        &self.canvas
    }

    /// Applies a frame to the internal canvas and returns it. Lossless: zstd-decompress `data`, then for each rect in order copy width*height*4 bytes row by row into the canvas (the canvas is (re)allocated black at frame.width×frame.height when the size changes). H.264: decode the access unit (openh264 decoder), convert YUV420 → BGRA into the canvas.
    ///
    /// On `Err` the canvas is unchanged (except that an H.264 decoder error resets the
    /// H.264 decoder, which then waits for the next IDR).
    pub fn decode(&mut self, frame: &VideoFrame) -> Result<&Image, CodecError> {
        let (width, height) = (frame.width, frame.height);
        if width > MAX_DIMENSION
            || height > MAX_DIMENSION
            || u64::from(width) * u64::from(height) > MAX_PIXELS
        {
            return Err(CodecError::Malformed("frame too large"));
        }
        match Codec::try_from(frame.codec) {
            Ok(Codec::RawZstd) => self.decode_lossless(frame)?,
            Ok(Codec::H264) => self.decode_h264(frame)?,
            _ => return Err(CodecError::Malformed("unknown codec")),
        }
        Ok(&self.canvas)
    }

    fn resize_canvas(&mut self, width: u32, height: u32) {
        if (self.canvas.width, self.canvas.height) != (width, height) {
            self.canvas = Image::filled(width, height, [0, 0, 0, 255]);
        }
    }

    fn decode_lossless(&mut self, frame: &VideoFrame) -> Result<(), CodecError> {
        let (width, height) = (u64::from(frame.width), u64::from(frame.height));
        let mut rects = Vec::with_capacity(frame.rects.len());
        let mut total: u64 = 0;
        for r in &frame.rects {
            let (Ok(x), Ok(y)) = (u32::try_from(r.x), u32::try_from(r.y)) else {
                return Err(CodecError::Malformed("negative rect origin"));
            };
            if u64::from(x) + u64::from(r.width) > width
                || u64::from(y) + u64::from(r.height) > height
            {
                return Err(CodecError::Malformed("rect outside the image"));
            }
            let rect = Rect {
                x,
                y,
                width: r.width,
                height: r.height,
            };
            total += rect.area() * 4;
            if total > MAX_PIXELS * 4 {
                return Err(CodecError::Malformed("rects too large"));
            }
            rects.push(rect);
        }
        let total = usize::try_from(total).map_err(|_| CodecError::Malformed("rects too large"))?;
        let pixels = zstd::bulk::decompress(&frame.data, total)
            .map_err(|_| CodecError::Malformed("bad zstd payload"))?;
        if pixels.len() != total {
            return Err(CodecError::Malformed("payload shorter than its rects"));
        }
        self.resize_canvas(frame.width, frame.height);
        let stride = self.canvas.stride();
        let mut offset = 0;
        for r in &rects {
            let row_len = r.width as usize * 4;
            for y in r.y..r.y + r.height {
                let start = y as usize * stride + r.x as usize * 4;
                self.canvas.data[start..start + row_len]
                    .copy_from_slice(&pixels[offset..offset + row_len]);
                offset += row_len;
            }
        }
        Ok(())
    }

    fn decode_h264(&mut self, frame: &VideoFrame) -> Result<(), CodecError> {
        if frame.width == 0 || frame.height == 0 {
            return Err(CodecError::Malformed("empty H.264 frame"));
        }
        let decoder = match &mut self.h264 {
            Some(d) => d,
            None => self
                .h264
                .insert(openh264::decoder::Decoder::new().map_err(|_| CodecError::Unavailable)?),
        };
        let (w, h) = (frame.width as usize, frame.height as usize);
        let (cw, ch) = match decoder.decode(&frame.data) {
            Ok(Some(yuv)) => {
                let (cw, ch) = yuv.dimensions();
                if cw < w || ch < h {
                    return Err(CodecError::Malformed(
                        "H.264 picture smaller than the frame",
                    ));
                }
                self.rgba.resize(cw * ch * 4, 0);
                yuv.write_rgba8(&mut self.rgba);
                (cw, ch)
            }
            Ok(None) => return Err(CodecError::Malformed("H.264 access unit without a picture")),
            Err(_) => {
                self.h264 = None;
                return Err(CodecError::Malformed("H.264 decode error"));
            }
        };
        debug_assert!(ch >= h);
        self.resize_canvas(frame.width, frame.height);
        for y in 0..h {
            let src = &self.rgba[y * cw * 4..y * cw * 4 + w * 4];
            let dst = &mut self.canvas.data[y * w * 4..(y + 1) * w * 4];
            // RGBA → BGRA, opaque.
            for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(4)) {
                d.copy_from_slice(&[s[2], s[1], s[0], 255]);
            }
        }
        Ok(())
    }
}
