//! Adaptive quality (issue 16): the stream follows the link to the fastest viewer.
//!
//! Viewers acknowledge each frame they decode ([`proto::FrameAck`], forwarded by the relay);
//! the first acknowledgement of a frame counts, so a slow viewer (which loses frames at the
//! relay until the next keyframe) does not slow the others. From the acknowledgements the
//! agent measures the round trip (send → acknowledgement, on its own clock) and the delivery
//! rate (bytes acknowledged over the time they took, the largest recent sample), and:
//! - **frame rate**: at most a window of bytes is in flight (twice the delivery rate times
//!   the smallest round trip, less the time large frames spend being sent): a capture
//!   waits for acknowledgements instead of queueing behind older frames, so what arrives
//!   is fresh and the frame rate is what the link carries;
//! - **bitrate**: while the link is the limit (captures held back, the round trip well over
//!   its minimum, or an uncapped stream sending as fast as frames are delivered), H.264 is
//!   capped at [`BITRATE_SHARE`] of the delivery rate, spread over the stream's full frame
//!   rate (coarser frames, not fewer); once calm, the cap grows until it is lifted;
//! - **codec**: a lossless stream whose viewers all decode H.264 turns into H.264 after
//!   [`TO_H264_AFTER`] held back, and back after [`TO_LOSSLESS_AFTER`] calm on a link that
//!   measured at least [`LOSSLESS_BPS`].
//!
//! Without acknowledgements (a relay or viewers from before this), nothing is held back
//! after [`NO_FEEDBACK_AFTER`]. `GURUCONNECT_ADAPT=0` turns it all off (fixed settings).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use guruconnect_proto::{self as proto, Codec};

/// Set to `0`, the agent sends with fixed settings (benchmarks compare the two).
pub const ADAPT_ENV: &str = "GURUCONNECT_ADAPT";

/// Delivery-rate samples count for this long (the estimate is their largest).
const BW_WINDOW: Duration = Duration::from_secs(6);
/// The smallest round trip is taken over this long.
const RTT_WINDOW: Duration = Duration::from_secs(10);
/// Bytes in flight may reach this many round trips' worth of the delivery rate: above 1,
/// so that a link measured while it was not full can show more.
const WINDOW_GAIN: f64 = 2.0;
/// Added to the smallest round trip for the window (the viewer's decode, timers).
const RTT_SLACK: Duration = Duration::from_millis(20);
/// The window before anything is measured (one larger frame may always go alone).
const INITIAL_WINDOW: u64 = 64 * 1024;
/// The window never shrinks below this.
const MIN_WINDOW: u64 = 16 * 1024;
/// A frame unacknowledged this long after it was sent, plus the time to drain what was in
/// flight, is given up on (lost, or its viewer left).
const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// Added to it before the delivery rate is measured.
const UNMEASURED_WAIT: Duration = Duration::from_secs(3);
/// Without any acknowledgement this long after the stream started, the viewers do not send
/// them (a viewer from before them): nothing is held back. Long enough for a first
/// keyframe on a slow link.
const NO_FEEDBACK_AFTER: Duration = Duration::from_secs(10);
/// The H.264 target as a share of the delivery rate (room for keyframes and cursor).
const BITRATE_SHARE: f64 = 0.8;
/// A target above this is no cap.
const UNCAPPED_BPS: f64 = 20e6;
/// Sending this share of the delivery rate counts as a full link.
const FULL_SHARE: f64 = 0.9;
/// The lowest target.
const MIN_BPS: f64 = 100e3;
/// How often the target moves.
const ADJUST_EVERY: Duration = Duration::from_millis(500);
/// Not held back for this long, the target grows by [`GROWTH`] per [`ADJUST_EVERY`].
const CALM_FOR: Duration = Duration::from_secs(2);
const GROWTH: f64 = 1.25;
/// The cap grows to at most this much over the measured delivery rate.
const PROBE_OVER: f64 = 1.2;
/// Held back for this long, a lossless stream turns into H.264 (where every viewer decodes it).
pub(super) const TO_H264_AFTER: Duration = Duration::from_millis(1500);
/// Calm for this long on a link of at least [`LOSSLESS_BPS`], it turns back.
pub(super) const TO_LOSSLESS_AFTER: Duration = Duration::from_secs(10);
pub(super) const LOSSLESS_BPS: f64 = 40e6;
/// Frames remembered without acknowledgements (when viewers do not send them).
const MAX_IN_FLIGHT: usize = 512;

