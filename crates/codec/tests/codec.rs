//! Behaviour tests of the frame codecs: dirty tiles, lossless round trips, malformed input,
//! H.264 quality and the lossless fallback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use guruconnect_codec::{
    CodecError, Decoder, EncodedFrame, Encoder, H264Tuning, Image, Rect, TILE, dirty_tiles, psnr,
};
use guruconnect_proto::{Codec, VideoFrame};

/// Small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u32) -> u32 {
        (self.next() % u64::from(n)) as u32
    }
    fn byte(&mut self) -> u8 {
        (self.next() >> 32) as u8
    }
}

/// Random opaque pixels (the lossless stream is opaque; see `capture_padding_is_sent_opaque`).
fn noise(width: u32, height: u32, rng: &mut Rng) -> Image {
    let data = (0..width as usize * height as usize * 4)
        .map(|i| if i % 4 == 3 { 0xff } else { rng.byte() })
        .collect();
    Image {
        width,
        height,
        data,
    }
}

fn set_px(img: &mut Image, x: u32, y: u32, bgra: [u8; 4]) {
    let i = (y as usize * img.width as usize + x as usize) * 4;
    img.data[i..i + 4].copy_from_slice(&bgra);
}

fn px(img: &Image, x: u32, y: u32) -> [u8; 4] {
    let i = (y as usize * img.width as usize + x as usize) * 4;
    img.data[i..i + 4].try_into().unwrap()
}

/// Fills `r` with random pixels, making sure at least one pixel changes.
fn scribble(img: &mut Image, r: Rect, rng: &mut Rng) {
    for y in r.y..r.y + r.height {
        for x in r.x..r.x + r.width {
            let old = px(img, x, y);
            let mut new = [rng.byte(), rng.byte(), rng.byte(), 0xff];
            if new == old {
                new[0] = !new[0];
            }
            set_px(img, x, y, new);
        }
    }
}

fn random_rect(width: u32, height: u32, rng: &mut Rng) -> Rect {
    let x = rng.below(width);
    let y = rng.below(height);
    let w = 1 + rng.below((width - x).min(90));
    let h = 1 + rng.below((height - y).min(90));
    Rect {
        x,
        y,
        width: w,
        height: h,
    }
}

/// The (column, row) tiles covered by `rects`, checking that each rect is tile-aligned
/// and clipped to the image.
fn tiles_of(rects: &[Rect], width: u32, height: u32) -> BTreeSet<(u32, u32)> {
    let mut set = BTreeSet::new();
    for r in rects {
        assert_eq!(r.x % TILE, 0, "{r:?} not tile-aligned");
        assert_eq!(r.y % TILE, 0, "{r:?} not tile-aligned");
        assert!(r.width > 0 && r.height > 0, "{r:?} empty");
        assert!(
            r.x + r.width <= width && r.y + r.height <= height,
            "{r:?} outside"
        );
        assert!(
            r.width % TILE == 0 || r.x + r.width == width,
            "{r:?} ends mid-tile"
        );
        assert!(
            r.height == TILE.min(height - r.y),
            "{r:?} must span exactly one tile row"
        );
        for tx in r.x / TILE..(r.x + r.width).div_ceil(TILE) {
            assert!(
                set.insert((tx, r.y / TILE)),
                "tile ({tx},{}) twice",
                r.y / TILE
            );
        }
    }
    set
}

/// The changed tiles computed pixel by pixel.
fn changed_tiles_naive(a: &Image, b: &Image) -> BTreeSet<(u32, u32)> {
    let mut set = BTreeSet::new();
    for y in 0..a.height {
        for x in 0..a.width {
            if px(a, x, y) != px(b, x, y) {
                set.insert((x / TILE, y / TILE));
            }
        }
    }
    set
}

#[test]
fn dirty_tiles_of_equal_images_is_empty() {
    let mut rng = Rng(1);
    let a = noise(200, 130, &mut rng);
    assert!(dirty_tiles(&a, &a.clone()).is_empty());
    let big = Image::filled(1920, 1080, [1, 2, 3, 255]);
    assert!(dirty_tiles(&big, &big.clone()).is_empty());
}

