//! The `.gcrec` file format (docs/recordings.md): a header, then records of
//! `u8 type | u32 t_ms | u32 len | payload`, little-endian. Readers stop at the first
//! incomplete record, so a file cut short by a crash is playable up to there.

use std::io::{self, Read, Seek, SeekFrom};

use guruconnect_proto::Envelope;
use guruconnect_proto::envelope::Payload;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The first bytes of every recording.
pub const MAGIC: &[u8; 7] = b"GCREC1\n";
/// Size of a record's header.
pub const RECORD_HEADER: usize = 9;
/// The largest header JSON a reader accepts.
const MAX_HEADER_JSON: u32 = 64 * 1024;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// A video frame envelope that is not a keyframe.
    Frame = 1,
    /// A keyframe envelope: decoding can start here.
    Keyframe = 2,
    /// Cursor shape or position, or the display list.
    Stream = 3,
    /// A controlling viewer's input envelope.
    Input = 4,
    /// A chat envelope, either direction.
    Chat = 5,
    /// A JSON event (viewer joined or left, consent).
    Event = 6,
    /// Terminal output (the transcript).
    Terminal = 7,
}

impl RecordType {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => Self::Frame,
            2 => Self::Keyframe,
            3 => Self::Stream,
            4 => Self::Input,
            5 => Self::Chat,
            6 => Self::Event,
            7 => Self::Terminal,
            _ => return None,
        })
    }
}

/// The JSON in a recording's header.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Session id.
    pub session_id: String,
    /// Machine.
    pub agent_id: String,
    /// Machine host name.
    pub hostname: String,
    /// `managed` or `attended`.
    pub kind: String,
    /// Wall-clock start (ms since the epoch).
    pub started_at: i64,
}

/// The file's opening bytes for `header`.
pub fn encode_header(header: &Header) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + json.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&u32::try_from(json.len()).unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

/// A record's header bytes.
pub fn encode_record_header(kind: RecordType, t_ms: u32, len: u32) -> [u8; RECORD_HEADER] {
    let mut out = [0u8; RECORD_HEADER];
    out[0] = kind as u8;
    out[1..5].copy_from_slice(&t_ms.to_le_bytes());
    out[5..9].copy_from_slice(&len.to_le_bytes());
    out
}

/// A keyframe's place in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyframeAt {
    /// Milliseconds since the start.
    pub t: u32,
    /// Byte offset of the keyframe's record header.
    pub offset: u64,
}

/// What a player needs to seek and to draw a timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    /// The file's header.
    #[serde(skip)]
    pub header: Header,
    /// Every keyframe, in order.
    pub keyframes: Vec<KeyframeAt>,
    /// Events for the timeline, each with `t` (ms): chat, viewer joined/left, consent, and
    /// one `input` per second that had input.
    pub events: Vec<Value>,
    /// Time of the last whole record.
    pub end_t: u32,
    /// Bytes up to the end of the last whole record.
    #[serde(skip)]
    pub whole_len: u64,
}

/// A closed recording's index saved beside it, valid while the file keeps `file_len`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Sidecar {
    /// The recording's length when it was indexed.
    pub file_len: u64,
    /// The index.
    pub index: Index,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Reads the header and scans every record header, reading only chat and event payloads.
