//! The one place in this crate that calls openh264's raw API (and so the one place with
//! `unsafe`): the `openh264` binding (0.9.9) always configures a single slice
//! (`SM_SINGLE_SLICE`, `uiSliceNum = 1`) when it initialises the encoder, which leaves
//! openh264's worker threads idle. [`open`] builds an encoder through the binding, lets the
//! binding initialise it at the final size, then re-applies the complete parameter set with
//! `SM_FIXEDSLCNUM_SLICE` and one thread per slice through
//! `SetOption(ENCODER_OPTION_SVC_ENCODE_PARAM_EXT)`, which re-initialises openh264 in place.
//!
//! The parameter set mirrors what the binding's `reinit` writes (same fields, same values for
//! the options [`open`] passes it), so the only differences are the slice mode and count,
//! the thread count and the deblocking filter (the binding always turns it on).
#![allow(unsafe_code)]

use openh264::OpenH264API;
use openh264::encoder::{
    BitRate, Complexity, EncoderConfig, FrameRate, QpRange, RateControlMode, SpsPpsStrategy,
    UsageType,
};
use openh264::formats::YUVBuffer;
use openh264_sys2 as sys;

use crate::{H264Complexity, H264RateControl, H264Tuning, H264Usage};

/// The binding's initial slice size limit (bytes); replaced by [`open`].
const MAX_NAL_BYTES: u32 = 60_000;

/// The highest bitrate a capped encoder is given (an uncapped one in bitrate rate control
/// runs at it, which leaves it at its minimum QP).
pub(crate) const MAX_BPS: u32 = 60_000_000;

/// What [`open`] configures.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    /// Coded (even) width.
    pub width: u32,
    /// Coded (even) height.
    pub height: u32,
    pub min_qp: u8,
    pub max_qp: u8,
    /// Target bitrate in bits per second (validation only for buffer-based rate control).
    pub bps: u32,
    pub fps: f32,
    pub tuning: H264Tuning,
}

fn usage(u: H264Usage) -> (UsageType, sys::EUsageType) {
    match u {
        H264Usage::Screen => (
            UsageType::ScreenContentRealTime,
            sys::SCREEN_CONTENT_REAL_TIME,
        ),
        H264Usage::Camera => (UsageType::CameraVideoRealTime, sys::CAMERA_VIDEO_REAL_TIME),
    }
}

fn complexity(c: H264Complexity) -> (Complexity, sys::ECOMPLEXITY_MODE) {
    match c {
        H264Complexity::Low => (Complexity::Low, sys::LOW_COMPLEXITY),
        H264Complexity::Medium => (Complexity::Medium, sys::MEDIUM_COMPLEXITY),
        H264Complexity::High => (Complexity::High, sys::HIGH_COMPLEXITY),
    }
}

fn rate_control(r: H264RateControl) -> (RateControlMode, sys::RC_MODES) {
    match r {
        H264RateControl::Bufferbased => (RateControlMode::Bufferbased, sys::RC_BUFFERBASED_MODE),
        H264RateControl::Quality => (RateControlMode::Quality, sys::RC_QUALITY_MODE),
        H264RateControl::Bitrate => (RateControlMode::Bitrate, sys::RC_BITRATE_MODE),
        H264RateControl::Off => (RateControlMode::Off, sys::RC_OFF_MODE),
    }
}