#[test]
fn dirty_tiles_finds_exactly_the_changed_tiles_including_clipped_edges() {
    let mut rng = Rng(2);
    let a = noise(200, 130, &mut rng);
    // 200×130: 4 tile columns (last 8 px wide) × 3 tile rows (last 2 px high).
    let mut b = a.clone();
    set_px(&mut b, 199, 129, [9, 9, 9, 9]); // bottom-right corner tile (3, 2)
    set_px(&mut b, 0, 128, [0, 1, 2, 3]); // bottom edge tile (0, 2)
    set_px(&mut b, 130, 70, [5, 5, 5, 5]); // interior tile (2, 1)
    set_px(&mut b, 192, 0, [7, 7, 7, 7]); // right edge tile (3, 0)
    let b_px = px(&b, 100, 10);
    set_px(&mut b, 100, 10, [!b_px[0], b_px[1], b_px[2], b_px[3]]); // tile (1, 0)
    let rects = dirty_tiles(&a, &b);
    let expected: BTreeSet<_> = [(3, 2), (0, 2), (2, 1), (3, 0), (1, 0)].into();
    assert_eq!(tiles_of(&rects, 200, 130), expected);
    // The corner tile is clipped to 8×2.
    assert!(rects.contains(&Rect {
        x: 192,
        y: 128,
        width: 8,
        height: 2
    }));

    // Randomised against a pixel-by-pixel reference.
    for round in 0..40 {
        let mut c = a.clone();
        for _ in 0..1 + round % 7 {
            let r = random_rect(200, 130, &mut rng);
            let r = Rect {
                width: r.width.min(3),
                height: r.height.min(3),
                ..r
            };
            scribble(&mut c, r, &mut rng);
        }
        let rects = dirty_tiles(&a, &c);
        assert_eq!(tiles_of(&rects, 200, 130), changed_tiles_naive(&a, &c));
    }
}

#[test]
fn dirty_tiles_of_different_sizes_is_one_full_rect() {
    let a = Image::filled(200, 130, [0, 0, 0, 255]);
    let b = Image::filled(201, 130, [0, 0, 0, 255]);
    assert_eq!(
        dirty_tiles(&a, &b),
        vec![Rect {
            x: 0,
            y: 0,
            width: 201,
            height: 130
        }]
    );
}

/// Encodes, checks the wire form, decodes and asserts the decoder canvas equals `img`.
fn round_trip(enc: &mut Encoder, dec: &mut Decoder, img: &Image, force: bool) -> EncodedFrame {
    let frame = enc.encode(img, force).expect("changed image encodes");
    let wire = frame.to_video_frame(3, 42, 1_000);
    let out = dec.decode(&wire).expect("decodes");
    assert_eq!(out.width, img.width);
    assert_eq!(out.height, img.height);
    assert!(out.data == img.data, "decoded image differs from source");
    frame
}

/// The lossless payload is exactly zstd(rows of each rect, in order).
fn check_payload_format(frame: &EncodedFrame, img: &Image) {
    let raw = zstd::stream::decode_all(&frame.data[..]).unwrap();
    let mut expected = Vec::new();
    for r in &frame.rects {
        for y in r.y..r.y + r.height {
            let start = (y as usize * img.width as usize + r.x as usize) * 4;
            expected.extend_from_slice(&img.data[start..start + r.width as usize * 4]);
        }
    }
    assert!(raw == expected, "payload is not the concatenated rect rows");
}

#[test]
fn lossless_round_trip_is_pixel_exact_across_a_sequence() {
    let mut rng = Rng(3);
    let mut enc = Encoder::new(Codec::RawZstd);
    assert_eq!(enc.codec(), Codec::RawZstd);
    let mut dec = Decoder::new();
    let mut img = noise(200, 130, &mut rng);

    let first = round_trip(&mut enc, &mut dec, &img, false);
    assert!(first.keyframe);
    assert_eq!(first.codec, Codec::RawZstd);
    assert_eq!(first.rects, vec![img.full_rect()]);
    check_payload_format(&first, &img);

    assert!(enc.encode(&img, false).is_none(), "unchanged image → None");

    for _ in 0..12 {
        for _ in 0..1 + rng.below(3) {
            let r = random_rect(200, 130, &mut rng);
            scribble(&mut img, r, &mut rng);
        }
        let frame = round_trip(&mut enc, &mut dec, &img, false);
        assert!(!frame.keyframe, "partial update flagged as keyframe");
        assert!(frame.rects.iter().map(Rect::area).sum::<u64>() < 200 * 130);
        check_payload_format(&frame, &img);
    }

    let forced = round_trip(&mut enc, &mut dec, &img, true);
    assert!(forced.keyframe);
    assert_eq!(forced.rects, vec![img.full_rect()]);

    // Size change: a keyframe at the new size.
    let mut img = noise(333, 77, &mut rng);
    let frame = round_trip(&mut enc, &mut dec, &img, false);
    assert!(frame.keyframe);
    for _ in 0..4 {
        let r = random_rect(333, 77, &mut rng);
        scribble(&mut img, r, &mut rng);
        round_trip(&mut enc, &mut dec, &img, false);
    }
}

