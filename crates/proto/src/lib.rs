//! GuruConnect wire protocol.
//!
//! The message types are generated at build time from `proto/guruconnect.proto` (the one
//! source of truth). Every WebSocket message is one binary frame carrying one [`Envelope`].
//! This crate adds the protocol version, the message caps and small framing helpers.

#![allow(missing_docs)] // generated code carries the .proto comments instead

pub mod support_file;

/// Generated types of package `guruconnect.v1`.
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/guruconnect.v1.rs"));
}

pub use prost::Message;
pub use v1::envelope::Payload;
pub use v1::*;

/// Protocol version this build speaks.
pub const PROTOCOL_VERSION: i32 = v1::ProtocolVersion::Current as i32;

/// Largest WebSocket message accepted from an agent (SPEC §4.6).
pub const MAX_AGENT_MESSAGE: usize = 4 * 1024 * 1024;

/// Largest WebSocket message accepted from a viewer (SPEC §4.6).
pub const MAX_VIEWER_MESSAGE: usize = 64 * 1024;
/// Largest `FileChunk` payload a viewer sends (its messages are capped at 64 KiB).
pub const MAX_VIEWER_FILE_CHUNK: usize = 48 * 1024;
/// Bytes a file sender keeps in flight beyond the receiver's last `FileAck`.
pub const FILE_WINDOW: u64 = 1024 * 1024;

impl Envelope {
    /// Wraps a payload in an envelope.
    pub fn new(payload: Payload) -> Self {
        Self {
            seq: 0,
            payload: Some(payload),
        }
    }

    /// Encodes to the bytes of one WebSocket binary message.
    pub fn to_bytes(&self) -> bytes::Bytes {
        bytes::Bytes::from(self.encode_to_vec())
    }

    /// Decodes one WebSocket binary message; `Bytes` fields borrow from `buf`.
    pub fn from_bytes(buf: bytes::Bytes) -> Result<Self, prost::DecodeError> {
        Self::decode(buf)
    }

    /// A short, stable name of the payload kind for logs and metrics (never content).
    pub fn kind(&self) -> &'static str {
        self.payload.as_ref().map_or("empty", Payload::kind)
    }
}

impl Payload {
    /// The terminal or transfer number of a channel message (a remote terminal's or a file
    /// transfer's), which the relay rewrites between a viewer's numbering and the agent's.
    pub fn channel_number_mut(&mut self) -> Option<&mut u32> {
        match self {
            Payload::TerminalOpen(m) => Some(&mut m.terminal_id),
            Payload::TerminalInput(m) => Some(&mut m.terminal_id),
            Payload::TerminalResize(m) => Some(&mut m.terminal_id),
            Payload::TerminalClose(m) => Some(&mut m.terminal_id),
            Payload::TerminalOutput(m) => Some(&mut m.terminal_id),
            Payload::TerminalExit(m) => Some(&mut m.terminal_id),
            Payload::FileUpload(m) => Some(&mut m.transfer_id),
            Payload::FileDownload(m) => Some(&mut m.transfer_id),
            Payload::FileChunk(m) => Some(&mut m.transfer_id),
            Payload::FileAck(m) => Some(&mut m.transfer_id),
            Payload::FileDone(m) => Some(&mut m.transfer_id),
            Payload::FileCancel(m) => Some(&mut m.transfer_id),
            Payload::FileInfo(m) => Some(&mut m.transfer_id),
            Payload::FileResult(m) => Some(&mut m.transfer_id),
            _ => None,
        }
    }

    /// A short, stable name of the payload kind for logs and metrics (never content).
    pub fn kind(&self) -> &'static str {
        match self {
            Payload::AgentHello(_) => "agent_hello",
            Payload::AgentStatus(_) => "agent_status",
            Payload::VideoFrame(_) => "video_frame",
            Payload::CursorShape(_) => "cursor_shape",
            Payload::CursorPosition(_) => "cursor_position",
            Payload::DisplayList(_) => "display_list",
            Payload::ConsentResponse(_) => "consent_response",
            Payload::AgentNotice(_) => "agent_notice",
            Payload::CustomerEnd(_) => "customer_end",
            Payload::StartStream(_) => "start_stream",
            Payload::StopStream(_) => "stop_stream",
            Payload::ConsentRequest(_) => "consent_request",
            Payload::ReleaseModifiers(_) => "release_modifiers",
            Payload::SessionInfo(_) => "session_info",
            Payload::MouseEvent(_) => "mouse_event",
            Payload::KeyEvent(_) => "key_event",
            Payload::SpecialKey(_) => "special_key",
            Payload::SwitchDisplay(_) => "switch_display",
            Payload::RefreshRequest(_) => "refresh_request",
            Payload::QualitySettings(_) => "quality_settings",
            Payload::ViewerHello(_) => "viewer_hello",
            Payload::TypeText(_) => "type_text",
            Payload::Chat(_) => "chat",
            Payload::Clipboard(_) => "clipboard",
            Payload::Ping(_) => "ping",
            Payload::Pong(_) => "pong",
            Payload::SessionEnd(_) => "session_end",
            Payload::ViewerJoined(_) => "viewer_joined",
            Payload::ViewerLeft(_) => "viewer_left",
            Payload::SessionState(_) => "session_state",
            Payload::UpdateStatus(_) => "update_status",
            Payload::StreamMode(_) => "stream_mode",
            Payload::FrameAck(_) => "frame_ack",
            Payload::KeyProvision(_) => "key_provision",
            Payload::UpdateCommand(_) => "update_command",
            Payload::TerminalOpen(_) => "terminal_open",
            Payload::TerminalInput(_) => "terminal_input",
            Payload::TerminalResize(_) => "terminal_resize",
            Payload::TerminalClose(_) => "terminal_close",
            Payload::TerminalOutput(_) => "terminal_output",
            Payload::TerminalExit(_) => "terminal_exit",
            Payload::FileUpload(_) => "file_upload",
            Payload::FileDownload(_) => "file_download",
            Payload::FileChunk(_) => "file_chunk",
            Payload::FileAck(_) => "file_ack",
            Payload::FileDone(_) => "file_done",
            Payload::FileCancel(_) => "file_cancel",
            Payload::FileInfo(_) => "file_info",
            Payload::FileResult(_) => "file_result",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_round_trips_and_keeps_frame_bytes() {
        let frame = VideoFrame {
            codec: Codec::RawZstd as i32,
            data: bytes::Bytes::from_static(b"tile-bytes"),
            keyframe: true,
            sequence: 7,
            ..Default::default()
        };
        let env = Envelope::new(Payload::VideoFrame(frame.clone()));
        let decoded = Envelope::from_bytes(env.to_bytes()).expect("decodes");
        assert_eq!(decoded.kind(), "video_frame");
        assert_eq!(decoded.payload, Some(Payload::VideoFrame(frame)));
    }

    #[test]
    fn garbage_is_a_decode_error() {
        let err = Envelope::from_bytes(bytes::Bytes::from_static(&[0xff, 0xff, 0xff]));
        assert!(err.is_err());
    }
}
