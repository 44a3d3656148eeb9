//! H.264 encoder speed and text quality at 1920×1080 (issue 16, item 3).
//!
//! ```text
//! cargo run --release -p guruconnect-codec --example h264_tune [-- --quick]
//!     [--only SUBSTRING] [--typing-only | --full-only] [--no-quality]
//! ```
//!
//! `--quick` measures 60 typing and 20 full-change frames; `--only` keeps the configurations
//! whose name contains SUBSTRING or one of several separated by `|` (e.g.
//! `"main|Camera Low BB, 2"`), for profiling one of them;
//! `--no-quality` skips decoding (no PSNR/SSIM) so that a profile shows the encoder alone.
//!
//! Two synthetic, deterministic scenarios on a text-heavy screen (a dark terminal full of
//! 8×16 glyphs drawn from a seeded glyph set):
//!
//! * **typing**: one new glyph per frame, 300 measured frames after 30 warm-up frames;
//! * **full change**: a text page and a smooth photo-like picture alternating, 60 measured
//!   frames after 4 warm-up frames.
//!
//! For each encoder configuration it prints wall and process-CPU milliseconds per frame
//! (CPU = `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)` around `Encoder::encode`, so it includes
//! openh264's worker threads, the change detection, the BGRA → YUV conversion and copying
//! the access unit out), bytes per frame and KB/s at 30 fps, and the text quality of what a
//! viewer shows: every access unit is decoded with openh264's decoder and the decoded Y
//! plane is compared with the source's Y plane (PSNR, and SSIM on 8×8 windows).
//!
//! The row "main (before)" replays the encoder of `main` before this change: the binding's
//! single-slice encoder, a full-frame conversion and a full-frame compare and copy per
//! frame, as `Encoder::encode` did.

use std::time::{Duration, Instant};

use guruconnect_codec::{
    Encoder, H264Complexity, H264RateControl, H264StageTimes, H264Tuning, H264Usage, Image,
};
use guruconnect_proto::Codec;
use openh264::decoder::Decoder;
use openh264::encoder::{EncoderConfig, QpRange, RateControlMode, SpsPpsStrategy, UsageType};
use openh264::formats::{BgraSliceU8, YUVBuffer, YUVSource};
use openh264::{OpenH264API, Timestamp};

const W: u32 = 1920;
const H: u32 = 1080;
const BG: [u8; 4] = [0x1e, 0x1e, 0x1e, 0xff];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 94 glyphs of 8×16 pixels: strokes in a 6×11 box (like a terminal font), one bit per pixel.
fn glyphs() -> Vec<[u8; 16]> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    (0..94)
        .map(|_| {
            let mut g = [0u8; 16];
            // A few vertical and horizontal strokes plus some dots.
            for _ in 0..2 + rng.below(2) {
                let x = 1 + rng.below(6) as usize;
                let (y0, y1) = (3 + rng.below(4) as usize, 9 + rng.below(5) as usize);
                for row in &mut g[y0..y1] {
                    *row |= 0x80 >> x;
                }
            }
            for _ in 0..1 + rng.below(3) {
                let y = 3 + rng.below(11) as usize;
                let (x0, x1) = (1 + rng.below(3), 4 + rng.below(4));
                for x in x0..x1 {
                    g[y] |= 0x80 >> x;
                }
            }
            for _ in 0..rng.below(4) {
                g[3 + rng.below(11) as usize] |= 0x80 >> (1 + rng.below(6));
            }
            g
        })
        .collect()
}

fn draw_glyph(img: &mut Image, glyph: &[u8; 16], col: u32, row: u32, fg: [u8; 4]) {
    for (dy, bits) in glyph.iter().enumerate() {
        let y = row * 16 + dy as u32;
        for dx in 0..8u32 {
            let x = col * 8 + dx;
            let i = ((y * W + x) * 4) as usize;
            let c = if bits & (0x80 >> dx) != 0 { fg } else { BG };
            img.data[i..i + 4].copy_from_slice(&c);
        }
    }
}

const COLOURS: [[u8; 4]; 4] = [
    [0xcc, 0xcc, 0xcc, 0xff], // light grey (BGRA)
    [0x6a, 0xd4, 0x8a, 0xff], // green
    [0xf0, 0xa0, 0x56, 0xff], // blue
    [0x70, 0xd0, 0xe8, 0xff], // yellow
];