#[test]
fn capture_padding_is_sent_opaque() {
    // X11 captures are BGRX: the fourth byte is padding, often 0.
    let mut rng = Rng(11);
    let mut img = noise(90, 70, &mut rng);
    for px in img.data.chunks_exact_mut(4) {
        px[3] = 0;
    }
    let mut enc = Encoder::new(Codec::RawZstd);
    let mut dec = Decoder::new();
    let opaque = |img: &Image| {
        let mut o = img.clone();
        o.data.chunks_exact_mut(4).for_each(|p| p[3] = 0xff);
        o
    };
    let frame = enc.encode(&img, false).unwrap();
    assert_eq!(
        dec.decode(&frame.to_video_frame(0, 1, 0)).unwrap(),
        &opaque(&img)
    );
    set_px(&mut img, 5, 5, [1, 2, 3, 0]);
    let frame = enc.encode(&img, false).unwrap();
    assert!(!frame.keyframe);
    assert_eq!(
        dec.decode(&frame.to_video_frame(0, 2, 0)).unwrap(),
        &opaque(&img)
    );
}

#[test]
fn lossless_follows_a_region_changed_and_changed_back() {
    // The encoder keeps only the changed tiles of each frame as its previous picture; a
    // region changed and then restored must be sent both times.
    let mut rng = Rng(5);
    let original = noise(300, 200, &mut rng);
    let mut enc = Encoder::new(Codec::RawZstd);
    let mut dec = Decoder::new();
    round_trip(&mut enc, &mut dec, &original, false);
    for round in 0..20 {
        let mut changed = original.clone();
        let r = random_rect(300, 200, &mut rng);
        scribble(&mut changed, r, &mut rng);
        let there = round_trip(&mut enc, &mut dec, &changed, false);
        assert!(!there.keyframe, "round {round}");
        let back = round_trip(&mut enc, &mut dec, &original, false);
        assert!(!back.keyframe, "round {round}");
        assert_eq!(
            back.rects, there.rects,
            "round {round}: the same tiles change back"
        );
    }
}

#[test]
fn decoder_fed_a_partial_frame_first_recovers_at_the_keyframe() {
    let mut rng = Rng(4);
    let mut enc = Encoder::new(Codec::RawZstd);
    let mut img = noise(200, 130, &mut rng);
    let key = enc.encode(&img, false).unwrap();
    scribble(
        &mut img,
        Rect {
            x: 10,
            y: 10,
            width: 20,
            height: 20,
        },
        &mut rng,
    );
    let partial = enc.encode(&img, false).unwrap();
    assert!(!partial.keyframe);
    let key2 = enc.encode(&img, true).unwrap();

    let mut late = Decoder::new();
    let out = late.decode(&partial.to_video_frame(0, 2, 0)).unwrap();
    assert_eq!((out.width, out.height), (200, 130));
    assert_eq!(px(out, 199, 129), [0, 0, 0, 255], "unknown area is black");
    assert_ne!(out, &img);
    let out = late.decode(&key2.to_video_frame(0, 3, 0)).unwrap();
    assert_eq!(out, &img);
    drop(key);
}

fn lossless_frame(
    width: u32,
    height: u32,
    rects: &[(i32, i32, u32, u32)],
    data: Vec<u8>,
) -> VideoFrame {
    VideoFrame {
        codec: Codec::RawZstd as i32,
        width,
        height,
        rects: rects
            .iter()
            .map(|&(x, y, width, height)| guruconnect_proto::Rect {
                x,
                y,
                width,
                height,
            })
            .collect(),
        data: data.into(),
        keyframe: false,
        ..Default::default()
    }
}

#[test]
fn malformed_frames_are_errors_not_panics() {
    let mut dec = Decoder::new();
    let good_pixels = vec![7u8; 16 * 16 * 4];
    let good = zstd::bulk::compress(&good_pixels, 1).unwrap();
    let ok = lossless_frame(32, 32, &[(0, 0, 16, 16)], good.clone());
    dec.decode(&ok).unwrap();
    let before = dec.image().clone();

    let cases: Vec<(&str, VideoFrame)> = vec![
        (
            "truncated zstd",
            lossless_frame(32, 32, &[(0, 0, 16, 16)], good[..good.len() / 2].to_vec()),
        ),
        (
            "garbage payload",
            lossless_frame(32, 32, &[(0, 0, 16, 16)], b"definitely not zstd".to_vec()),
        ),
        (
            "rect outside the image",
            lossless_frame(32, 32, &[(20, 20, 16, 16)], good.clone()),
        ),
        (
            "rect wider than the image",
            lossless_frame(32, 32, &[(0, 0, u32::MAX, 1)], good.clone()),
        ),
        (
            "negative origin",
            lossless_frame(32, 32, &[(-1, 0, 16, 16)], good.clone()),
        ),
        (
            "data shorter than the rects",
            lossless_frame(32, 32, &[(0, 0, 16, 16), (16, 16, 16, 16)], good.clone()),
        ),
        (
            "data longer than the rects",
            lossless_frame(32, 32, &[(0, 0, 8, 8)], good.clone()),
        ),
        (
            "absurd size",
            lossless_frame(1 << 20, 1 << 20, &[], zstd::bulk::compress(&[], 1).unwrap()),
        ),
        (
            "unknown codec",
            VideoFrame {
                codec: 99,
                ..ok.clone()
            },
        ),
        (
            "garbage H.264",
            VideoFrame {
                codec: Codec::H264 as i32,
                data: vec![0, 0, 0, 1, 0x65, 0xff, 0x13, 0x37, 0, 0, 1, 0x41, 9, 9].into(),
                ..ok.clone()
            },
        ),
    ];
    for (what, frame) in cases {
        let res = dec.decode(&frame);
        assert!(
            matches!(res, Err(CodecError::Malformed(_))),
            "{what}: {res:?}"
        );
        assert_eq!(dec.image(), &before, "{what}: canvas changed on error");
    }
    // Still usable afterwards.
    dec.decode(&ok).unwrap();
}

