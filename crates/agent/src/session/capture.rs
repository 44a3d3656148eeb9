//! The capture thread: capture the active display when it changed (or on the stream's
//! clock where the desktop cannot tell), encode in the negotiated codec (split into bands by
//! the codec when a frame would exceed the relay's cap), and report cursor moves and shapes.
//!
//! Pacing. Where the desktop reports changes ([`Capturer::watch_changes`]: X DAMAGE), a
//! change is captured [`SETTLE`] after it was reported (so a repaint of a few requests is
//! captured whole), but never sooner than one frame interval after the previous capture;
//! a still screen is not captured at all, except once every [`SAFETY_EVERY`] in case a
//! change went unreported. Elsewhere the thread captures on the frame clock, and a key or
//! button from a viewer ([`CaptureCmd::Nudge`]) brings the next capture forward to
//! [`NUDGE_DELAY`] after it, so the echo of a key does not wait for the next tick. The
//! cursor is polled on the frame clock in both cases.
//!
//! Adaptation ([`super::adapt`]): a capture that is due waits while a window of bytes is
//! unacknowledged by the viewers, H.264 follows the bitrate the link carries, and a lossless
//! stream may turn into H.264 on a slow link; the mode is reported to the viewers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use guruconnect_proto::{self as proto, Codec, DisplayInfo, Payload};
use tokio::sync::mpsc;

use super::adapt::{ADAPT_ENV, Adapt};
use super::{MAX_FRAME_BYTES, notice, now_us};
use crate::encoding::FrameEncoder;
use crate::platform::{Capturer, ChangeWatch, CursorState};

/// How long after a reported change the picture is captured.
const SETTLE: Duration = Duration::from_millis(2);
/// A still screen is still captured this often (a change the desktop did not report).
const SAFETY_EVERY: Duration = Duration::from_secs(1);
/// How long after a viewer's key or button the next capture happens, where changes are not
/// reported: time for the application to repaint.
const NUDGE_DELAY: Duration = Duration::from_millis(8);
/// How long after a start the first picture is captured.
const START_SETTLE: Duration = Duration::from_millis(10);
const LOSSLESS_START_SETTLE: Duration = Duration::from_millis(250);
/// How often an idle thread checks that its session still exists.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// How often the stream's mode is sent to the viewers when it did not change.
const MODE_EVERY: Duration = Duration::from_secs(5);
/// How often the mode is looked at for a change.
const MODE_CHECK: Duration = Duration::from_secs(1);
/// Set to `1`, the agent captures on the frame clock alone, as before change-driven capture
/// (benchmarks compare the two; a desktop whose change reports misbehave can use it).
pub const CAPTURE_CLOCK_ENV: &str = "GURUCONNECT_CAPTURE_CLOCK";

/// What the session asks of the capture thread.
pub(super) enum CaptureCmd {
    /// Start (or restart) streaming `display` in `codec`; `fps` 0 keeps the current pace.
    Start {
        codec: Codec,
        /// Codecs every viewer also decodes (adaptation may switch to them).
        fallback: Vec<Codec>,
        /// The relay passes the viewers' frame acknowledgements.
        frame_acks: bool,
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
    /// A viewer pressed a key or button: the screen is about to change.
    Nudge,
    /// The desktop reported a change (from the change watcher's thread).
    Changed,
    /// A viewer decoded the frame `sequence` (received at `at`).
    Ack {
        sequence: u64,
        at: Instant,
    },
}

struct Stream {
    encoder: FrameEncoder,
    /// The codec the relay asked for, and whether every viewer decodes H.264 too.
    preferred: Codec,
    h264_allowed: bool,
    /// A due capture waits for the viewers' acknowledgements.
    held: bool,
    display: DisplayInfo,
    interval: Duration,
    /// The next tick: a capture when one is due, otherwise a cursor poll.
    next_at: Instant,
    force_keyframe: bool,
    /// Reports changes (and the flag of a [`CaptureCmd::Changed`] waiting in the channel);
    /// `None` captures on every tick.
    watch: Option<(ChangeWatch, Arc<AtomicBool>)>,
    /// Changed since the last capture, and when that was first reported (Unix µs).
    dirty: Option<u64>,
    last_capture: Instant,
}

impl Stream {
    /// Whether the next tick captures.
    fn capture_due(&self, now: Instant) -> bool {
        self.force_keyframe
            || self.watch.is_none()
            || self.dirty.is_some()
            || now >= self.last_capture + SAFETY_EVERY
    }