/// A terminal page: lines of random length, the first `rows` rows filled.
fn text_page(glyphs: &[[u8; 16]], seed: u64, rows: u32) -> Image {
    let mut img = Image::filled(W, H, BG);
    let mut rng = Rng(seed);
    for row in 0..rows {
        let len = rng.below(u64::from(W / 8)) as u32;
        let fg = COLOURS[rng.below(4) as usize];
        for col in 0..len {
            if rng.below(6) == 0 {
                continue; // a space
            }
            let g = &glyphs[rng.below(glyphs.len() as u64) as usize];
            draw_glyph(&mut img, g, col, row, fg);
        }
    }
    img
}

/// A smooth, photo-like picture: gradients and low-frequency waves.
fn photo() -> Image {
    let mut img = Image::filled(W, H, BG);
    for y in 0..H {
        for x in 0..W {
            let (fx, fy) = (f64::from(x) / f64::from(W), f64::from(y) / f64::from(H));
            let r = 128.0 + 100.0 * (fx * 7.0 + fy * 3.0).sin();
            let g = 128.0 + 90.0 * (fy * 5.0 - fx * 2.0).cos();
            let b = 60.0 + 150.0 * fx * fy;
            let i = ((y * W + x) * 4) as usize;
            img.data[i..i + 4].copy_from_slice(&[b as u8, g as u8, r as u8, 255]);
        }
    }
    img
}

fn cpu_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// CPU time (ns) of each thread of this process, from `/proc/self/task/*/schedstat`.
fn thread_cpu() -> std::collections::HashMap<String, u64> {
    let mut map = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let path = entry.path().join("schedstat");
        if let Some(ns) = std::fs::read_to_string(path)
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        {
            map.insert(entry.file_name().to_string_lossy().into_owned(), ns);
        }
    }
    map
}

fn y_plane(img: &Image) -> Vec<u8> {
    let mut yuv = YUVBuffer::new(img.width as usize, img.height as usize);
    yuv.read_bgra8(BgraSliceU8::new(
        &img.data,
        (img.width as usize, img.height as usize),
    ));
    yuv.y().to_vec()
}

/// Y-plane PSNR (dB) and mean SSIM over non-overlapping 8×8 windows.
fn quality(src: &[u8], dec: &[u8], dec_stride: usize) -> (f64, f64) {
    let (w, h) = (W as usize, H as usize);
    let mut sse = 0u64;
    for y in 0..h {
        for x in 0..w {
            let d = i64::from(src[y * w + x]) - i64::from(dec[y * dec_stride + x]);
            sse += (d * d) as u64;
        }
    }
    let psnr = if sse == 0 {
        99.0
    } else {
        10.0 * (255.0 * 255.0 * (w * h) as f64 / sse as f64).log10()
    };
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let (mut total, mut n) = (0.0, 0u32);
    for by in (0..h - 7).step_by(8) {
        for bx in (0..w - 7).step_by(8) {
            let (mut sa, mut sb, mut saa, mut sbb, mut sab) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for y in by..by + 8 {
                for x in bx..bx + 8 {
                    let a = f64::from(src[y * w + x]);
                    let b = f64::from(dec[y * dec_stride + x]);
                    sa += a;
                    sb += b;
                    saa += a * a;
                    sbb += b * b;
                    sab += a * b;
                }
            }
            let (ma, mb) = (sa / 64.0, sb / 64.0);
            let (va, vb) = (saa / 64.0 - ma * ma, sbb / 64.0 - mb * mb);
            let cov = sab / 64.0 - ma * mb;
            total += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            n += 1;
        }
    }
    (psnr, total / f64::from(n))
}

/// What to encode with.
#[derive(Clone, Copy)]
enum Config {
    /// The encoder of `main` before this change, replayed.
    Before,
    Tuned(H264Tuning),
}

impl Config {
    fn name(&self) -> String {
        match self {
            Config::Before => "main (before): Screen Medium BB, 1 slice".into(),
            Config::Tuned(t) => format!(
                "{:?} {:?} {}, {} slice{}{}",
                t.usage,
                t.complexity,
                match t.rate_control {
                    H264RateControl::Bufferbased => "BB",
                    H264RateControl::Quality => "Quality",
                    H264RateControl::Bitrate => "Bitrate",
                    H264RateControl::Off => "RC off",
                },
                t.slices,
                if t.slices == 1 { "" } else { "s" },
                if t.deblocking { "" } else { ", no deblocking" }
            ),
        }
    }
}