/// A 320×240 test card: smooth gradients plus high-contrast "text" blocks.
fn test_card(width: u32, height: u32, shift: u32) -> Image {
    let mut img = Image::filled(width, height, [0, 0, 0, 255]);
    for y in 0..height {
        for x in 0..width {
            // Wraps to 0 near the right edge: one sharp vertical edge.
            let b = (((x + shift) * 255 / width) % 256) as u8;
            let g = (y * 255 / height) as u8;
            let r = (((x + y) * 128 / (width + height)) + 64) as u8;
            set_px(&mut img, x, y, [b, g, r, 255]);
        }
    }
    // Glyph-like blocks: dark 2-px strokes on a light background, in rows like text.
    for line in 0..4 {
        let y0 = 20 + line * 50;
        for x in 16..width.min(300) {
            for y in y0..y0 + 14 {
                let stroke = (x % 7 < 2) || (y - y0) % 6 < 2 && (x / 7) % 3 != 0;
                let c = if stroke { 20 } else { 235 };
                set_px(&mut img, x, y, [c, c, c, 255]);
            }
        }
    }
    img
}

#[test]
fn h264_round_trip_psnr_at_least_30_db_and_forced_keyframes_decode() {
    let mut enc = Encoder::new(Codec::H264);
    assert_eq!(enc.codec(), Codec::H264, "openh264 is built from source");
    let mut dec = Decoder::new();
    let img = test_card(320, 240, 0);

    let first = enc.encode(&img, false).unwrap();
    assert_eq!(first.codec, Codec::H264);
    assert!(first.keyframe, "first access unit is an IDR");
    assert!(first.rects.is_empty());
    assert_eq!(&first.data[..4], &[0, 0, 0, 1], "Annex-B start code");
    assert_eq!(
        first.data[4] & 0x1f,
        7,
        "IDR access unit starts with its SPS"
    );
    assert_eq!(first.data[5], 66, "baseline profile (profile_idc 66)");
    let out = dec.decode(&first.to_video_frame(0, 1, 0)).unwrap();
    let p = psnr(out, &img);
    println!(
        "H.264 320x240 IDR: {} bytes, PSNR {p:.2} dB",
        first.data.len()
    );
    assert!(p >= 30.0, "IDR PSNR {p:.2} dB < 30");

    assert!(enc.encode(&img, false).is_none(), "unchanged image → None");

    // A change: a P frame.
    let moved = test_card(320, 240, 9);
    let delta = enc.encode(&moved, false).unwrap();
    assert!(!delta.keyframe);
    let out = dec.decode(&delta.to_video_frame(0, 2, 0)).unwrap();
    let p = psnr(out, &moved);
    println!("H.264 P frame: {} bytes, PSNR {p:.2} dB", delta.data.len());
    assert!(p >= 30.0, "P PSNR {p:.2} dB < 30");

    // A second forced keyframe, decoded both in sequence and by a fresh decoder.
    let key = enc.encode(&moved, true).unwrap();
    assert!(key.keyframe);
    let wire = key.to_video_frame(0, 3, 0);
    let p = psnr(dec.decode(&wire).unwrap(), &moved);
    assert!(p >= 30.0, "forced IDR PSNR {p:.2} dB < 30");
    let mut fresh = Decoder::new();
    let p = psnr(fresh.decode(&wire).unwrap(), &moved);
    assert!(p >= 30.0, "forced IDR (fresh decoder) PSNR {p:.2} dB < 30");
}

#[test]
fn h264_odd_size_is_padded_and_cropped_psnr_at_least_30_db() {
    let mut enc = Encoder::new(Codec::H264);
    let mut dec = Decoder::new();
    let img = test_card(321, 241, 0);
    let frame = enc.encode(&img, false).unwrap();
    assert_eq!(frame.codec, Codec::H264);
    assert_eq!((frame.width, frame.height), (321, 241));
    let out = dec.decode(&frame.to_video_frame(0, 1, 0)).unwrap();
    assert_eq!((out.width, out.height), (321, 241));
    let p = psnr(out, &img);
    assert!(p >= 30.0, "odd-size PSNR {p:.2} dB < 30");

    // Size change mid-stream: a new IDR at the new size.
    let img2 = test_card(320, 240, 3);
    let frame = enc.encode(&img2, false).unwrap();
    assert!(frame.keyframe);
    let p = psnr(dec.decode(&frame.to_video_frame(0, 2, 0)).unwrap(), &img2);
    assert!(p >= 30.0, "after resize PSNR {p:.2} dB < 30");
}