/// A record cut short ends the scan; an unknown record type is skipped.
pub fn read_index<R: Read + Seek>(mut file: R) -> io::Result<Index> {
    let file_len = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut magic = [0u8; 7];
    file.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(invalid("not a GuruConnect recording"));
    }
    let mut len = [0u8; 4];
    file.read_exact(&mut len)?;
    let json_len = u32::from_le_bytes(len);
    if json_len > MAX_HEADER_JSON {
        return Err(invalid("recording header too large"));
    }
    let mut json = vec![0u8; json_len as usize];
    file.read_exact(&mut json)?;
    let header: Header =
        serde_json::from_slice(&json).map_err(|_| invalid("recording header is not valid"))?;
    let mut offset = (MAGIC.len() + 4) as u64 + u64::from(json_len);
    let mut index = Index {
        header,
        keyframes: Vec::new(),
        events: Vec::new(),
        end_t: 0,
        whole_len: offset,
    };
    let mut last_input_second = None;
    let mut head = [0u8; RECORD_HEADER];
    loop {
        if offset + RECORD_HEADER as u64 > file_len {
            break;
        }
        file.seek(SeekFrom::Start(offset))?;
        file.read_exact(&mut head)?;
        let t = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
        let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
        let end = offset + RECORD_HEADER as u64 + u64::from(len);
        if end > file_len {
            break;
        }
        match RecordType::from_u8(head[0]) {
            Some(RecordType::Keyframe) => index.keyframes.push(KeyframeAt { t, offset }),
            Some(RecordType::Input) => {
                let second = t / 1000;
                if last_input_second != Some(second) {
                    last_input_second = Some(second);
                    index
                        .events
                        .push(json!({ "t": second * 1000, "type": "input" }));
                }
            }
            Some(RecordType::Chat) => {
                let mut payload = vec![0u8; len as usize];
                file.read_exact(&mut payload)?;
                if let Ok(Envelope {
                    payload: Some(Payload::Chat(chat)),
                    ..
                }) = Envelope::from_bytes(payload.into())
                {
                    index.events.push(
                        json!({ "t": t, "type": "chat", "from": chat.from, "text": chat.text }),
                    );
                }
            }
            Some(RecordType::Event) => {
                let mut payload = vec![0u8; len as usize];
                file.read_exact(&mut payload)?;
                if let Ok(Value::Object(mut event)) = serde_json::from_slice(&payload) {
                    event.insert("t".into(), json!(t));
                    index.events.push(Value::Object(event));
                }
            }
            _ => {}
        }
        index.end_t = t;
        offset = end;
        index.whole_len = end;
    }
    Ok(index)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Cursor;

    use guruconnect_proto as proto;

    use super::*;

    fn header() -> Header {
        Header {
            session_id: "s".into(),
            agent_id: "a".into(),
            hostname: "h".into(),
            kind: "managed".into(),
            started_at: 1,
        }
    }

    fn record(out: &mut Vec<u8>, kind: RecordType, t: u32, payload: &[u8]) -> u64 {
        let at = out.len() as u64;
        out.extend_from_slice(&encode_record_header(kind, t, payload.len() as u32));
        out.extend_from_slice(payload);
        at
    }

    fn chat(text: &str) -> Vec<u8> {
        Envelope::new(Payload::Chat(proto::ChatMessage {
            from: "alice".into(),
            text: text.into(),
            sent_at_ms: 0,
        }))
        .to_bytes()
        .to_vec()
    }

    #[test]
    fn the_index_lists_keyframes_events_and_input_seconds() {
        let mut file = encode_header(&header());
        let k0 = record(&mut file, RecordType::Keyframe, 0, b"k0");
        record(&mut file, RecordType::Frame, 40, b"f");
        record(&mut file, RecordType::Input, 100, b"i");
        record(&mut file, RecordType::Input, 900, b"i");
        record(&mut file, RecordType::Input, 1100, b"i");
        record(&mut file, RecordType::Chat, 1200, &chat("hello"));
        record(
            &mut file,
            RecordType::Event,
            1300,
            br#"{"type":"viewer_left","user":"bob"}"#,
        );
        let unknown = record(&mut file, RecordType::Frame, 1400, b"unknown");
        file[unknown as usize] = 99; // a type from a newer server: skipped
        let k1 = record(&mut file, RecordType::Keyframe, 5000, b"k1");
        let index = read_index(Cursor::new(&file)).unwrap();
        assert_eq!(index.header, header());
        assert_eq!(
            index.keyframes,
            [
                KeyframeAt { t: 0, offset: k0 },
                KeyframeAt {
                    t: 5000,
                    offset: k1
                }
            ]
        );
        assert_eq!(index.end_t, 5000);
        assert_eq!(index.whole_len, file.len() as u64);
        assert_eq!(
            index.events,
            [
                json!({"t": 0, "type": "input"}),
                json!({"t": 1000, "type": "input"}),
                json!({"t": 1200, "type": "chat", "from": "alice", "text": "hello"}),
                json!({"t": 1300, "type": "viewer_left", "user": "bob"}),
            ]
        );
    }

    #[test]
    fn a_file_cut_short_is_indexed_up_to_its_last_whole_record() {
        let mut file = encode_header(&header());
        record(&mut file, RecordType::Keyframe, 0, b"k0");
        let whole = file.len();
        record(&mut file, RecordType::Keyframe, 5000, b"k1-payload");
        for cut in whole..file.len() {
            let index = read_index(Cursor::new(&file[..cut])).unwrap();
            assert_eq!(index.keyframes.len(), 1, "cut at {cut}");
            assert_eq!(index.whole_len, whole as u64);
        }
    }

    #[test]
    fn other_files_are_refused() {
        assert!(read_index(Cursor::new(b"PK\x03\x04 not a recording")).is_err());
        let mut file = MAGIC.to_vec();
        file.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_index(Cursor::new(&file)).is_err());
    }
}
