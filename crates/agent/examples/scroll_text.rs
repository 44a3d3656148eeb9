//! An X client for the shaped-link benchmark (`dashboard/bench/shaped.mjs`): a window over
//! the whole screen that animates like a person scrolling a text document. Every frame
//! (`--fps`, 30 unless told) it scrolls the region (`--region WxH[+X+Y]`, the whole window
//! unless told) up by `--step` pixels (4 unless told) with one `CopyArea` and draws the
//! strip that came into view at the bottom: lines of 16 px holding dark glyph-like
//! rectangles of varying widths (and now and then a blue "link" word) on a light
//! background, from a fixed pseudo-random sequence, so every run shows the same document.
//!
//! Cheap on CPU: per frame one copy inside the X server and a handful of rectangles. It
//! prints `ready <window>` once the window is mapped and drawn, and nothing after that.
//!
//! ```sh
//! DISPLAY=:N cargo run --release -p guruconnect-agent --example scroll_text -- \
//!     [--fps 30] [--step 4] [--region 1920x1080+0+0]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[cfg(target_os = "linux")]
fn main() {
    linux::run();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("scroll_text runs on Linux (X11) only");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::Write as _;
    use std::time::{Duration, Instant};

    use x11rb::connection::Connection as _;
    use x11rb::protocol::Event;
    use x11rb::protocol::xproto::{
        ConnectionExt as _, CreateGCAux, CreateWindowAux, EventMask, Rectangle, WindowClass,
    };
    use x11rb::wrapper::ConnectionExt as _;

    /// Page, text and link colours (0xRRGGBB in a 24-bit TrueColor visual).
    const PAPER: u32 = 0xf8_f8_f4;
    const INK: u32 = 0x2a_2a_2e;
    const LINK: u32 = 0x1a_4f_b0;
    /// Height of one text line, and the left and right margins of the page.
    const LINE: u64 = 16;
    const MARGIN: i32 = 40;

    struct Args {
        fps: f64,
        step: u16,
        /// (x, y, width, height); `None`: the whole window.
        region: Option<(i16, i16, u16, u16)>,
    }

    fn args() -> Args {
        let mut out = Args {
            fps: 30.0,
            step: 4,
            region: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
            match flag.as_str() {
                "--fps" => out.fps = value.parse().expect("--fps N"),
                "--step" => out.step = value.parse().expect("--step PX"),
                "--region" => out.region = Some(parse_region(&value)),
                _ => panic!("unknown flag {flag} (--fps N, --step PX, --region WxH[+X+Y])"),
            }
        }
        assert!(out.fps > 0.0, "--fps must be positive");
        assert!(out.step > 0, "--step must be positive");
        out
    }

    /// `WxH` or `WxH+X+Y`.
    fn parse_region(s: &str) -> (i16, i16, u16, u16) {
        let usage = "--region WxH[+X+Y]";
        let (size, origin) = s.split_once('+').unwrap_or((s, "0+0"));
        let (w, h) = size.split_once('x').expect(usage);
        let (x, y) = origin.split_once('+').expect(usage);
        (
            x.parse().expect(usage),
            y.parse().expect(usage),
            w.parse().expect(usage),
            h.parse().expect(usage),
        )
    }

    /// A 64-bit LCG (Knuth's MMIX constants); the high bits are the usable ones.
    struct Lcg(u64);

    impl Lcg {
        /// The generator of document line `line`: the same line always looks the same.
        fn for_line(line: u64) -> Self {
            let mut g = Self(line.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d);
            g.next();
            g
        }

        fn next(&mut self) -> u32 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            u32::try_from(self.0 >> 33).unwrap()
        }

        /// In `lo..=hi`.
        fn range(&mut self, lo: i32, hi: i32) -> i32 {
            let span = u32::try_from(hi - lo + 1).unwrap();
            lo + i32::try_from(self.next() % span).unwrap()
        }
    }

    /// A glyph of one line: x from the page's left edge, y and height within the line.
    struct Glyph {
        x: i32,
        y: i32,
        width: i32,
        height: i32,
        link: bool,
    }

    /// The glyphs of document line `line` on a page `width` pixels wide.
    fn line_glyphs(line: u64, width: i32, out: &mut Vec<Glyph>) {
        out.clear();
        let mut g = Lcg::for_line(line);
        // About one line in eight is the blank line between paragraphs.
        if g.range(0, 7) == 0 {
            return;
        }
        let indent = if g.range(0, 5) == 0 { 24 } else { 0 };
        let right = width - MARGIN;
        let usable = right - MARGIN - indent;
        // Most lines run (nearly) to the margin; the last of a paragraph stops short.
        let end = if g.range(0, 4) == 0 {
            MARGIN + indent + usable * g.range(20, 80) / 100
        } else {
            right - g.range(0, 40)
        };
        let mut x = MARGIN + indent;
        while x < end {
            let letters = g.range(1, 9);
            let link = g.range(0, 14) == 0;
            for _ in 0..letters {
                let w = g.range(3, 8);
                if x + w > end {
                    break;
                }
                // x-height letters, with ascenders and descenders now and then.
                let (y, height) = match g.range(0, 9) {
                    0..=1 => (2, 11),
                    2 => (6, 9),
                    _ => (6, 7),
                };
                out.push(Glyph {
                    x,
                    y,
                    width: w,
                    height,
                    link,
                });
                x += w + 1;
            }
            x += g.range(5, 7);
        }
    }

    struct Page {
        region: (i16, i16, u16, u16),
        /// The document row shown at the region's top.
        top: u64,
        glyphs: Vec<Glyph>,
        ink: Vec<Rectangle>,
        links: Vec<Rectangle>,
    }

    impl Page {
        /// The rectangles (screen coordinates) that draw the region's rows `from..to`,
        /// clipped to them, into `self.ink` and `self.links`.
        fn strip(&mut self, from: u16, to: u16) {
            let (rx, ry, rw, _) = self.region;
            self.ink.clear();
            self.links.clear();
            let first = self.top + u64::from(from);
            let last = self.top + u64::from(to);
            for line in first / LINE..last.div_ceil(LINE) {
                line_glyphs(line, i32::from(rw), &mut self.glyphs);
                let line_top = line * LINE;
                for gl in &self.glyphs {
                    let y0 = (line_top + u64::try_from(gl.y).unwrap()).max(first);
                    let y1 = (line_top + u64::try_from(gl.y + gl.height).unwrap()).min(last);
                    if y0 >= y1 {
                        continue;
                    }
                    let rect = Rectangle {
                        x: rx + i16::try_from(gl.x).unwrap(),
                        y: ry + i16::try_from(y0 - self.top).unwrap(),
                        width: u16::try_from(gl.width).unwrap(),
                        height: u16::try_from(y1 - y0).unwrap(),
                    };
                    if gl.link {
                        self.links.push(rect);
                    } else {
                        self.ink.push(rect);
                    }
                }
            }
        }
    }

    pub fn run() {
        let args = args();
        let (conn, screen_num) = x11rb::connect(None).expect("cannot open the X display");
        let screen = &conn.setup().roots[screen_num];
        let (sw, sh) = (screen.width_in_pixels, screen.height_in_pixels);
        let window = conn.generate_id().unwrap();
        conn.create_window(
            screen.root_depth,
            window,
            screen.root,
            0,
            0,
            sw,
            sh,
            0,
            WindowClass::INPUT_OUTPUT,
            screen.root_visual,
            &CreateWindowAux::new()
                .background_pixel(PAPER)
                .override_redirect(1)
                .event_mask(EventMask::EXPOSURE),
        )
        .unwrap();
        // No GraphicsExpose / NoExpose event for every CopyArea.
        let gc = |colour: u32| {
            let gc = conn.generate_id().unwrap();
            conn.create_gc(
                gc,
                window,
                &CreateGCAux::new().foreground(colour).graphics_exposures(0),
            )
            .unwrap();
            gc
        };
        let (paper, ink, link) = (gc(PAPER), gc(INK), gc(LINK));
        conn.map_window(window).unwrap();
        conn.sync().unwrap();

        let region = args.region.unwrap_or((0, 0, sw, sh));
        let (rx, ry, rw, rh) = region;
        assert!(
            args.step < rh,
            "--step must be smaller than the region's height"
        );
        let mut page = Page {
            region,
            top: 0,
            glyphs: Vec::new(),
            ink: Vec::new(),
            links: Vec::new(),
        };
        let draw = |page: &mut Page, from: u16, to: u16| {
            let strip = Rectangle {
                x: rx,
                y: ry + i16::try_from(from).unwrap(),
                width: rw,
                height: to - from,
            };
            conn.poly_fill_rectangle(window, paper, &[strip]).unwrap();
            page.strip(from, to);
            conn.poly_fill_rectangle(window, ink, &page.ink).unwrap();
            conn.poly_fill_rectangle(window, link, &page.links).unwrap();
        };
        draw(&mut page, 0, rh);
        conn.sync().unwrap();
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {window}").unwrap();
        out.flush().unwrap();

        let period = Duration::from_secs_f64(1.0 / args.fps);
        let step = args.step;
        let mut next = Instant::now() + period;
        loop {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            // A late frame moves the clock on rather than bursting to catch up.
            next = (next + period).max(Instant::now());
            let mut exposed = false;
            while let Some(event) = conn.poll_for_event().expect("X connection lost") {
                exposed |= matches!(event, Event::Expose(_));
            }
            page.top += u64::from(step);
            if exposed {
                draw(&mut page, 0, rh);
            } else {
                conn.copy_area(
                    window,
                    window,
                    paper,
                    rx,
                    ry + i16::try_from(step).unwrap(),
                    rx,
                    ry,
                    rw,
                    rh - step,
                )
                .unwrap();
                draw(&mut page, rh - step, rh);
            }
            // One round trip a frame: the server has drawn it before the next one.
            conn.sync().expect("X connection lost");
        }
    }
}
