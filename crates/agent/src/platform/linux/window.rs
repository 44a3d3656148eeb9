//! The fixed-size top-level window behind the consent prompt, the chat window and the
//! session indicator: created at a place on the screen ([`Place`]), titled so tests and
//! window managers find it by name, told (not killed) when the user closes it, with size
//! hints that ask window managers to keep its position and size, and a graphics context
//! drawing in the `fixed` core font. [`button`] draws the coloured buttons they share.
//!
//! The window is created unmapped; the caller maps it when it is to be seen.

use x11rb::connection::Connection as _;
use x11rb::protocol::xproto::{
    self, AtomEnum, ConnectionExt as _, CreateGCAux, CreateWindowAux, EventMask, PropMode,
    Rectangle, WindowClass,
};
use x11rb::rust_connection::RustConnection;
use x11rb::wrapper::ConnectionExt as _;

use crate::platform::ui::center;
use crate::platform::{PlatformError, PlatformResult};

/// Where a window goes on its screen, clamped to the screen's top-left corner.
#[derive(Debug, Clone, Copy)]
pub enum Place {
    /// Centred.
    Centre,
    /// Near the top-right corner.
    TopRight {
        /// Pixels from the right edge.
        right: i32,
        /// Pixels from the top edge.
        top: i32,
    },
    /// Near the bottom-right corner.
    BottomRight {
        /// Pixels from the right edge.
        right: i32,
        /// Pixels from the bottom edge.
        bottom: i32,
    },
}

impl Place {
    /// The top-left corner of a `size` window on a `screen`-sized screen.
    fn origin(self, screen: (i32, i32), size: (i32, i32)) -> (i32, i32) {
        let ((screen_w, screen_h), (w, h)) = (screen, size);
        let (x, y) = match self {
            Self::Centre => ((screen_w - w) / 2, (screen_h - h) / 2),
            Self::TopRight { right, top } => (screen_w - w - right, top),
            Self::BottomRight { right, bottom } => (screen_w - w - right, screen_h - h - bottom),
        };
        (x.max(0), y.max(0))
    }
}

/// What a [`FixedWindow`] looks like and how it behaves.
#[derive(Debug, Clone, Copy)]
pub struct Spec<'a> {
    /// `WM_NAME` and `_NET_WM_NAME`.
    pub title: &'a str,
    /// Width in pixels, fixed: the size hints make it the minimum and the maximum.
    pub width: u16,
    /// Height in pixels, fixed like the width.
    pub height: u16,
    /// Where it goes on the screen.
    pub place: Place,
    /// Text colour of [`FixedWindow::gc`].
    pub foreground: u32,
    /// Window background, and the background of [`FixedWindow::gc`].
    pub background: u32,
    /// Colour of the one-pixel border.
    pub border: u32,
    /// Events besides exposure, button presses and structure changes.
    pub extra_events: EventMask,
    /// `WM_HINTS` input: whether the window manager may give it the keyboard focus; `None`
    /// sets no `WM_HINTS`.
    pub takes_focus: Option<bool>,
    /// Ask window managers to keep it above other windows and on every workspace
    /// (`_NET_WM_STATE_ABOVE`, `_NET_WM_STATE_STICKY`).
    pub keep_above: bool,
}

/// The `WM_PROTOCOLS` atom and its `WM_DELETE_WINDOW` entry: a `ClientMessage` of that type
/// asks the window to close.
#[derive(Debug, Clone, Copy)]
pub struct CloseProtocol {
    /// `WM_PROTOCOLS`.
    pub wm_protocols: xproto::Atom,
    /// `WM_DELETE_WINDOW`.
    pub wm_delete: xproto::Atom,
}

/// A window made by [`FixedWindow::create`]; its X resources live as long as the
/// connection or until [`FixedWindow::destroy`].
#[derive(Debug, Clone, Copy)]
pub struct FixedWindow {
    /// The window.
    pub id: xproto::Window,
    /// Draws in the `fixed` font, [`Spec::foreground`] on [`Spec::background`].
    pub gc: xproto::Gcontext,
    /// The `fixed` core font (6x13).
    pub font: xproto::Font,
    /// How a close request reads.
    pub close: CloseProtocol,
}

