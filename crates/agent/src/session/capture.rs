//! The capture thread: capture the active display at the stream's pace, encode in the
//! negotiated codec (split into bands by the codec when a frame would exceed the relay's
//! cap), and report cursor moves and shapes.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use guruconnect_proto::{self as proto, Codec, DisplayInfo, Payload};
use tokio::sync::mpsc;

use super::{MAX_FRAME_BYTES, notice, now_us};
use crate::encoding::FrameEncoder;
use crate::platform::{Capturer, CursorState};

/// What the session asks of the capture thread.
pub(super) enum CaptureCmd {
    /// Start (or restart) streaming `display` in `codec`; `fps` 0 keeps the current pace.
    Start {
        codec: Codec,
        display: DisplayInfo,
        fps: u32,
    },
    Stop,
    /// Send a keyframe now.
    Refresh,
    Quality {
        fps: u32,
        quality: u32,
    },
}

struct Stream {
    encoder: FrameEncoder,
    display: DisplayInfo,
    interval: Duration,
    next_at: Instant,
    force_keyframe: bool,
}

fn frame_interval(fps: u32) -> Duration {
    let fps = if fps == 0 { 30 } else { fps.clamp(1, 60) };
    Duration::from_secs(1) / fps
}

/// The cursor last reported, so only changes are sent.
#[derive(Default)]
struct CursorReport {
    last: Option<CursorState>,
    serial: Option<u32>,
}

impl CursorReport {
    fn update(
        &mut self,
        capturer: &mut dyn Capturer,
        display: &DisplayInfo,
        out: &mpsc::Sender<Payload>,
    ) {
        let Ok(cursor) = capturer.cursor(display) else {
            return;
        };
        if self.last == Some(cursor) {
            return;
        }
        if self.serial != Some(cursor.serial) {
            self.serial = Some(cursor.serial);
            if let Ok(Some(shape)) = capturer.cursor_image() {
                let _ = out.try_send(Payload::CursorShape(proto::CursorShape {
                    width: shape.width,
                    height: shape.height,
                    hot_x: shape.hot_x,
                    hot_y: shape.hot_y,
                    rgba: shape.rgba.into(),
                    serial: u64::from(shape.serial),
                }));
            }
        }
        let moved = self
            .last
            .is_none_or(|c| (c.x, c.y, c.visible) != (cursor.x, cursor.y, cursor.visible));
        self.last = Some(cursor);
        if moved {
            let _ = out.try_send(Payload::CursorPosition(proto::CursorPosition {
                x: cursor.x,
                y: cursor.y,
                visible: cursor.visible,
            }));
        }
    }
}

/// Runs until the session drops its command channel or the outgoing channel closes.
pub(super) fn capture_thread(
    mut capturer: Box<dyn Capturer>,
    cmds: std_mpsc::Receiver<CaptureCmd>,
    out: mpsc::Sender<Payload>,
) {
    let mut stream: Option<Stream> = None;
    let mut sequence: u64 = 0;
    let mut cursor = CursorReport::default();
    let mut failures: u32 = 0;
    loop {
        let cmd = match &stream {
            None => match cmds.recv() {
                Ok(cmd) => Some(cmd),
                Err(_) => return,
            },
            Some(s) => {
                match cmds.recv_timeout(s.next_at.saturating_duration_since(Instant::now())) {
                    Ok(cmd) => Some(cmd),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        };
        if let Some(cmd) = cmd {
            match cmd {
                CaptureCmd::Start {
                    codec,
                    display,
                    fps,
                } => {
                    let reuse = stream
                        .take()
                        .filter(|s| s.encoder.requested() == codec && s.display == display);
                    let encoder = match reuse {
                        Some(s) => s.encoder,
                        None => FrameEncoder::new(codec),
                    };
                    let display_id = display.id;
                    tracing::info!(codec = ?encoder.codec(), display_id, fps, "streaming");
                    stream = Some(Stream {
                        encoder,
                        display,
                        interval: frame_interval(fps),
                        next_at: Instant::now(),
                        force_keyframe: true,
                    });
                    cursor = CursorReport::default();
                }
                CaptureCmd::Stop => {
                    tracing::info!("streaming stopped");
                    stream = None;
                }
                CaptureCmd::Refresh => {
                    if let Some(s) = &mut stream {
                        s.force_keyframe = true;
                        s.next_at = Instant::now();
                    }
                }
                CaptureCmd::Quality { fps, quality } => {
                    if let Some(s) = &mut stream {
                        if fps > 0 {
                            s.interval = frame_interval(fps);
                        }
                        if (1..=100).contains(&quality) {
                            s.encoder.set_quality(quality);
                        }
                    }
                }
            }
            // Keep capturing even under a flood of commands.
            if stream.as_ref().is_none_or(|s| Instant::now() < s.next_at) {
                continue;
            }
        }
        let Some(s) = &mut stream else { continue };
        s.next_at = (s.next_at + s.interval).max(Instant::now());
        let captured_at = now_us();
        let image = match capturer.capture(&s.display) {
            Ok(image) => {
                if failures > 0 {
                    tracing::info!(failures, "screen capture works again");
                }
                failures = 0;
                image
            }
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(error = %e, failures, "screen capture failed");
                }
                // Never a silent black screen: the technicians are told once per outage.
                if failures == 1 {
                    let _ = out.try_send(notice(
                        proto::agent_notice::Level::Error,
                        format!("The screen cannot be captured: {e}"),
                    ));
                }
                s.next_at = Instant::now() + Duration::from_millis(500);
                continue;
            }
        };
        let parts = s
            .encoder
            .encode_capped(&image, s.force_keyframe, MAX_FRAME_BYTES);
        let keyframe = parts.first().is_some_and(|p| p.keyframe);
        for part in parts {
            let video = part.to_video_frame(s.display.id, sequence, captured_at);
            if video.data.len() > MAX_FRAME_BYTES {
                // Only a picture wider than a whole band could get here.
                tracing::warn!(
                    bytes = video.data.len(),
                    "a frame exceeds the relay's cap; dropped"
                );
                continue;
            }
            sequence += 1;
            if out.blocking_send(Payload::VideoFrame(video)).is_err() {
                return;
            }
        }
        if keyframe {
            s.force_keyframe = false;
        }
        cursor.update(capturer.as_mut(), &s.display, &out);
    }
}