#[test]
fn h264_quality_change_keeps_decoding() {
    let mut enc = Encoder::new(Codec::H264);
    let mut dec = Decoder::new();
    let img = test_card(320, 240, 0);
    let low = {
        enc.set_quality(1);
        let f = enc.encode(&img, false).unwrap();
        psnr(dec.decode(&f.to_video_frame(0, 1, 0)).unwrap(), &img)
    };
    enc.set_quality(100);
    let f = enc.encode(&test_card(320, 240, 1), false).unwrap();
    assert!(f.keyframe, "a new quality restarts with an IDR");
    let high = psnr(
        dec.decode(&f.to_video_frame(0, 2, 0)).unwrap(),
        &test_card(320, 240, 1),
    );
    println!("quality 1: {low:.2} dB, quality 100: {high:.2} dB");
    assert!(
        high > low,
        "quality 100 ({high:.2}) not better than 1 ({low:.2})"
    );
    assert_eq!(enc.codec(), Codec::H264);
}

#[test]
fn h264_failure_falls_back_to_a_lossless_keyframe_permanently() {
    let mut rng = Rng(5);
    let mut enc = Encoder::new(Codec::H264);
    let mut dec = Decoder::new();
    let img = test_card(320, 240, 0);
    let f = enc.encode(&img, false).unwrap();
    assert_eq!(f.codec, Codec::H264);
    dec.decode(&f.to_video_frame(0, 1, 0)).unwrap();

    enc.inject_h264_failure();
    let mut img2 = test_card(320, 240, 5);
    let f = round_trip(&mut enc, &mut dec, &img2, false);
    assert_eq!(f.codec, Codec::RawZstd);
    assert!(f.keyframe);
    assert_eq!(enc.codec(), Codec::RawZstd);

    // Stays lossless, with partial updates.
    scribble(
        &mut img2,
        Rect {
            x: 100,
            y: 100,
            width: 5,
            height: 5,
        },
        &mut rng,
    );
    let f = round_trip(&mut enc, &mut dec, &img2, false);
    assert_eq!(f.codec, Codec::RawZstd);
    assert!(!f.keyframe);
    assert_eq!(enc.codec(), Codec::RawZstd);
}

#[test]
fn h264_rejecting_the_image_size_falls_back_to_lossless() {
    // openh264 refuses pictures wider than 3840.
    let mut rng = Rng(6);
    let mut enc = Encoder::new(Codec::H264);
    assert_eq!(enc.codec(), Codec::H264);
    let mut dec = Decoder::new();
    let img = noise(4000, 8, &mut rng);
    let f = round_trip(&mut enc, &mut dec, &img, false);
    assert_eq!(f.codec, Codec::RawZstd);
    assert!(f.keyframe);
    assert_eq!(enc.codec(), Codec::RawZstd);
}

#[test]
fn to_video_frame_carries_every_field() {
    let mut enc = Encoder::new(Codec::RawZstd);
    let img = Image::filled(70, 70, [1, 2, 3, 4]);
    enc.encode(&img, false).unwrap();
    let mut img2 = img.clone();
    set_px(&mut img2, 69, 69, [0, 0, 0, 0]);
    let f = enc.encode(&img2, false).unwrap();
    let v = f.to_video_frame(2, 17, 123_456);
    assert_eq!(v.codec, Codec::RawZstd as i32);
    assert_eq!(
        (v.display_id, v.sequence, v.capture_timestamp_us),
        (2, 17, 123_456)
    );
    assert_eq!((v.width, v.height), (70, 70));
    assert_eq!(
        v.rects,
        vec![guruconnect_proto::Rect {
            x: 64,
            y: 64,
            width: 6,
            height: 6
        }]
    );
    assert_eq!(v.data, f.data);
    assert!(!v.keyframe);
}

#[test]
fn psnr_values() {
    let a = Image::filled(10, 10, [100, 100, 100, 255]);
    assert_eq!(psnr(&a, &a), f64::INFINITY);
    // Alpha is ignored.
    let alpha = Image::filled(10, 10, [100, 100, 100, 0]);
    assert_eq!(psnr(&a, &alpha), f64::INFINITY);
    // Off by one everywhere: MSE 1 → 20·log10(255) ≈ 48.13 dB.
    let b = Image::filled(10, 10, [101, 99, 101, 255]);
    assert!((psnr(&a, &b) - 48.1308).abs() < 1e-3);
}