impl FixedWindow {
    /// Connects to `$DISPLAY` and creates the (unmapped) window there, on the connection
    /// returned with it.
    pub fn open(spec: &Spec<'_>) -> PlatformResult<(RustConnection, Self)> {
        let (conn, screen_num) = super::connect()?;
        let window = Self::create(&conn, screen_num, spec)
            .map_err(|e| PlatformError::Request(e.to_string()))?;
        Ok((conn, window))
    }

    /// Creates the (unmapped) window on screen `screen_num` and flushes.
    pub fn create(
        conn: &RustConnection,
        screen_num: usize,
        spec: &Spec<'_>,
    ) -> anyhow::Result<Self> {
        let screen = conn
            .setup()
            .roots
            .get(screen_num)
            .ok_or_else(|| anyhow::anyhow!("no X screen"))?;
        let (x, y) = spec.place.origin(
            (
                i32::from(screen.width_in_pixels),
                i32::from(screen.height_in_pixels),
            ),
            (i32::from(spec.width), i32::from(spec.height)),
        );
        let id = conn.generate_id()?;
        conn.create_window(
            x11rb::COPY_DEPTH_FROM_PARENT,
            id,
            screen.root,
            i16::try_from(x)?,
            i16::try_from(y)?,
            spec.width,
            spec.height,
            1,
            WindowClass::INPUT_OUTPUT,
            0,
            &CreateWindowAux::new()
                .background_pixel(spec.background)
                .border_pixel(spec.border)
                .event_mask(
                    EventMask::EXPOSURE
                        | EventMask::BUTTON_PRESS
                        | EventMask::STRUCTURE_NOTIFY
                        | spec.extra_events,
                ),
        )?;
        let close = name_window(conn, id, spec.title)?;
        if spec.keep_above {
            let (net_wm_state, above, sticky) = (
                intern(conn, b"_NET_WM_STATE")?,
                intern(conn, b"_NET_WM_STATE_ABOVE")?,
                intern(conn, b"_NET_WM_STATE_STICKY")?,
            );
            // Before mapping, so a window manager starts it on top and on every workspace.
            conn.change_property32(
                PropMode::REPLACE,
                id,
                net_wm_state,
                AtomEnum::ATOM,
                &[above, sticky],
            )?;
        }
        if let Some(input) = spec.takes_focus {
            // WM_HINTS: flags = InputHint, input = True or False.
            conn.change_property32(
                PropMode::REPLACE,
                id,
                AtomEnum::WM_HINTS,
                AtomEnum::WM_HINTS,
                &[1, u32::from(input), 0, 0, 0, 0, 0, 0, 0],
            )?;
        }
        // Ask window managers to keep the requested position and size.
        let (x, y, w, h) = (
            u32::try_from(x)?,
            u32::try_from(y)?,
            u32::from(spec.width),
            u32::from(spec.height),
        );
        // USPosition | USSize | PPosition | PSize | PMinSize | PMaxSize, then x, y, width,
        // height, the minimum and the maximum size.
        let mut size_hints = [0u32; 18];
        size_hints[..9].copy_from_slice(&[1 | 2 | 4 | 8 | 16 | 32, x, y, w, h, w, h, w, h]);
        conn.change_property32(
            PropMode::REPLACE,
            id,
            AtomEnum::WM_NORMAL_HINTS,
            AtomEnum::WM_SIZE_HINTS,
            &size_hints,
        )?;
        let font = conn.generate_id()?;
        conn.open_font(font, b"fixed")?;
        let gc = new_gc(conn, id, font, spec.foreground, spec.background)?;
        conn.flush()?;
        Ok(Self {
            id,
            gc,
            font,
            close,
        })
    }

    /// Another graphics context on this window, in its font.
    pub fn create_gc(
        &self,
        conn: &RustConnection,
        foreground: u32,
        background: u32,
    ) -> anyhow::Result<xproto::Gcontext> {
        new_gc(conn, self.id, self.font, foreground, background)
    }

    /// Whether `message` asks this window to close.
    pub fn is_close_request(&self, message: &xproto::ClientMessageEvent) -> bool {
        message.type_ == self.close.wm_protocols
            && message.data.as_data32()[0] == self.close.wm_delete
    }