/// The encoder of `main` before this change (crates/codec/src/lib.rs `H264` and the
/// unchanged-frame check and copy of `Encoder::encode`), at quality 70.
struct Before {
    encoder: openh264::encoder::Encoder,
    yuv: YUVBuffer,
    prev: Option<Image>,
    started: Instant,
}

impl Before {
    fn new() -> Self {
        let bps = (f64::from(W) * f64::from(H) * 3.0) as u32;
        let config = EncoderConfig::new()
            .usage_type(UsageType::ScreenContentRealTime)
            .rate_control_mode(RateControlMode::Bufferbased)
            .adaptive_quantization(false)
            .background_detection(false)
            .bitrate(openh264::encoder::BitRate::from_bps(bps))
            .max_frame_rate(openh264::encoder::FrameRate::from_hz(30.0))
            .skip_frames(false)
            .sps_pps_strategy(SpsPpsStrategy::ConstantId)
            .qp(QpRange::new(25, 28))
            .num_threads(1);
        let encoder =
            openh264::encoder::Encoder::with_api_config(OpenH264API::from_source(), config)
                .expect("openh264");
        Self {
            encoder,
            yuv: YUVBuffer::new(W as usize, H as usize),
            prev: None,
            started: Instant::now(),
        }
    }

    fn encode(&mut self, image: &Image) -> Option<Vec<u8>> {
        if self.prev.as_ref().is_some_and(|p| p.data == image.data) {
            return None;
        }
        self.yuv
            .read_bgra8(BgraSliceU8::new(&image.data, (W as usize, H as usize)));
        let ts = Timestamp::from_millis(self.started.elapsed().as_millis() as u64);
        let data = self.encoder.encode_at(&self.yuv, ts).ok()?.to_vec();
        match &mut self.prev {
            Some(p) => {
                p.data.clear();
                p.data.extend_from_slice(&image.data);
            }
            None => self.prev = Some(image.clone()),
        }
        Some(data)
    }
}

enum Enc {
    Before(Box<Before>),
    Tuned(Box<Encoder>),
}

impl Enc {
    fn new(config: Config) -> Self {
        match config {
            Config::Before => Enc::Before(Box::new(Before::new())),
            Config::Tuned(t) => {
                let mut e = Encoder::new(Codec::H264);
                e.set_h264_tuning(t);
                Enc::Tuned(Box::new(e))
            }
        }
    }

    fn encode(&mut self, image: &Image) -> Vec<u8> {
        match self {
            Enc::Before(b) => b.encode(image).expect("encode"),
            Enc::Tuned(e) => {
                let f = e.encode(image, false).expect("a changed frame");
                assert_eq!(f.codec, Codec::H264, "fell back to lossless");
                f.data.to_vec()
            }
        }
    }

    fn stages(&self) -> H264StageTimes {
        match self {
            Enc::Before(_) => H264StageTimes::default(),
            Enc::Tuned(e) => e.h264_stage_times(),
        }
    }
}

#[derive(Default)]
struct Stats {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    bytes: Vec<usize>,
    psnr: Vec<f64>,
    ssim: Vec<f64>,
    /// Per-frame ms of compare / convert / encode (wall).
    stages: [f64; 3],
    slices: usize,
    /// CPU ms per frame of the busiest thread: the wall time on idle cores, one per slice.
    busiest: f64,
    /// Threads of this process while the encoder ran (Linux `/proc/self/task`).
    threads: usize,
}

impl Stats {
    fn mean(v: &[f64]) -> f64 {
        v.iter().sum::<f64>() / v.len().max(1) as f64
    }