/// A frame sent and not yet acknowledged.
#[derive(Debug, Clone, Copy)]
struct Sent {
    sequence: u64,
    bytes: u64,
    at: Instant,
    /// Bytes acknowledged before it was sent, and when the count last grew.
    delivered: u64,
    delivered_at: Instant,
    /// Still counts against the window (false once given up on; a late acknowledgement
    /// still measures the link with it).
    counted: bool,
    /// Bytes in flight ahead of it when it was sent.
    ahead: u64,
}

/// A value kept over a sliding time window, as its extreme (monotonic deque).
#[derive(Debug, Default)]
struct Windowed<T> {
    samples: VecDeque<(Instant, T)>,
}

impl<T: Copy + PartialOrd> Windowed<T> {
    /// Adds a sample; `better(a, b)`: `a` makes `b` useless (min: `a <= b`, max: `a >= b`).
    fn push(&mut self, at: Instant, value: T, better: impl Fn(T, T) -> bool) {
        while self.samples.back().is_some_and(|&(_, v)| better(value, v)) {
            self.samples.pop_back();
        }
        self.samples.push_back((at, value));
    }

    fn best(&mut self, now: Instant, window: Duration) -> Option<T> {
        while self
            .samples
            .front()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > window)
        {
            self.samples.pop_front();
        }
        self.samples.front().map(|&(_, v)| v)
    }
}

/// What the stream should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Settings {
    /// H.264 bitrate cap in bits per second, spread over the stream's full frame rate;
    /// `None`: not capped. Not fewer, larger frames: on screen content, a scroll or a
    /// moving window costs far more per frame the further it moved since the last one
    /// (measured with dashboard/bench/shaped.mjs), so the rate stays up and the picture
    /// gets coarser instead.
    pub bitrate: Option<u32>,
}

/// The controller: fed with frames sent and acknowledged, it says whether the next capture
/// may go and how to encode it. Pure logic with the time passed in (tested with a simulated
/// link).
#[derive(Debug)]
pub(super) struct Adapt {
    enabled: bool,
    /// The relay passes the viewers' acknowledgements (`StartStream.frame_acks`).
    acks: bool,
    in_flight: VecDeque<Sent>,
    in_flight_bytes: u64,
    delivered: u64,
    delivered_at: Instant,
    acked: u64,
    feedback: bool,
    started: Instant,
    rtt_min: Windowed<Duration>,
    srtt: Option<Duration>,
    bandwidth: Windowed<f64>,
    /// The last time a capture waited for the window, and since when they keep waiting.
    held_at: Option<Instant>,
    held_since: Option<Instant>,
    calm_since: Option<Instant>,
    target_bps: Option<f64>,
    last_adjust: Instant,
    /// Frames sent over the last second.
    sends: VecDeque<(Instant, u64)>,
}

impl Adapt {
    /// A controller; `enabled = false` never holds anything back and never caps.
    pub fn new(enabled: bool, now: Instant) -> Self {
        Self {
            enabled,
            acks: true,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            delivered: 0,
            delivered_at: now,
            acked: 0,
            feedback: false,
            started: now,
            rtt_min: Windowed::default(),
            srtt: None,
            bandwidth: Windowed::default(),
            held_at: None,
            held_since: None,
            calm_since: Some(now),
            target_bps: None,
            last_adjust: now,
            sends: VecDeque::new(),
        }
    }

    /// A new stream (codec, display or viewers). What is in flight stays counted: it is
    /// still on the link (frames of a viewer that left expire). `acks`: the relay passes
    /// acknowledgements.
    pub fn restart(&mut self, now: Instant, acks: bool) {
        self.acks = acks;
        if !self.feedback {
            self.started = now;
        }
    }

