//! The agent's view of the frame codec crate: the negotiated codec, the probe that decides
//! whether H.264 is advertised, and the fallback to lossless on encoder failure (done
//! inside `guruconnect_codec::Encoder`).

use std::sync::OnceLock;

use guruconnect_codec::{EncodedFrame, Encoder, Image};
use guruconnect_proto::Codec;

/// Whether this build can encode H.264 here (probed once).
pub fn h264_available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| Encoder::new(Codec::H264).codec() == Codec::H264)
}

/// An encoder for the codec the relay asked for.
#[derive(Debug)]
pub struct FrameEncoder {
    requested: Codec,
    inner: Encoder,
}

impl FrameEncoder {
    /// An encoder for `codec` (anything but H.264 means the lossless default).
    pub fn new(codec: Codec) -> Self {
        let requested = if codec == Codec::H264 {
            Codec::H264
        } else {
            Codec::RawZstd
        };
        let inner = Encoder::new(requested);
        if inner.codec() != requested {
            tracing::warn!("H.264 is unavailable; streaming lossless tiles instead");
        }
        Self { requested, inner }
    }

    /// The codec the relay asked for.
    pub fn requested(&self) -> Codec {
        self.requested
    }

    /// The codec in use (lossless after an H.264 failure).
    pub fn codec(&self) -> Codec {
        self.inner.codec()
    }

    /// Sets the quality hint (1..=100).
    pub fn set_quality(&mut self, quality: u32) {
        self.inner.set_quality(quality);
    }

    /// Caps the H.264 bitrate (bits/s over a frame rate) or lifts the cap
    /// (`guruconnect_codec::Encoder::set_bitrate_cap`).
    pub fn set_bitrate_cap(&mut self, cap: Option<(u32, f32)>) {
        self.inner.set_bitrate_cap(cap);
    }

    /// Encodes a capture; `None` when nothing changed and no keyframe was forced.
    pub fn encode(&mut self, image: &Image, force_keyframe: bool) -> Option<EncodedFrame> {
        self.inner.encode(image, force_keyframe)
    }

    /// Encodes a capture into messages of at most `max_bytes` each (lossless bands when one
    /// frame would be larger); empty when nothing changed and no keyframe was forced.
    pub fn encode_capped(
        &mut self,
        image: &Image,
        force_keyframe: bool,
        max_bytes: usize,
    ) -> Vec<EncodedFrame> {
        self.inner.encode_capped(image, force_keyframe, max_bytes)
    }
}