/// An initialised encoder for `settings.width × settings.height` pictures with
/// `settings.tuning.slices` slices encoded on as many threads, and the deblocking filter as
/// `settings.tuning.deblocking` says. Its next picture is an IDR.
///
/// The encoder must only be fed pictures of exactly this size: a new size makes the binding
/// re-initialise it with a single slice (still correct, only slower).
pub(crate) fn open(s: &Settings) -> Result<openh264::encoder::Encoder, openh264::Error> {
    let (usage_type, usage_c) = usage(s.tuning.usage);
    let (complexity_mode, complexity_c) = complexity(s.tuning.complexity);
    let (rc_mode, rc_c) = rate_control(s.tuning.rate_control);
    let config = EncoderConfig::new()
        .usage_type(usage_type)
        .complexity(complexity_mode)
        .rate_control_mode(rc_mode)
        .adaptive_quantization(false)
        .background_detection(false)
        .bitrate(BitRate::from_bps(s.bps))
        .max_frame_rate(FrameRate::from_hz(s.fps))
        .skip_frames(false)
        .sps_pps_strategy(SpsPpsStrategy::ConstantId)
        .qp(QpRange::new(s.min_qp, s.max_qp))
        // openh264 applies some parameters (the deblocking filter among them) only when a
        // new parameter set forces it to re-initialise, which a change of slice mode does:
        // let the binding start with size-limited slices, then set the mode we want.
        .max_slice_len(MAX_NAL_BYTES)
        .num_threads(1);
    let mut encoder =
        openh264::encoder::Encoder::with_api_config(OpenH264API::from_source(), config)?;
    let slices = s.tuning.slices.clamp(1, 16);
    // The binding initialises openh264 lazily, at the first picture: give it one (black) at
    // the final size so that the parameters below are not overwritten later.
    encoder.encode(&YUVBuffer::new(s.width as usize, s.height as usize))?;

    let mut params = sys::SEncParamExt::default();
    // SAFETY: `raw_api` only hands out the binding's function table and encoder pointer; we
    // use it for `GetDefaultParams`, which fills the valid, exclusively borrowed `params`
    // with openh264's defaults and changes nothing in the encoder.
    let rc = unsafe { encoder.raw_api().get_default_params(&raw mut params) };
    check(rc, "GetDefaultParams")?;
    let (w, h) = (to_int(s.width)?, to_int(s.height)?);
    let bps = to_int(s.bps)?;
    // As the binding's `reinit` (openh264 0.9.9, src/encoder.rs) for the options above.
    params.iPicWidth = w;
    params.iPicHeight = h;
    params.iRCMode = rc_c;
    params.bEnableFrameSkip = false;
    params.iTargetBitrate = bps;
    params.bEnableDenoise = false;
    params.fMaxFrameRate = s.fps;
    params.eSpsPpsIdStrategy = sys::CONSTANT_ID;
    params.iUsageType = usage_c;
    params.bEnableSceneChangeDetect = true;
    params.bEnableAdaptiveQuant = false;
    params.bEnableBackgroundDetection = false;
    params.bEnableLongTermReference = false;
    params.iComplexityMode = complexity_c;
    params.uiIntraPeriod = 0;
    // 0: deblocking filter on (the binding's setting), 1: off.
    params.iLoopFilterDisableIdc = if s.tuning.deblocking { 0 } else { 1 };
    params.iMinQp = s.min_qp.into();
    params.iMaxQp = s.max_qp.into();
    params.iSpatialLayerNum = 1;
    params.iTemporalLayerNum = 1;
    params.iLtrMarkPeriod = 30;
    let layer = &mut params.sSpatialLayers[0];
    // Bitrate rate control follows the target set later (`set_rate`): no lower ceiling.
    layer.iMaxSpatialBitrate = if s.tuning.rate_control == H264RateControl::Bitrate {
        to_int(MAX_BPS)?
    } else {
        bps
    };
    layer.iSpatialBitrate = bps;
    layer.fFrameRate = s.fps;
    layer.iVideoWidth = w;
    layer.iVideoHeight = h;
    // What the binding cannot express: several slices, one thread each.
    layer.sSliceArgument.uiSliceMode = if slices == 1 {
        sys::SM_SINGLE_SLICE
    } else {
        sys::SM_FIXEDSLCNUM_SLICE
    };
    layer.sSliceArgument.uiSliceNum = u32::from(slices);
    params.iMultipleThreadIdc = slices;

    // SAFETY: the encoder was initialised by the `encode` above (the binding calls
    // `InitializeExt` on the first picture), which `SetOption(SVC_ENCODE_PARAM_EXT)` requires;
    // the option's argument is a pointer to a complete `SEncParamExt` that lives for the
    // call, and openh264 copies it (it does not keep the pointer). `raw_api`'s contract (do
    // not change what the binding relies on) holds: the picture size is the one the binding
    // initialised with and records, and the input format (I420, `ENCODER_OPTION_DATAFORMAT`)
    // is not part of this option, so the binding's later `encode_at` calls stay valid.
    let rc = unsafe {
        encoder.raw_api().set_option(
            sys::ENCODER_OPTION_SVC_ENCODE_PARAM_EXT,
            (&raw mut params).cast(),
        )
    };
    check(rc, "SetOption(ENCODER_OPTION_SVC_ENCODE_PARAM_EXT)")?;
    // The re-initialised encoder starts with an IDR anyway; make it explicit.
    encoder.force_intra_frame();
    Ok(encoder)
}

/// Sets the target bitrate (bits per second) and the frame rate it is spread over on a
/// running encoder in bitrate rate control, without a new keyframe (openh264 applies both
/// options in place: `WelsEncoderApplyBitRate`, `WelsEncoderApplyFrameRate`).
pub(crate) fn set_rate(
    encoder: &mut openh264::encoder::Encoder,
    bps: u32,
    fps: f32,
) -> Result<(), openh264::Error> {
    let mut bitrate = sys::SBitrateInfo {
        iLayer: sys::SPATIAL_LAYER_ALL,
        iBitrate: to_int(bps)?,
    };
    let mut rate = fps;
    // SAFETY: both options take a pointer to a value that lives for the call and is only
    // read (`SBitrateInfo` for ENCODER_OPTION_BITRATE, a float for ENCODER_OPTION_FRAME_RATE);
    // the encoder was initialised by `open`. Neither changes the picture size or input format
    // the binding relies on.
    let rc = unsafe {
        encoder
            .raw_api()
            .set_option(sys::ENCODER_OPTION_BITRATE, (&raw mut bitrate).cast())
    };
    check(rc, "SetOption(ENCODER_OPTION_BITRATE)")?;
    // SAFETY: as above.
    let rc = unsafe {
        encoder
            .raw_api()
            .set_option(sys::ENCODER_OPTION_FRAME_RATE, (&raw mut rate).cast())
    };
    check(rc, "SetOption(ENCODER_OPTION_FRAME_RATE)")
}

fn to_int(v: u32) -> Result<std::ffi::c_int, openh264::Error> {
    std::ffi::c_int::try_from(v).map_err(|_| openh264::Error::msg("H.264 parameter out of range"))
}

fn check(rc: std::ffi::c_int, what: &'static str) -> Result<(), openh264::Error> {
    if rc == 0 {
        Ok(())
    } else {
        Err(openh264::Error::msg(what))
    }
}