    fn p95(v: &[f64]) -> f64 {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.get((s.len() * 95 / 100).min(s.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    }

    fn min(v: &[f64]) -> f64 {
        v.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// Slices (VCL NAL units) in an access unit.
fn count_slices(au: &[u8]) -> usize {
    openh264::nal_units(au)
        .filter(|nal| {
            let hdr = nal.iter().position(|&b| b == 1).map_or(0, |i| i + 1);
            matches!(nal.get(hdr).map(|b| b & 0x1f), Some(1 | 5))
        })
        .count()
}

/// Encodes `frames` (after `warmup` unmeasured ones); `quality_every` decoded frames are
/// compared with their source (the last is always compared).
/// `next(img, k)` turns `img` into frame `k` (0-based, warm-up frames first).
struct Scenario<'a> {
    start: Image,
    warmup: usize,
    frames: usize,
    next: &'a dyn Fn(&mut Image, usize),
    /// Every how many measured frames the quality is computed (the last always is).
    quality_every: usize,
    /// Whether measured frame `i` counts for quality.
    measure_on: &'a dyn Fn(usize) -> bool,
}

fn run(config: Config, sc: &Scenario<'_>, decode: bool) -> Stats {
    let mut enc = Enc::new(config);
    let mut dec = Decoder::new().expect("decoder");
    let mut img = sc.start.clone();
    for k in 0..sc.warmup {
        (sc.next)(&mut img, k);
        let au = enc.encode(&img);
        dec.decode(&au).expect("decode").expect("a picture");
    }
    let mut stats = Stats::default();
    let before = enc.stages();
    let mut per_thread: std::collections::HashMap<String, u64> = Default::default();
    for i in 0..sc.frames {
        (sc.next)(&mut img, sc.warmup + i);
        let img = &img;
        let threads_before = thread_cpu();
        let (w0, c0) = (Instant::now(), cpu_now());
        let au = enc.encode(img);
        let (c1, w1) = (cpu_now(), Instant::now());
        for (tid, ns) in thread_cpu() {
            *per_thread.entry(tid.clone()).or_default() +=
                ns.saturating_sub(threads_before.get(&tid).copied().unwrap_or(0));
        }
        stats.wall.push((w1 - w0).as_secs_f64() * 1e3);
        stats.cpu.push((c1 - c0).as_secs_f64() * 1e3);
        stats.bytes.push(au.len());
        stats.slices = stats.slices.max(count_slices(&au));
        if !decode {
            continue;
        }
        let yuv = dec.decode(&au).expect("decode").expect("a picture");
        if (i % sc.quality_every == 0 || i + 1 == sc.frames) && (sc.measure_on)(i) {
            let (q_psnr, q_ssim) = quality(&y_plane(img), yuv.y(), yuv.strides().0);
            stats.psnr.push(q_psnr);
            stats.ssim.push(q_ssim);
        }
    }
    stats.busiest = per_thread.values().copied().max().unwrap_or(0) as f64 / 1e6 / sc.frames as f64;
    stats.threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    let after = enc.stages();
    let n = (after.frames - before.frames).max(1) as f64;
    stats.stages = [
        (after.compare - before.compare).as_secs_f64() * 1e3 / n,
        (after.convert - before.convert).as_secs_f64() * 1e3 / n,
        (after.encode - before.encode).as_secs_f64() * 1e3 / n,
    ];
    stats
}

fn print_row(name: &str, s: &Stats) {
    let bytes = s.bytes.iter().sum::<usize>() as f64 / s.bytes.len() as f64;
    let stages = if s.stages == [0.0; 3] {
        "–".to_string()
    } else {
        format!(
            "{:.2} / {:.2} / {:.2}",
            s.stages[0], s.stages[1], s.stages[2]
        )
    };
    let quality = if s.psnr.is_empty() {
        "– | –".to_string()
    } else {
        format!(
            "{:.2} / {:.2} | {:.4} / {:.4}",
            Stats::mean(&s.psnr),
            Stats::min(&s.psnr),
            Stats::mean(&s.ssim),
            Stats::min(&s.ssim)
        )
    };
    println!(
        "| {name} | {} / {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {stages} | {:.0} | {:.0} | {quality} |",
        s.slices,
        s.threads,
        Stats::mean(&s.wall),
        Stats::p95(&s.wall),
        Stats::mean(&s.cpu),
        Stats::p95(&s.cpu),
        s.busiest,
        bytes,
        bytes * 30.0 / 1000.0,
    );
}

fn header(title: &str) {
    println!("\n### {title}\n");
    println!(
        "| configuration | slices in AU / process threads | wall ms mean / p95 | CPU ms mean / p95 | busiest thread CPU ms | compare / convert / encode ms | bytes/frame | KB/s @30 fps | Y-PSNR dB mean / min | SSIM mean / min |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let typing_on = !args.iter().any(|a| a == "--full-only");
    let full_on = !args.iter().any(|a| a == "--typing-only");
    let decode = !args.iter().any(|a| a == "--no-quality");
    let glyphs = glyphs();

    // Typing: the page's last rows are empty; one glyph per frame is typed there.
    let (warm_n, typed_n) = if quick { (10, 60) } else { (30, 300) };
    let typed: Vec<usize> = {
        let mut rng = Rng(99);
        (0..warm_n + typed_n)
            .map(|_| rng.below(glyphs.len() as u64) as usize)
            .collect()
    };
    let type_one = |img: &mut Image, k: usize| {
        let k32 = k as u32;
        draw_glyph(
            img,
            &glyphs[typed[k]],
            k32 % 200,
            52 + k32 / 200,
            COLOURS[0],
        );
    };
    let typing = Scenario {
        start: text_page(&glyphs, 7, 50),
        warmup: warm_n,
        frames: typed_n,
        next: &type_one,
        quality_every: 30,
        measure_on: &|_| true,
    };

    // Full change: text page and photo alternating.
    let pages = [text_page(&glyphs, 11, 67), photo()];
    let show = |img: &mut Image, k: usize| img.data.copy_from_slice(&pages[k % 2].data);
    let full = Scenario {
        start: pages[1].clone(),
        warmup: 4,
        frames: if quick { 20 } else { 60 },
        next: &show,
        quality_every: 1,
        // Even frames (after 4 warm-up frames) show the text page.
        measure_on: &|i| i % 2 == 0,
    };

    let t = |usage, complexity, rate_control, slices, deblocking| {
        Config::Tuned(H264Tuning {
            usage,
            complexity,
            rate_control,
            slices,
            deblocking,
        })
    };
    use H264Complexity::{Low, Medium};
    use H264RateControl::{Bitrate, Bufferbased, Quality};
    use H264Usage::{Camera, Screen};
    let mut configs = vec![Config::Before];
    for (usage, complexity) in [
        (Screen, Medium),
        (Screen, Low),
        (Camera, Medium),
        (Camera, Low),
    ] {
        for slices in [1, 2, 4] {
            configs.push(t(usage, complexity, Bufferbased, slices, true));
        }
    }
    for (usage, complexity) in [(Screen, Low), (Camera, Low)] {
        configs.push(t(usage, complexity, Quality, 2, true));
        configs.push(t(usage, complexity, Bitrate, 2, true));
    }
    // Without the deblocking filter.
    configs.push(t(Screen, Medium, Bufferbased, 2, false));
    configs.push(t(Camera, Medium, Bufferbased, 2, false));
    for slices in [1, 2, 4] {
        configs.push(t(Camera, Low, Bufferbased, slices, false));
    }
    configs.push(t(Camera, Low, Quality, 2, false));

    configs.retain(|c| {
        only.as_ref()
            .is_none_or(|o| o.split('|').any(|o| c.name().contains(o)))
    });
    println!(
        "\n### Encoder start: new encoder + first IDR of the text page (wall ms, best / median of 5)\n"
    );
    println!("| configuration | best | median |\n|---|---|---|");
    for c in &configs {
        let mut times: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                let mut enc = Enc::new(*c);
                enc.encode(&pages[0]);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        times.sort_by(f64::total_cmp);
        println!("| {} | {:.1} | {:.1} |", c.name(), times[0], times[2]);
    }
    println!(
        "1920×1080, quality 70 (QP 25..28), available_parallelism = {}",
        guruconnect_codec::default_slices()
    );
    header("Typing: one glyph per frame (300 frames after 30 warm-up)");
    for c in configs.iter().filter(|_| typing_on) {
        let s = run(*c, &typing, decode);
        print_row(&c.name(), &s);
    }
    header(
        "Full change: text page ↔ photo-like picture alternating (60 frames); quality on the text page",
    );
    for c in configs.iter().filter(|_| full_on) {
        let s = run(*c, &full, decode);
        print_row(&c.name(), &s);
    }
}