    /// Brings the next tick forward to `at`, but not sooner than `gap` after the previous
    /// capture.
    fn capture_by(&mut self, at: Instant, gap: Duration) {
        let at = at.max(self.last_capture + gap);
        self.next_at = self.next_at.min(at);
    }
}

fn frame_interval(fps: u32) -> Duration {
    let fps = if fps == 0 { 30 } else { fps.clamp(1, 60) };
    Duration::from_secs(1) / fps
}

/// Starts the desktop's change watcher for a stream: each change becomes one
/// [`CaptureCmd::Changed`] (at most one waiting at a time).
fn start_watch(
    capturer: &mut dyn Capturer,
    cmds: &std_mpsc::Sender<CaptureCmd>,
) -> Option<(ChangeWatch, Arc<AtomicBool>)> {
    let cmds = cmds.clone();
    let waiting = Arc::new(AtomicBool::new(false));
    let handled = Arc::clone(&waiting);
    let watch = capturer.watch_changes(Box::new(move || {
        if waiting.swap(true, Ordering::AcqRel) {
            return true;
        }
        cmds.send(CaptureCmd::Changed).is_ok()
    }))?;
    Some((watch, handled))
}

/// The stream mode last sent to the viewers.
#[derive(Default)]
struct ModeReport {
    last: Option<(proto::StreamMode, Instant)>,
    checked: Option<Instant>,
}

impl ModeReport {
    /// Sends the mode when it changed (looked at every [`MODE_CHECK`]) or every
    /// [`MODE_EVERY`].
    fn report(
        &mut self,
        adapt: &mut Adapt,
        now: Instant,
        codec: Codec,
        out: &mpsc::Sender<Payload>,
    ) {
        if self
            .checked
            .is_some_and(|t| now.saturating_duration_since(t) < MODE_CHECK)
        {
            return;
        }
        self.checked = Some(now);
        let current = adapt.mode(now, codec);
        let due = match &self.last {
            None => true,
            Some((last, at)) => {
                now.saturating_duration_since(*at) >= MODE_EVERY
                    || last.codec != current.codec
                    || last.reason != current.reason
                    || last.bitrate_kbps.abs_diff(current.bitrate_kbps) * 10 > last.bitrate_kbps
                    || last.fps.abs_diff(current.fps) * 5 > last.fps.max(5)
            }
        };
        if due && out.try_send(Payload::StreamMode(current.clone())).is_ok() {
            self.last = Some((current, now));
        }
    }
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
/// `cmds_tx` feeds the same channel (the change watcher's notifications).
pub(super) fn capture_thread(
    mut capturer: Box<dyn Capturer>,
    cmds: std_mpsc::Receiver<CaptureCmd>,
    cmds_tx: std_mpsc::Sender<CaptureCmd>,
    out: mpsc::Sender<Payload>,
) {
    let mut stream: Option<Stream> = None;
    let mut sequence: u64 = 0;
    let mut cursor = CursorReport::default();
    let mut failures: u32 = 0;
    let on_change = std::env::var(CAPTURE_CLOCK_ENV).as_deref() != Ok("1");
    let mut adapt = Adapt::new(
        std::env::var(ADAPT_ENV).as_deref() != Ok("0"),
        Instant::now(),
    );
    let mut mode = ModeReport::default();
    loop {
        // This thread holds a sender of its own channel (for the watcher), so the session's
        // end shows as the outgoing channel closing.
        if out.is_closed() {
            return;
        }
        let wait = stream.as_ref().map_or(IDLE_CHECK, |s| {
            s.next_at.saturating_duration_since(Instant::now())
        });
        let cmd = match cmds.recv_timeout(wait) {
            Ok(cmd) => Some(cmd),
            Err(std_mpsc::RecvTimeoutError::Timeout) => None,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
        };
        if let Some(cmd) = cmd {
            match cmd {
                CaptureCmd::Start {
                    codec,
                    fallback,
                    frame_acks,
                    display,
                    fps,
                } => {
                    let (encoder, watch) = match stream.take() {
                        Some(s) if s.encoder.requested() == codec && s.display == display => {
                            (s.encoder, s.watch)
                        }
                        Some(s) => (FrameEncoder::new(codec), s.watch),
                        None => (FrameEncoder::new(codec), None),
                    };
                    let watch = match watch {
                        Some(w) => Some(w),
                        None if on_change => start_watch(capturer.as_mut(), &cmds_tx),
                        None => None,
                    };
                    let display_id = display.id;
                    tracing::info!(
                        codec = ?encoder.codec(),
                        display_id,
                        fps,
                        on_change = watch.is_some(),
                        "streaming"
                    );
                    let now = Instant::now();
                    adapt.restart(now, frame_acks);
                    stream = Some(Stream {
                        encoder,
                        preferred: codec,
                        h264_allowed: codec == Codec::H264 || fallback.contains(&Codec::H264),
                        held: false,
                        display,
                        interval: frame_interval(fps),
                        // The relay may change its mind at once (a joining viewer streams
                        // lossless until its hello): the first picture waits for that, a
                        // lossless one longer (a whole screen of tiles is megabytes).
                        next_at: now
                            + if codec == Codec::H264 {
                                START_SETTLE
                            } else {
                                LOSSLESS_START_SETTLE
                            },
                        force_keyframe: true,
                        watch,
                        dirty: None,
                        last_capture: now.checked_sub(SAFETY_EVERY).unwrap_or(now),
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
                CaptureCmd::Nudge => {
                    if let Some(s) = stream.as_mut().filter(|s| on_change && s.watch.is_none()) {
                        // Keys come at typing speed; at a low frame rate they still
                        // get their echo captured.
                        s.capture_by(Instant::now() + NUDGE_DELAY, NUDGE_DELAY);
                    }
                }
                CaptureCmd::Ack { sequence, at } => {
                    if adapt.on_ack(sequence, at)
                        && let Some(s) = stream.as_mut().filter(|s| s.held)
                    {
                        s.held = false;
                        s.next_at = Instant::now();
                    }
                }
                CaptureCmd::Changed => {
                    if let Some(s) = &mut stream {
                        if let Some((_, waiting)) = &s.watch {
                            waiting.store(false, Ordering::Release);
                        }
                        s.dirty.get_or_insert_with(now_us);
                        let interval = s.interval;
                        s.capture_by(Instant::now() + SETTLE, interval);
                    }
                }
            }
            // Keep capturing even under a flood of commands.
            if stream.as_ref().is_none_or(|s| Instant::now() < s.next_at) {
                continue;
            }
        }
        let Some(s) = &mut stream else { continue };
        let now = Instant::now();
        s.next_at = (s.next_at + s.interval).max(now);
        let settings = adapt.tick(now);
        // (Not where H.264 already failed and the encoder fell back to lossless.)
        let switch = (s.encoder.codec() == s.encoder.requested())
            .then(|| adapt.switch_codec(now, s.encoder.codec(), s.preferred, s.h264_allowed))
            .flatten();
        if let Some(codec) = switch {
            tracing::info!(?codec, "the link calls for another codec");
            s.encoder = FrameEncoder::new(codec);
            s.force_keyframe = true;
        }
        if s.encoder.codec() == Codec::H264 {
            // Before the first picture of a new encoder, so that it starts capped.
            let fps = 1.0 / s.interval.as_secs_f32();
            s.encoder
                .set_bitrate_cap(settings.bitrate.map(|bps| (bps, fps)));
        }
        mode.report(&mut adapt, now, s.encoder.codec(), &out);
        s.held = s.capture_due(now) && !adapt.may_send(now);
        if s.held {
            // Waits for an acknowledgement, or for the window to give up on one; the
            // cursor is still polled on the frame clock meanwhile.
            s.next_at = adapt.recheck_at(now).min(now + s.interval);
        } else if s.capture_due(now) {
            let changed_at = s.dirty.take().unwrap_or(0);
            s.last_capture = now;
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
            let encoded_at = now_us();
            let keyframe = parts.first().is_some_and(|p| p.keyframe);
            for part in parts {
                let mut video = part.to_video_frame(s.display.id, sequence, captured_at);
                video.changed_timestamp_us = changed_at;
                video.encoded_timestamp_us = encoded_at;
                if video.data.len() > MAX_FRAME_BYTES {
                    // Only a picture wider than a whole band could get here.
                    tracing::warn!(
                        bytes = video.data.len(),
                        "a frame exceeds the relay's cap; dropped"
                    );
                    continue;
                }
                sequence += 1;
                let bytes = video.data.len();
                let sent_sequence = video.sequence;
                if out.blocking_send(Payload::VideoFrame(video)).is_err() {
                    return;
                }
                adapt.on_sent(sent_sequence, bytes, Instant::now());
            }
            if keyframe {
                s.force_keyframe = false;
            }
            capturer.recycle(image);
        }
        cursor.update(capturer.as_mut(), &s.display, &out);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::Mutex;
    use std::sync::atomic::AtomicUsize;

    use guruconnect_codec::Image;

    use super::*;
    use crate::platform::{ChangeNotify, CursorImage, PlatformResult};

    /// A desktop whose every capture differs (so each one is sent), counting captures; with
    /// `reports`, it hands its change notifier to the test.
    struct FakeDesktop {
        captures: Arc<AtomicUsize>,
        notifier: Option<Arc<Mutex<Option<ChangeNotify>>>>,
        noisy: bool,
    }

    impl Capturer for FakeDesktop {
        fn backend(&self) -> &'static str {
            "fake"
        }
        fn displays(&self) -> Vec<DisplayInfo> {
            vec![display()]
        }
        fn capture(&mut self, _display: &DisplayInfo) -> PlatformResult<Image> {
            let n = self.captures.fetch_add(1, Ordering::SeqCst);
            let mut data = vec![0u8; 32 * 32 * 4];
            data[..8].copy_from_slice(&(n as u64).to_le_bytes());
            if self.noisy {
                // Incompressible: every frame is a whole 4 KB picture.
                let mut x = n as u64 | 1;
                for b in &mut data {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *b = x as u8;
                }
            }
            Ok(Image {
                width: 32,
                height: 32,
                data,
            })
        }
        fn cursor(&mut self, _display: &DisplayInfo) -> PlatformResult<CursorState> {
            Ok(CursorState {
                x: 0,
                y: 0,
                visible: false,
                serial: 0,
            })
        }
        fn cursor_image(&mut self) -> PlatformResult<Option<CursorImage>> {
            Ok(None)
        }
        fn watch_changes(&mut self, notify: ChangeNotify) -> Option<ChangeWatch> {
            let slot = self.notifier.as_ref()?;
            *slot.lock().unwrap() = Some(notify);
            Some(ChangeWatch::new(Arc::new(AtomicBool::new(false))))
        }
    }

    fn display() -> DisplayInfo {
        DisplayInfo {
            id: 0,
            name: "fake".into(),
            x: 0,
            y: 0,
            width: 32,
            height: 32,
            primary: true,
        }
    }

    struct Running {
        cmds: std_mpsc::Sender<CaptureCmd>,
        out: mpsc::Receiver<Payload>,
        captures: Arc<AtomicUsize>,
        notifier: Arc<Mutex<Option<ChangeNotify>>>,
        thread: std::thread::JoinHandle<()>,
        /// What `next_frame` passed over.
        passed: Vec<Payload>,
    }

    impl Running {
        fn start(reports: bool, fps: u32) -> Running {
            Self::start_with(reports, fps, false)
        }

        /// `noisy`: every capture is an incompressible 4 KB picture.
        fn start_with(reports: bool, fps: u32, noisy: bool) -> Running {
            let captures = Arc::new(AtomicUsize::new(0));
            let notifier = Arc::new(Mutex::new(None));
            let desktop = FakeDesktop {
                captures: Arc::clone(&captures),
                notifier: reports.then(|| Arc::clone(&notifier)),
                noisy,
            };
            let (cmds, rx) = std_mpsc::channel();
            let (out_tx, out) = mpsc::channel(64);
            let own = cmds.clone();
            let thread =
                std::thread::spawn(move || capture_thread(Box::new(desktop), rx, own, out_tx));
            cmds.send(CaptureCmd::Start {
                fallback: Vec::new(),
                frame_acks: true,
                codec: Codec::RawZstd,
                display: display(),
                fps,
            })
            .unwrap();
            let mut running = Running {
                cmds,
                out,
                captures,
                notifier,
                thread,
                passed: Vec::new(),
            };
            running
                .next_frame(Duration::from_secs(5))
                .expect("the first keyframe");
            running
        }

        /// The next video frame within `within`.
        fn next_frame(&mut self, within: Duration) -> Option<proto::VideoFrame> {
            let deadline = Instant::now() + within;
            while Instant::now() < deadline {
                match self.out.try_recv() {
                    Ok(Payload::VideoFrame(frame)) => return Some(frame),
                    Ok(other) => self.passed.push(other),
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
            None
        }

        fn notify(&self) -> bool {
            (self.notifier.lock().unwrap().as_mut().expect("watching"))()
        }
    }

    #[test]
    fn a_reported_change_is_captured_at_once_and_a_still_screen_is_not_captured() {
        let mut run = Running::start(true, 30);
        // Still: nothing captured for well under the safety interval.
        let after_keyframe = run.captures.load(Ordering::SeqCst);
        assert!(run.next_frame(Duration::from_millis(400)).is_none());
        assert_eq!(run.captures.load(Ordering::SeqCst), after_keyframe);
        // A change: captured within a few milliseconds, not on the next safety capture,
        // and the frame says when the change was reported.
        let reported = now_us();
        let asked = Instant::now();
        assert!(run.notify());
        let frame = run
            .next_frame(Duration::from_millis(500))
            .expect("a frame for the change");
        assert!(asked.elapsed() < Duration::from_millis(500));
        assert!(frame.changed_timestamp_us >= reported);
        assert!(frame.capture_timestamp_us >= frame.changed_timestamp_us);
        assert!(frame.encoded_timestamp_us >= frame.capture_timestamp_us);
        // A flood of reports is captured at most once per frame interval (33 ms).
        let before = run.captures.load(Ordering::SeqCst);
        let flood = Instant::now();
        while flood.elapsed() < Duration::from_millis(300) {
            run.notify();
            std::thread::sleep(Duration::from_millis(1));
        }
        let captured = run.captures.load(Ordering::SeqCst) - before;
        assert!(
            (2..=11).contains(&captured),
            "{captured} captures for 300 ms of changes at 30 fps"
        );
        // The thread holds a sender of its own command channel (for the watcher), yet it
        // ends when the session does: its outgoing channel closes.
        drop(run.cmds);
        drop(run.out);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !run.thread.is_finished() {
            assert!(
                Instant::now() < deadline,
                "the capture thread outlived its session"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn without_change_reports_a_key_brings_the_next_capture_forward() {
        // One frame a second: a capture on the clock alone comes a second after the last.
        let mut run = Running::start(false, 1);
        let asked = Instant::now();
        run.cmds.send(CaptureCmd::Nudge).unwrap();
        run.next_frame(Duration::from_millis(900))
            .expect("a capture soon after the key");
        // At least the repaint delay after the key, well before the next tick.
        let waited = asked.elapsed();
        assert!(waited >= NUDGE_DELAY, "{waited:?}");
        assert!(waited < Duration::from_millis(900), "{waited:?}");
    }

    #[test]
    fn frames_wait_for_the_viewers_acknowledgements_and_go_on_at_the_next_one() {
        // Every tick captures a changed 4 KB picture (no change reports), 60 a second.
        let mut run = Running::start_with(false, 60, true);
        let start = Instant::now();
        run.cmds
            .send(CaptureCmd::Ack {
                sequence: 0,
                at: start,
            })
            .unwrap();
        // Unacknowledged, the frames stop once a window's worth is in flight.
        let (mut frames, mut bytes, mut last) = (0, 0, 0);
        let mut modes: Vec<_> = run
            .passed
            .drain(..)
            .filter_map(|p| match p {
                Payload::StreamMode(m) => Some(m),
                _ => None,
            })
            .collect();
        while start.elapsed() < Duration::from_secs(1) {
            match run.out.try_recv() {
                Ok(Payload::VideoFrame(f)) => {
                    frames += 1;
                    bytes += f.data.len();
                    last = f.sequence;
                }
                Ok(Payload::StreamMode(m)) => modes.push(m),
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
        assert!(
            frames < 30 && bytes < 64 * 1024 + 8 * 1024,
            "{frames} frames ({bytes} bytes) went out unacknowledged in a second"
        );
        assert!(
            modes.iter().any(|m| m.adaptive),
            "the mode was reported: {modes:?}"
        );
        // An acknowledgement lets the next capture go at once.
        let acked = Instant::now();
        run.cmds
            .send(CaptureCmd::Ack {
                sequence: last,
                at: acked,
            })
            .unwrap();
        run.next_frame(Duration::from_millis(200))
            .expect("a frame right after the acknowledgement");
        assert!(acked.elapsed() < Duration::from_millis(200));
    }
}
