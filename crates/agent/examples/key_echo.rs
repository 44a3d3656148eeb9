//! An X client for the keystroke-latency benchmark (`dashboard/bench/keystroke.mjs`): a
//! window over the whole screen that takes the keyboard focus and, on every `KeyPress`,
//! repaints a probe square in the next of two colours (white, black), like a terminal
//! echoing a character.
//!
//! For each press it prints one line to stdout, the times on the Unix clock in
//! microseconds: `key <n> <keycode> <received_us> <drawn_us>`: when the `KeyPress` reached
//! this client, and when the repaint was flushed to the X server (`XSync`: the server has
//! drawn it). It prints `ready <window>` once it holds the focus.
//!
//! ```sh
//! DISPLAY=:N cargo run --release -p guruconnect-agent --example key_echo -- [--square X,Y,SIZE]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[cfg(target_os = "linux")]
fn main() {
    linux::run();
}

#[cfg(not(target_os = "linux"))]
fn main() {
    eprintln!("key_echo runs on Linux (X11) only");
    std::process::exit(2);
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::Write as _;
    use std::time::{SystemTime, UNIX_EPOCH};

    use x11rb::connection::Connection as _;
    use x11rb::protocol::Event;
    use x11rb::protocol::xproto::{
        ConnectionExt as _, CreateGCAux, CreateWindowAux, EventMask, InputFocus, Rectangle,
        WindowClass,
    };
    use x11rb::wrapper::ConnectionExt as _;

    /// Background and the two probe colours (0xRRGGBB in a 24-bit TrueColor visual).
    const BACKGROUND: u32 = 0x20_20_20;
    const COLOURS: [u32; 2] = [0xff_ff_ff, 0x00_00_00];

    fn now_us() -> u128 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros()
    }

    fn square_arg() -> (i16, i16, u16) {
        let args: Vec<String> = std::env::args().collect();
        let Some(i) = args.iter().position(|a| a == "--square") else {
            return (100, 100, 48);
        };
        let v: Vec<i32> = args
            .get(i + 1)
            .expect("--square X,Y,SIZE")
            .split(',')
            .map(|s| s.parse().expect("--square X,Y,SIZE: numbers"))
            .collect();
        assert_eq!(v.len(), 3, "--square X,Y,SIZE");
        (
            i16::try_from(v[0]).unwrap(),
            i16::try_from(v[1]).unwrap(),
            u16::try_from(v[2]).unwrap(),
        )
    }

    pub fn run() {
        let (x, y, size) = square_arg();
        let (conn, screen_num) = x11rb::connect(None).expect("cannot open the X display");
        let screen = &conn.setup().roots[screen_num];
        let window = conn.generate_id().unwrap();
        conn.create_window(
            screen.root_depth,
            window,
            screen.root,
            0,
            0,
            screen.width_in_pixels,
            screen.height_in_pixels,
            0,
            WindowClass::INPUT_OUTPUT,
            screen.root_visual,
            &CreateWindowAux::new()
                .background_pixel(BACKGROUND)
                .override_redirect(1)
                .event_mask(EventMask::KEY_PRESS | EventMask::EXPOSURE),
        )
        .unwrap();
        let gcs: Vec<u32> = COLOURS
            .iter()
            .map(|&c| {
                let gc = conn.generate_id().unwrap();
                conn.create_gc(gc, window, &CreateGCAux::new().foreground(c))
                    .unwrap();
                gc
            })
            .collect();
        conn.map_window(window).unwrap();
        conn.sync().unwrap();
        conn.set_input_focus(InputFocus::PARENT, window, x11rb::CURRENT_TIME)
            .unwrap();
        conn.sync().unwrap();
        let square = Rectangle {
            x,
            y,
            width: size,
            height: size,
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {window}").unwrap();
        out.flush().unwrap();
        let mut presses: u64 = 0;
        loop {
            let event = conn.wait_for_event().expect("X connection lost");
            match event {
                Event::KeyPress(key) => {
                    let received = now_us();
                    let gc = gcs[usize::try_from(presses % 2).unwrap()];
                    presses += 1;
                    conn.poly_fill_rectangle(window, gc, &[square]).unwrap();
                    conn.sync().unwrap();
                    let drawn = now_us();
                    writeln!(out, "key {presses} {} {received} {drawn}", key.detail).unwrap();
                    out.flush().unwrap();
                }
                Event::Expose(_) if presses > 0 => {
                    let gc = gcs[usize::try_from((presses - 1) % 2).unwrap()];
                    conn.poly_fill_rectangle(window, gc, &[square]).unwrap();
                    conn.flush().unwrap();
                }
                _ => {}
            }
        }
    }
}