    /// The bytes that may be in flight.
    pub fn window(&mut self, now: Instant) -> u64 {
        let bw = self.bandwidth.best(now, BW_WINDOW);
        let rtt = self.rtt_min.best(now, RTT_WINDOW);
        match (bw, rtt) {
            (Some(bw), Some(rtt)) => {
                let bytes = WINDOW_GAIN * bw * (rtt + RTT_SLACK).as_secs_f64();
                (bytes as u64).max(MIN_WINDOW)
            }
            _ => INITIAL_WINDOW,
        }
    }

    /// Whether a capture may be sent now; `false` holds it until an acknowledgement.
    pub fn may_send(&mut self, now: Instant) -> bool {
        if !self.enabled || !self.acks {
            return true;
        }
        if !self.feedback && now.saturating_duration_since(self.started) > NO_FEEDBACK_AFTER {
            return true;
        }
        self.expire(now);
        if self.in_flight_bytes == 0 || self.in_flight_bytes < self.window(now) {
            return true;
        }
        self.held_at = Some(now);
        self.held_since.get_or_insert(now);
        false
    }

    /// When a held capture should look again even without an acknowledgement.
    pub fn recheck_at(&self, now: Instant) -> Instant {
        self.in_flight
            .iter()
            .find(|f| f.counted)
            .map_or(now, |f| f.at + self.ack_timeout())
            .max(now + Duration::from_millis(5))
    }

    fn ack_timeout(&self) -> Duration {
        // Unmeasured, a first keyframe may take seconds on a slow link.
        let drain = self
            .bandwidth
            .samples
            .front()
            .map_or(UNMEASURED_WAIT, |&(_, bw)| {
                Duration::from_secs_f64(self.in_flight_bytes as f64 / bw.max(1.0))
            });
        ACK_TIMEOUT + self.srtt.unwrap_or_default() * 2 + drain.min(Duration::from_secs(10))
    }

    /// Gives up on frames unacknowledged for too long: they no longer hold others back.
    fn expire(&mut self, now: Instant) {
        let timeout = self.ack_timeout();
        for f in self.in_flight.iter_mut().filter(|f| f.counted) {
            if now.saturating_duration_since(f.at) <= timeout {
                break;
            }
            f.counted = false;
            self.in_flight_bytes -= f.bytes;
        }
    }