/// A dark terminal page of `width × height`: rows of 8×16 light-grey glyphs with 1-px
/// strokes, drawn from a seeded set (text-like, high-frequency content).
fn text_page(width: u32, height: u32, seed: u64) -> Image {
    let mut img = Image::filled(width, height, [30, 30, 30, 255]);
    let mut rng = Rng(seed);
    let glyphs: Vec<[u8; 16]> = (0..64)
        .map(|_| {
            let mut g = [0u8; 16];
            for _ in 0..3 {
                let x = 1 + rng.below(6);
                for row in &mut g[3 + rng.below(4) as usize..10 + rng.below(4) as usize] {
                    *row |= 0x80 >> x;
                }
            }
            let y = 3 + rng.below(11) as usize;
            g[y] |= 0x7c;
            g
        })
        .collect();
    for row in 0..height / 16 {
        let len = rng.below(width / 8);
        for col in 0..len {
            let glyph = glyphs[rng.below(64) as usize];
            draw_glyph(&mut img, &glyph, col, row);
        }
    }
    img
}

fn draw_glyph(img: &mut Image, glyph: &[u8; 16], col: u32, row: u32) {
    for (dy, bits) in glyph.iter().enumerate() {
        for dx in 0..8 {
            let c = if bits & (0x80 >> dx) != 0 { 204 } else { 30 };
            set_px(img, col * 8 + dx, row * 16 + dy as u32, [c, c, c, 255]);
        }
    }
}

/// Slice NAL units (types 1 and 5) in an Annex-B access unit.
fn slice_count(au: &[u8]) -> usize {
    au.windows(4)
        .filter(|w| w[..3] == [0, 0, 1] && matches!(w[3] & 0x1f, 1 | 5))
        .count()
}

#[test]
fn h264_multi_slice_1080p_text_round_trips_above_35_db() {
    let default = H264Tuning::default();
    for (slices, deblocking) in [(4, true), (default.slices, default.deblocking)] {
        let mut enc = Encoder::new(Codec::H264);
        enc.set_h264_tuning(H264Tuning {
            slices,
            deblocking,
            ..default
        });
        let mut dec = Decoder::new();
        let mut img = text_page(1920, 1080, 17);
        let key = enc.encode(&img, false).unwrap();
        assert_eq!(key.codec, Codec::H264);
        assert!(key.keyframe);
        assert_eq!(
            slice_count(&key.data),
            usize::from(slices),
            "IDR has {slices} slices"
        );
        let p = psnr(dec.decode(&key.to_video_frame(0, 1, 0)).unwrap(), &img);
        println!(
            "{slices} slices: 1080p text IDR {} bytes, PSNR {p:.2} dB",
            key.data.len()
        );
        assert!(p >= 35.0, "{slices} slices: IDR PSNR {p:.2} dB < 35");

        // Typing: one glyph per frame in different slices; only changed bands are converted,
        // so a stale band would show here.
        let glyph = [
            0x00, 0x00, 0x7e, 0x42, 0x42, 0x42, 0x7e, 0x42, 0x42, 0x42, 0x42, 0, 0, 0, 0, 0,
        ];
        for (i, (col, row)) in [(3, 0), (100, 20), (200, 40), (239, 66), (5, 33)]
            .into_iter()
            .enumerate()
        {
            draw_glyph(&mut img, &glyph, col, row);
            let f = enc.encode(&img, false).unwrap();
            assert_eq!(f.codec, Codec::H264);
            assert!(!f.keyframe);
            assert_eq!(slice_count(&f.data), usize::from(slices));
            let wire = f.to_video_frame(0, 2 + i as u64, 0);
            let p = psnr(dec.decode(&wire).unwrap(), &img);
            assert!(p >= 35.0, "{slices} slices, glyph {i}: PSNR {p:.2} dB < 35");
        }
        assert!(enc.encode(&img, false).is_none(), "unchanged image → None");
    }
}

#[test]
fn h264_forced_keyframe_of_an_unchanged_picture_after_a_quality_change_decodes() {
    // A new quality rebuilds the encoder, whose picture buffer starts empty: a forced
    // keyframe of the same capture must still carry that capture.
    let img = test_card(320, 240, 0);
    let mut enc = Encoder::new(Codec::H264);
    let mut dec = Decoder::new();
    let f = enc.encode(&img, false).unwrap();
    dec.decode(&f.to_video_frame(0, 0, 0)).unwrap();
    enc.set_quality(90);
    assert!(enc.encode(&img, false).is_none(), "unchanged image → None");
    let key = enc.encode(&img, true).unwrap();
    assert!(key.keyframe);
    let p = psnr(dec.decode(&key.to_video_frame(0, 1, 0)).unwrap(), &img);
    assert!(
        p >= 30.0,
        "forced IDR after a quality change: PSNR {p:.2} dB < 30"
    );
    // And an unchanged forced keyframe from a primed encoder.
    let key = enc.encode(&img, true).unwrap();
    let p = psnr(dec.decode(&key.to_video_frame(0, 2, 0)).unwrap(), &img);
    assert!(p >= 30.0, "second forced IDR: PSNR {p:.2} dB < 30");
}