    /// Destroys the window, ignoring errors (the display may be gone already).
    pub fn destroy(&self, conn: &RustConnection) {
        let _ = conn.destroy_window(self.id);
        let _ = conn.flush();
    }
}

/// Sets the colours `gc` draws with.
pub fn set_colours(
    conn: &RustConnection,
    gc: xproto::Gcontext,
    foreground: u32,
    background: u32,
) -> anyhow::Result<()> {
    conn.change_gc(
        gc,
        &xproto::ChangeGCAux::new()
            .foreground(foreground)
            .background(background),
    )?;
    Ok(())
}

/// Draws a button: `rect` filled with `colour`, `label` centred on it in white (6-pixel
/// characters of the `fixed` font). Leaves `gc` white on `colour`.
pub fn button(
    conn: &RustConnection,
    window: xproto::Window,
    gc: xproto::Gcontext,
    rect: (i16, i16, u16, u16),
    colour: u32,
    label: &str,
) -> anyhow::Result<()> {
    const WHITE: u32 = 0x00ff_ffff;
    let (x, y, width, height) = rect;
    set_colours(conn, gc, colour, colour)?;
    conn.poly_fill_rectangle(
        window,
        gc,
        &[Rectangle {
            x,
            y,
            width,
            height,
        }],
    )?;
    set_colours(conn, gc, WHITE, colour)?;
    let (cx, cy) = center(rect);
    let tx = i16::try_from(cx - 3 * i32::try_from(label.len())?)?;
    conn.image_text8(window, gc, tx, i16::try_from(cy + 4)?, label.as_bytes())?;
    Ok(())
}

fn new_gc(
    conn: &RustConnection,
    window: xproto::Window,
    font: xproto::Font,
    foreground: u32,
    background: u32,
) -> anyhow::Result<xproto::Gcontext> {
    let gc = conn.generate_id()?;
    conn.create_gc(
        gc,
        window,
        &CreateGCAux::new()
            .foreground(foreground)
            .background(background)
            .font(font),
    )?;
    Ok(gc)
}

/// The atom named `name`, created if need be.
pub fn intern(conn: &RustConnection, name: &[u8]) -> anyhow::Result<xproto::Atom> {
    Ok(conn.intern_atom(false, name)?.reply()?.atom)
}

/// Titles a top-level window (`WM_NAME` and `_NET_WM_NAME`, so tests and window managers
/// find it by name) and asks to be told, not killed, when the user closes it.
fn name_window(
    conn: &RustConnection,
    window: xproto::Window,
    title: &str,
) -> anyhow::Result<CloseProtocol> {
    let (wm_protocols, wm_delete, net_wm_name, utf8) = (
        intern(conn, b"WM_PROTOCOLS")?,
        intern(conn, b"WM_DELETE_WINDOW")?,
        intern(conn, b"_NET_WM_NAME")?,
        intern(conn, b"UTF8_STRING")?,
    );
    conn.change_property8(
        PropMode::REPLACE,
        window,
        AtomEnum::WM_NAME,
        AtomEnum::STRING,
        title.as_bytes(),
    )?;
    conn.change_property8(
        PropMode::REPLACE,
        window,
        net_wm_name,
        utf8,
        title.as_bytes(),
    )?;
    conn.change_property32(
        PropMode::REPLACE,
        window,
        wm_protocols,
        AtomEnum::ATOM,
        &[wm_delete],
    )?;
    Ok(CloseProtocol {
        wm_protocols,
        wm_delete,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_measured_from_their_edges_and_stay_on_the_screen() {
        let screen = (1024, 768);
        assert_eq!(Place::Centre.origin(screen, (460, 200)), (282, 284));
        let top_right = Place::TopRight { right: 20, top: 20 };
        assert_eq!(top_right.origin(screen, (340, 180)), (664, 20));
        let bottom_right = Place::BottomRight {
            right: 20,
            bottom: 40,
        };
        assert_eq!(bottom_right.origin(screen, (480, 300)), (524, 428));
        // Larger than the screen: the top-left corner stays reachable.
        assert_eq!(Place::Centre.origin((400, 100), (460, 200)), (0, 0));
        assert_eq!(bottom_right.origin((400, 100), (480, 300)), (0, 0));
    }
}