    /// A frame (or band) was handed to the connection.
    pub fn on_sent(&mut self, sequence: u64, bytes: usize, now: Instant) {
        if self.in_flight_bytes == 0 {
            // An empty pipe: the next delivery-rate sample starts now.
            self.delivered_at = now;
        }
        if self.in_flight.len() >= MAX_IN_FLIGHT
            && let Some(old) = self.in_flight.pop_front()
            && old.counted
        {
            self.in_flight_bytes -= old.bytes;
        }
        let bytes = bytes as u64;
        self.in_flight.push_back(Sent {
            sequence,
            bytes,
            at: now,
            delivered: self.delivered,
            delivered_at: self.delivered_at,
            counted: true,
            ahead: self.in_flight_bytes,
        });
        self.in_flight_bytes += bytes;
        self.sends.push_back((now, bytes));
        while self
            .sends
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > Duration::from_secs(1))
        {
            self.sends.pop_front();
        }
    }

    /// A viewer acknowledged `sequence` (and so everything before it); false when it told
    /// nothing new.
    pub fn on_ack(&mut self, sequence: u64, now: Instant) -> bool {
        self.feedback = true;
        if sequence <= self.acked {
            return false;
        }
        self.acked = sequence;
        let mut newest = None;
        while let Some(f) = self.in_flight.front().copied() {
            if f.sequence > sequence {
                break;
            }
            self.in_flight.pop_front();
            if f.counted {
                self.in_flight_bytes -= f.bytes;
            }
            self.delivered += f.bytes;
            newest = Some(f);
        }
        let Some(frame) = newest else {
            return false;
        };
        self.delivered_at = now;
        let rtt = now.saturating_duration_since(frame.at);
        self.srtt = Some(self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
        let interval = now
            .saturating_duration_since(frame.delivered_at)
            .max(Duration::from_millis(1));
        let rate = (self.delivered - frame.delivered) as f64 / interval.as_secs_f64();
        self.bandwidth.push(now, rate, |a, b| a >= b);
        // The smallest round trip stands for the path without queue. Large frames spend
        // most of theirs being sent (their own bytes and those ahead of them at the
        // measured rate): without that, a link busy with large frames would measure its
        // queue as its path and size the window to keep it (at most 2× shorter, in case
        // the rate is underestimated).
        let bw = self.bandwidth.best(now, BW_WINDOW).unwrap_or(rate).max(1.0);
        let sending = Duration::from_secs_f64((frame.ahead + frame.bytes) as f64 / bw);
        let path = rtt.saturating_sub(sending).max(rtt / 2);
        self.rtt_min.push(now, path, |a, b| a <= b);
        true
    }

    /// Frames sent over the last second.
    pub fn fps(&self, now: Instant) -> usize {
        self.sends
            .iter()
            .filter(|&&(t, _)| now.saturating_duration_since(t) <= Duration::from_secs(1))
            .count()
    }

    /// Bytes sent over the last second.
    fn sent_rate(&self, now: Instant) -> f64 {
        self.sends
            .iter()
            .filter(|&&(t, _)| now.saturating_duration_since(t) <= Duration::from_secs(1))
            .map(|&(_, bytes)| bytes as f64)
            .sum()
    }

    /// Whether the link is the limit now: captures were held back lately, the round trip
    /// grew well over its minimum (a queue builds somewhere), or the stream sends about
    /// as fast as frames are delivered (large frames that fill the window alone inflate the
    /// round trip and the window with it; this still sees the link full).
    fn limited(&mut self, now: Instant) -> bool {
        let bw = self.bandwidth.best(now, BW_WINDOW);
        // (Only uncapped: a capped stream sends what the cap lets it, which is what the
        // delivery rate then measures.)
        let full = self.target_bps.is_none()
            && bw.is_some_and(|bw| self.sent_rate(now) >= FULL_SHARE * bw);
        let held = self
            .held_at
            .is_some_and(|t| now.saturating_duration_since(t) < ADJUST_EVERY * 2);
        let queued = match (self.srtt, self.rtt_min.best(now, RTT_WINDOW)) {
            (Some(srtt), Some(min)) => srtt > min + min.max(Duration::from_millis(40)),
            _ => false,
        };
        held || queued || full
    }

    /// Moves the bitrate target (at most every [`ADJUST_EVERY`]); returns the settings.
    pub fn tick(&mut self, now: Instant) -> Settings {
        if self.enabled && now.saturating_duration_since(self.last_adjust) >= ADJUST_EVERY {
            self.last_adjust = now;
            if self.limited(now) {
                self.calm_since = None;
                if let Some(bw) = self.bandwidth.best(now, BW_WINDOW) {
                    let share = (BITRATE_SHARE * bw * 8.0).max(MIN_BPS);
                    // Down to the measured share at once; never up while limited.
                    self.target_bps = Some(self.target_bps.map_or(share, |t| t.min(share)));
                }
            } else {
                let calm = *self.calm_since.get_or_insert(now);
                if self
                    .held_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= CALM_FOR)
                {
                    self.held_since = None;
                }
                if now.saturating_duration_since(calm) >= CALM_FOR {
                    // Probes upwards, but not far beyond what was measured: a link faster
                    // than the cap shows as a higher delivery rate once frames use the room.
                    let ceiling = self
                        .bandwidth
                        .best(now, BW_WINDOW)
                        .map_or(f64::INFINITY, |bw| bw * 8.0 * PROBE_OVER);
                    self.target_bps = self
                        .target_bps
                        .map(|t| (t * GROWTH).min(ceiling).max(t))
                        .filter(|&t| t < UNCAPPED_BPS);
                }
            }
        }
        Settings {
            bitrate: self.target_bps.map(|bps| {
                // Steps of 5 %, so that the encoder is not re-targeted at every frame.
                let step = (bps / 20.0).max(1000.0);
                ((bps / step).round() * step) as u32
            }),
        }
    }

    /// The codec to switch to, if any: `current` is what is sent, `preferred` what the
    /// relay asked for, `h264_allowed` whether every viewer decodes H.264.
    pub fn switch_codec(
        &mut self,
        now: Instant,
        current: Codec,
        preferred: Codec,
        h264_allowed: bool,
    ) -> Option<Codec> {
        if !self.enabled {
            return None;
        }
        match current {
            Codec::RawZstd
                if h264_allowed
                    && self
                        .held_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= TO_H264_AFTER) =>
            {
                self.held_since = None;
                Some(Codec::H264)
            }
            Codec::H264
                if preferred == Codec::RawZstd
                    && self
                        .calm_since
                        .is_some_and(|t| now.saturating_duration_since(t) >= TO_LOSSLESS_AFTER)
                    && self
                        .bandwidth
                        .best(now, BW_WINDOW)
                        .is_some_and(|bw| bw * 8.0 >= LOSSLESS_BPS) =>
            {
                Some(Codec::RawZstd)
            }
            _ => None,
        }
    }

    /// The mode to show the viewers.
    pub fn mode(&mut self, now: Instant, codec: Codec) -> proto::StreamMode {
        let bandwidth = self.bandwidth.best(now, BW_WINDOW);
        let reason = if !self.enabled {
            "fixed"
        } else if !self.feedback {
            "not measured"
        } else if self.limited(now) {
            "link limited"
        } else {
            "unlimited"
        };
        proto::StreamMode {
            codec: codec as i32,
            adaptive: self.enabled,
            fps: u32::try_from(self.fps(now)).unwrap_or(u32::MAX),
            bitrate_kbps: if codec == Codec::H264 {
                self.target_bps.map_or(0, |b| (b / 1000.0) as u32)
            } else {
                0
            },
            bandwidth_kbps: bandwidth.map_or(0, |b| (b * 8.0 / 1000.0) as u32),
            rtt_ms: self
                .srtt
                .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// A link of `rate` bytes/s and `one_way` delay each way, with a FIFO bottleneck: a
    /// frame is acknowledged once it crossed and the acknowledgement came back.
    struct Link {
        rate: f64,
        one_way: Duration,
        free_at: Instant,
        acks: VecDeque<(Instant, u64)>,
    }

    impl Link {
        fn new(start: Instant, bits_per_second: f64, rtt: Duration) -> Self {
            Self {
                rate: bits_per_second / 8.0,
                one_way: rtt / 2,
                free_at: start,
                acks: VecDeque::new(),
            }
        }

        /// Sends; returns when the frame reaches the viewer.
        fn send(&mut self, now: Instant, sequence: u64, bytes: usize) -> Instant {
            let start = self.free_at.max(now);
            self.free_at = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            let arrives = self.free_at + self.one_way;
            self.acks.push_back((arrives + self.one_way, sequence));
            arrives
        }
    }

    /// Runs a sender that has a changed picture every `interval` (frames of
    /// `bytes_at(bitrate cap)`) through the controller over `link` for `secs`; returns the
    /// picture ages at the viewer (arrival − capture) and frames delivered per second over
    /// the last half.
    fn run(
        adapt: &mut Adapt,
        link: &mut Link,
        start: Instant,
        secs: u64,
        bytes_at: impl Fn(Option<u32>) -> usize,
    ) -> (Vec<Duration>, f64) {
        // Sequences go on from run to run, as the agent's do.
        let mut sequence = adapt
            .acked
            .max(adapt.in_flight.back().map_or(0, |f| f.sequence));
        let tick = Duration::from_millis(1);
        let interval = Duration::from_millis(33);
        adapt.restart(start, true);
        let end = start + Duration::from_secs(secs);
        let half = start + Duration::from_secs(secs / 2);
        let mut now = start;
        let mut next_capture = start;
        let mut ages = Vec::new();
        let mut delivered_late = 0;
        while now < end {
            while link.acks.front().is_some_and(|&(at, _)| at <= now) {
                let (_, seq) = link.acks.pop_front().unwrap();
                adapt.on_ack(seq, now);
            }
            let settings = adapt.tick(now);
            if now >= next_capture && adapt.may_send(now) {
                sequence += 1;
                let bytes = bytes_at(settings.bitrate);
                let arrives = link.send(now, sequence, bytes);
                adapt.on_sent(sequence, bytes, now);
                ages.push(arrives - now);
                if now >= half {
                    delivered_late += 1;
                }
                next_capture = now + interval;
            }
            now += tick;
        }
        let fps = f64::from(delivered_late) / (secs / 2) as f64;
        (ages, fps)
    }

    fn p95(ages: &[Duration]) -> Duration {
        let mut sorted = ages[ages.len() / 2..].to_vec();
        sorted.sort_unstable();
        sorted[sorted.len() * 95 / 100]
    }

    /// H.264-like frames at 30 fps: 40 KB uncapped, else the cap's share of a second.
    fn h264_frames(cap: Option<u32>) -> usize {
        cap.map_or(40_000, |bps| bps as usize / 8 / 30)
    }

    #[test]
    fn a_slow_link_keeps_pictures_fresh_where_fixed_settings_queue_for_seconds() {
        let start = Instant::now();
        for (bps, rtt_ms) in [(5e6, 50), (1e6, 150)] {
            let rtt = Duration::from_millis(rtt_ms);
            let mut fixed = Adapt::new(false, start);
            let (ages_fixed, _) = run(
                &mut fixed,
                &mut Link::new(start, bps, rtt),
                start,
                20,
                h264_frames,
            );
            let mut adaptive = Adapt::new(true, start);
            let (ages, fps) = run(
                &mut adaptive,
                &mut Link::new(start, bps, rtt),
                start,
                20,
                h264_frames,
            );
            let mode = adaptive.mode(start + Duration::from_secs(20), Codec::H264);
            println!(
                "{bps} bit/s, {rtt_ms} ms: fixed p95 {:?}, adaptive p95 {:?} at {fps:.1} fps, {mode:?}",
                p95(&ages_fixed),
                p95(&ages)
            );
            assert!(
                p95(&ages_fixed) > Duration::from_secs(2),
                "fixed settings should queue"
            );
            assert!(
                p95(&ages) < rtt * 4 + Duration::from_millis(300),
                "adaptive picture age p95 {:?} on {bps} bit/s",
                p95(&ages)
            );
            assert!(
                fps >= 20.0,
                "adaptive sent only {fps:.1} fps on {bps} bit/s"
            );
            let cap = mode.bitrate_kbps as f64 * 1000.0;
            assert!(
                cap > 0.0 && cap <= bps * PROBE_OVER,
                "bitrate cap {cap} for a {bps} bit/s link"
            );
        }
    }

    #[test]
    fn a_fast_link_is_not_capped_and_frames_are_not_held() {
        let start = Instant::now();
        let mut adapt = Adapt::new(true, start);
        let mut link = Link::new(start, 1e9, Duration::from_millis(1));
        let (ages, fps) = run(&mut adapt, &mut link, start, 10, h264_frames);
        assert!(fps > 29.0, "{fps} fps on a fast link");
        assert!(p95(&ages) < Duration::from_millis(5));
        assert_eq!(adapt.tick(start + Duration::from_secs(10)).bitrate, None);
        let mode = adapt.mode(start + Duration::from_secs(10), Codec::H264);
        assert_eq!(mode.reason, "unlimited");
        assert_eq!(mode.bitrate_kbps, 0);
    }

    #[test]
    fn a_cap_is_lifted_when_the_link_gets_faster() {
        let start = Instant::now();
        let mut adapt = Adapt::new(true, start);
        let mut slow = Link::new(start, 1e6, Duration::from_millis(100));
        run(&mut adapt, &mut slow, start, 10, h264_frames);
        let later = start + Duration::from_secs(10);
        assert!(adapt.tick(later).bitrate.is_some(), "capped on 1 Mbit/s");
        let mut fast = Link::new(later, 1e9, Duration::from_millis(1));
        run(&mut adapt, &mut fast, later, 30, h264_frames);
        assert_eq!(
            adapt.tick(later + Duration::from_secs(30)).bitrate,
            None,
            "still capped after 30 s on a fast link"
        );
    }

    #[test]
    fn without_acknowledgements_nothing_is_held_for_long() {
        let start = Instant::now();
        // Viewers that never acknowledge: held only until the stream shows they do not.
        let mut silent = Adapt::new(true, start);
        for i in 1..=100 {
            silent.on_sent(i, 100_000, start);
        }
        assert!(!silent.may_send(start + Duration::from_millis(10)));
        assert!(silent.may_send(start + NO_FEEDBACK_AFTER + Duration::from_millis(1)));
        // Once acknowledgements came (10 KB/s measured), frames that are never acknowledged
        // (their viewer left) hold the next ones only until they expire.
        let mut adapt = Adapt::new(true, start);
        adapt.on_sent(1, 1000, start);
        assert!(adapt.on_ack(1, start + Duration::from_millis(100)));
        let t = start + Duration::from_secs(1);
        for i in 2..12 {
            adapt.on_sent(i, 100_000, t);
        }
        assert!(!adapt.may_send(t));
        let recheck = adapt.recheck_at(t);
        assert!(recheck > t + ACK_TIMEOUT);
        assert!(!adapt.may_send(recheck - Duration::from_millis(1)));
        assert!(adapt.may_send(recheck + Duration::from_millis(1)));
    }

    #[test]
    fn fixed_settings_never_hold_or_cap() {
        let start = Instant::now();
        let mut adapt = Adapt::new(false, start);
        for i in 0..100 {
            adapt.on_sent(i, 1_000_000, start);
            assert!(adapt.may_send(start));
        }
        assert_eq!(adapt.tick(start + Duration::from_secs(5)).bitrate, None);
        assert_eq!(
            adapt.switch_codec(start, Codec::RawZstd, Codec::RawZstd, true),
            None
        );
        assert_eq!(adapt.mode(start, Codec::H264).reason, "fixed");
    }

    #[test]
    fn lossless_turns_into_h264_when_held_back_and_only_where_allowed() {
        let start = Instant::now();
        let mut adapt = Adapt::new(true, start);
        let mut link = Link::new(start, 1e6, Duration::from_millis(150));
        // Lossless frames of a moving screen: 200 KB each.
        run(&mut adapt, &mut link, start, 3, |_| 200_000);
        let t = start + Duration::from_secs(3);
        assert_eq!(
            adapt.switch_codec(t, Codec::RawZstd, Codec::RawZstd, false),
            None,
            "a viewer that cannot decode H.264 keeps lossless"
        );
        assert_eq!(
            adapt.switch_codec(t, Codec::RawZstd, Codec::RawZstd, true),
            Some(Codec::H264)
        );
        // Not back to lossless on a slow link, however calm.
        let calm = t + TO_LOSSLESS_AFTER * 2;
        adapt.tick(calm);
        assert_eq!(
            adapt.switch_codec(calm, Codec::H264, Codec::RawZstd, true),
            None
        );
    }

    #[test]
    fn a_late_acknowledgement_of_a_frame_given_up_on_still_measures_the_link() {
        // A first keyframe of 600 KB on a 1 Mbit/s link, acknowledged after 4.9 s: later
        // than the window waits for it. The acknowledgement must still measure the link,
        // or the stream never learns its rate (found by dashboard/bench/shaped.mjs).
        let start = Instant::now();
        let mut adapt = Adapt::new(true, start);
        adapt.restart(start, true);
        adapt.on_sent(1, 600_000, start);
        assert!(!adapt.may_send(start + Duration::from_secs(1)));
        // Given up on: the next frame may go.
        assert!(adapt.may_send(start + Duration::from_millis(4500)));
        adapt.on_sent(2, 5_000, start + Duration::from_millis(4500));
        let late = start + Duration::from_millis(4875);
        assert!(
            adapt.on_ack(1, late),
            "the late acknowledgement tells something"
        );
        let mode = adapt.mode(late, Codec::H264);
        assert!(
            (800..=1200).contains(&mode.bandwidth_kbps),
            "measured {} kbit/s on a 1 Mbit/s link",
            mode.bandwidth_kbps
        );
        assert!(mode.rtt_ms >= 4000, "round trip {} ms", mode.rtt_ms);
    }
}