#[test]
fn h264_tuning_reaches_openh264_with_one_and_several_slices() {
    // The deblocking switch is carried in every slice header: the same picture must code
    // differently with and without it, whatever the slice count (openh264 only applies
    // some parameters when it re-initialises, which the one-slice case must also force).
    let img = text_page(320, 240, 3);
    for slices in [1, 2] {
        let au = |deblocking| {
            let mut enc = Encoder::new(Codec::H264);
            enc.set_h264_tuning(H264Tuning {
                slices,
                deblocking,
                ..H264Tuning::default()
            });
            let f = enc.encode(&img, false).unwrap();
            assert_eq!(f.codec, Codec::H264);
            assert_eq!(slice_count(&f.data), usize::from(slices));
            let p = psnr(
                Decoder::new().decode(&f.to_video_frame(0, 0, 0)).unwrap(),
                &img,
            );
            assert!(
                p >= 35.0,
                "{slices} slices, deblocking {deblocking}: {p:.2} dB"
            );
            f.data
        };
        assert_ne!(
            au(true),
            au(false),
            "{slices} slices: deblocking switch ignored"
        );
    }
}

#[test]
fn h264_changed_bands_only_still_decode_to_the_source_at_odd_sizes() {
    // Solid rectangles at random places (including the padded last row and column) over a
    // test card: every decoded picture must match its source, wherever the change was.
    let mut rng = Rng(77);
    let (w, h) = (333, 251);
    let mut img = test_card(w, h, 0);
    let mut enc = Encoder::new(Codec::H264);
    let mut dec = Decoder::new();
    let key = enc.encode(&img, false).unwrap();
    dec.decode(&key.to_video_frame(0, 0, 0)).unwrap();
    for i in 0..30 {
        let r = if i % 5 == 4 {
            // The last rows, including the padded one.
            Rect {
                x: 0,
                y: h - 8,
                width: w,
                height: 8,
            }
        } else {
            let r = random_rect(w, h, &mut rng);
            // At least 8×8: smaller features lose too much to 4:2:0 and QP 25 to tell
            // a stale band from coding loss.
            let (x, y) = (r.x.min(w - 8), r.y.min(h - 8));
            Rect {
                x,
                y,
                width: r.width.max(8).min(w - x),
                height: r.height.max(8).min(h - y),
            }
        };
        // Far from what was there, so a stale band cannot pass for coding loss.
        let mut old = 0u64;
        for y in r.y..r.y + r.height {
            for x in r.x..r.x + r.width {
                old += px(&img, x, y)[..3]
                    .iter()
                    .map(|&v| u64::from(v))
                    .sum::<u64>();
            }
        }
        let g = if old / (r.area() * 3) < 128 { 230 } else { 25 };
        let c = [g, g, g, 255];
        for y in r.y..r.y + r.height {
            for x in r.x..r.x + r.width {
                set_px(&mut img, x, y, c);
            }
        }
        let Some(f) = enc.encode(&img, false) else {
            continue;
        };
        let out = dec.decode(&f.to_video_frame(0, i, 0)).unwrap();
        let p = psnr(out, &img);
        assert!(p >= 30.0, "change {i} ({r:?}): PSNR {p:.2} dB < 30");
        // The changed rect itself: a band left unconverted would be off by 100 levels or
        // more; coding loss on small grey blocks over the colourful card reaches ~12.
        let mut sum = 0u64;
        for y in r.y..r.y + r.height {
            for x in r.x..r.x + r.width {
                let (a, b) = (px(out, x, y), px(&img, x, y));
                sum += (0..3).map(|k| u64::from(a[k].abs_diff(b[k]))).sum::<u64>();
            }
        }
        let mad = sum as f64 / (r.area() * 3) as f64;
        assert!(
            mad <= 25.0,
            "change {i} ({r:?}): mean error {mad:.1} in the rect"
        );
    }
}

