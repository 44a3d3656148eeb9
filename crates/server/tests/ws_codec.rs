//! The WebSocket codec under the conditions the relay meets: a socket that hands over data
//! in odd-sized pieces and blocks now and then. These exercise the vendored tungstenite's
//! large-frame read path (payload read straight into a buffer of its own) and its
//! zero-copy write path (payload written from its own `Bytes` after the header), see
//! `vendor/tungstenite` and `docs/benchmarks.md`.

use std::io::{self, Read, Write};

use bytes::Bytes;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::{Error, Message};

/// A stream that reads from `input` in pieces of the sizes in `read_sizes` (cycled),
/// accepts at most `max_write` bytes per write, and answers every `block_every`-th
/// call of each kind with `WouldBlock`; while `blocked`, every write blocks.
struct Choppy {
    input: Vec<u8>,
    pos: usize,
    read_sizes: Vec<usize>,
    reads: usize,
    output: Vec<u8>,
    max_write: usize,
    writes: usize,
    block_every: usize,
    blocked: bool,
}

impl Choppy {
    fn new(input: Vec<u8>) -> Self {
        Self {
            input,
            pos: 0,
            read_sizes: vec![1, 7, 8191, 70_000, 3, 300_000, 65_536],
            reads: 0,
            output: Vec::new(),
            max_write: 100_000,
            writes: 0,
            block_every: 3,
            blocked: false,
        }
    }
}

impl Read for Choppy {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.reads.is_multiple_of(self.block_every) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        if self.pos == self.input.len() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let piece = self.read_sizes[self.reads % self.read_sizes.len()];
        let n = piece.min(buf.len()).min(self.input.len() - self.pos);
        buf[..n].copy_from_slice(&self.input[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Choppy {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.writes += 1;
        if self.blocked || self.writes.is_multiple_of(self.block_every) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(self.max_write);
        self.output.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn config() -> WebSocketConfig {
    // The relay's agent socket: 8 KiB reads, 8 KiB write batching.
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20))
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect::<Vec<u8>>()
        .into()
}

fn messages() -> Vec<Message> {
    vec![
        Message::Binary(pattern(1 << 20, 1)),
        Message::Text("small".into()),
        Message::Binary(pattern(8 * 1024, 2)),
        Message::Binary(pattern(8 * 1024 + 1, 3)),
        Message::Binary(pattern(16 * 1024, 4)),
        Message::Ping(Bytes::from_static(b"p")),
        Message::Binary(pattern(200_000, 5)),
        Message::Binary(Bytes::new()),
        Message::Binary(pattern(3 << 20, 6)),
    ]
}

/// Writes `msgs` with `ws`, retrying on `WouldBlock` the way tokio-tungstenite does
/// (the message is buffered; only the flush has to be repeated).
fn write_all(ws: &mut WebSocket<Choppy>, msgs: &[Message]) {
    for msg in msgs {
        match ws.write(msg.clone()) {
            Ok(()) => {}
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("write: {e}"),
        }
    }
    loop {
        match ws.flush() {
            Ok(()) => break,
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("flush: {e}"),
        }
    }
}

fn read_n(ws: &mut WebSocket<Choppy>, n: usize) -> Vec<Message> {
    let mut got = Vec::new();
    let mut idle = 0;
    while got.len() < n {
        match ws.read() {
            Ok(msg) => {
                idle = 0;
                got.push(msg);
            }
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                idle += 1;
                assert!(idle < 1000, "stuck after {} messages", got.len());
            }
            Err(e) => panic!("read after {} messages: {e}", got.len()),
        }
    }
    got
}

/// Pings are answered, not returned, on the reading side; compare the rest.
fn without_pings(msgs: Vec<Message>) -> Vec<Message> {
    msgs.into_iter()
        .filter(|m| !matches!(m, Message::Ping(_)))
        .collect()
}

/// One direction: `from` writes (its role decides masking), the other side reads.
fn round_trip(from: Role) {
    let msgs = messages();
    let mut writer = WebSocket::from_raw_socket(Choppy::new(Vec::new()), from, Some(config()));
    write_all(&mut writer, &msgs);
    let wire = std::mem::take(&mut writer.get_mut().output);

    let to = match from {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let mut reader = WebSocket::from_raw_socket(Choppy::new(wire), to, Some(config()));
    let got = read_n(&mut reader, msgs.len());
    assert_eq!(without_pings(got), without_pings(msgs));
}

#[test]
fn server_writes_large_frames_in_pieces_and_client_reads_them() {
    round_trip(Role::Server);
}

#[test]
fn client_writes_masked_frames_and_server_reads_them_in_pieces() {
    round_trip(Role::Client);
}

/// Frames queued behind a large payload that could not be written yet keep their order.
#[test]
fn frames_queued_behind_a_blocked_payload_keep_their_order() {
    let msgs = messages();
    let mut writer =
        WebSocket::from_raw_socket(Choppy::new(Vec::new()), Role::Server, Some(config()));
    writer.get_mut().blocked = true;
    for msg in &msgs {
        match writer.write(msg.clone()) {
            Ok(()) => {}
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("write: {e}"),
        }
    }
    writer.get_mut().blocked = false;
    write_all(&mut writer, &[]);
    let wire = std::mem::take(&mut writer.get_mut().output);

    let mut reader = WebSocket::from_raw_socket(Choppy::new(wire), Role::Client, Some(config()));
    let got = read_n(&mut reader, msgs.len());
    assert_eq!(without_pings(got), without_pings(msgs));
}

/// A frame over the size limit is refused from its header, before its payload is read.
#[test]
fn oversized_frame_is_refused_from_its_header() {
    let mut writer =
        WebSocket::from_raw_socket(Choppy::new(Vec::new()), Role::Client, Some(config()));
    write_all(&mut writer, &[Message::Binary(pattern(2 << 20, 7))]);
    let wire = std::mem::take(&mut writer.get_mut().output);

    let small = config()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let mut reader = WebSocket::from_raw_socket(Choppy::new(wire), Role::Server, Some(small));
    loop {
        match reader.read() {
            Err(Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(Error::Capacity(_)) => break,
            other => panic!("expected a capacity error, got {other:?}"),
        }
    }
    assert!(
        reader.get_ref().pos < 64 * 1024,
        "read {} bytes of a frame it refuses",
        reader.get_ref().pos
    );
}