/// Rough timing of one changed 1920×1080 frame per codec (`cargo test -- --ignored`).
#[test]
#[ignore = "timing, not a check"]
fn encode_1080p_timing() {
    use std::time::Instant;
    let base = test_card(1920, 1080, 0);
    let shifted = test_card(1920, 1080, 7);
    for codec in [Codec::RawZstd, Codec::H264] {
        let mut enc = Encoder::new(codec);
        let t = Instant::now();
        let f = enc.encode(&base, false).unwrap();
        let key_ms = t.elapsed().as_secs_f64() * 1e3;
        let mut full = Vec::new();
        for i in 0..5 {
            let img = if i % 2 == 0 { &shifted } else { &base };
            let t = Instant::now();
            enc.encode(img, false).unwrap();
            full.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let mut dec = Decoder::new();
        let t = Instant::now();
        dec.decode(&f.to_video_frame(0, 0, 0)).unwrap();
        let dec_ms = t.elapsed().as_secs_f64() * 1e3;
        let key = enc.encode(&base, true).unwrap();
        let t = Instant::now();
        dec.decode(&key.to_video_frame(0, 1, 0)).unwrap();
        let dec2_ms = t.elapsed().as_secs_f64() * 1e3;
        println!("{codec:?}: second keyframe decode {dec2_ms:.1} ms");
        println!(
            "{codec:?}: keyframe {key_ms:.1} ms ({} bytes), changed frames {full:.1?} ms, decode keyframe {dec_ms:.1} ms",
            f.data.len()
        );
    }
}

#[test]
fn oversize_frames_are_sent_as_bands_under_the_cap_that_decode_exactly() {
    // Noise: zstd cannot compress it, so one 1920x1080 frame is ~8 MB, over a 4 MiB cap.
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let image = noise(1920, 1080, &mut rng);
    let cap = 4 * 1024 * 1024 - 4096;
    let mut encoder = Encoder::new(Codec::RawZstd);
    let parts = encoder.encode_capped(&image, true, cap);
    assert!(parts.len() > 1, "noise must be split");
    assert!(parts[0].keyframe && parts[1..].iter().all(|p| !p.keyframe));
    let mut decoder = Decoder::new();
    for (i, part) in parts.iter().enumerate() {
        assert!(
            part.data.len() <= cap,
            "band {i} is {} bytes",
            part.data.len()
        );
        decoder
            .decode(&part.to_video_frame(0, i as u64, 0))
            .expect("band decodes");
    }
    assert_eq!(decoder.image(), &image);

    // A frame under the cap is passed through whole.
    let flat = Image::filled(1920, 1080, [1, 2, 3, 255]);
    let parts = Encoder::new(Codec::RawZstd).encode_capped(&flat, true, cap);
    assert_eq!(parts.len(), 1);
    assert!(parts[0].keyframe);
}

/// Encodes `frames` pictures of a card whose noisy block moves, from `first`; returns the
/// bytes per frame and whether any was a keyframe, checking every one decodes.
fn moving_noise(
    enc: &mut Encoder,
    dec: &mut Decoder,
    rng: &mut Rng,
    first: u32,
    frames: u32,
) -> (usize, bool) {
    let (mut bytes, mut keyframe) = (0, false);
    for i in first..first + frames {
        let mut img = test_card(320, 240, 0);
        scribble(
            &mut img,
            Rect {
                x: (i * 7) % 200,
                y: 40,
                width: 96,
                height: 96,
            },
            rng,
        );
        let f = enc.encode(&img, false).unwrap();
        dec.decode(&f.to_video_frame(0, u64::from(i), 0)).unwrap();
        bytes += f.data.len();
        keyframe |= f.keyframe;
    }
    (bytes / frames as usize, keyframe)
}

#[test]
fn h264_bitrate_cap_shrinks_frames_and_later_changes_need_no_keyframe() {
    let mut rng = Rng(11);
    let mut enc = Encoder::new(Codec::H264);
    let mut dec = Decoder::new();
    let (free, _) = moving_noise(&mut enc, &mut dec, &mut rng, 0, 10);
    // 100 kbit/s at 10 fps: 1250 bytes a frame.
    enc.set_bitrate_cap(Some((100_000, 10.0)));
    let (_, switched) = moving_noise(&mut enc, &mut dec, &mut rng, 10, 1);
    assert!(
        switched,
        "the move to bitrate rate control starts with an IDR"
    );
    let (capped, _) = moving_noise(&mut enc, &mut dec, &mut rng, 11, 20);
    println!("bytes per frame: uncapped {free}, capped at 100 kbit/s {capped}");
    assert!(
        capped * 3 < free,
        "the cap did not shrink frames: {capped} vs {free}"
    );
    enc.set_bitrate_cap(Some((1_000_000, 10.0)));
    let (raised, keyframe) = moving_noise(&mut enc, &mut dec, &mut rng, 31, 20);
    assert!(!keyframe, "a new target applies without a keyframe");
    assert!(
        raised > capped,
        "a higher cap gave {raised} ≤ {capped} bytes"
    );
    enc.set_bitrate_cap(None);
    let (lifted, keyframe) = moving_noise(&mut enc, &mut dec, &mut rng, 51, 20);
    assert!(!keyframe, "lifting the cap needs no keyframe");
    assert!(
        lifted > raised,
        "lifting the cap gave {lifted} ≤ {raised} bytes"
    );
    assert_eq!(enc.codec(), Codec::H264);
}
