//! Session recording's cost (issue 14): the same 1080p-sized stream through the relay with
//! the recording policy off and then on, and the work a seek to the middle of a
//! 30-minute recording takes on the server.
//!
//! CPU is the whole process's CPU time (`clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`): the
//! in-process server, its recording writer thread and the bench's own agent and viewer.
//! The two runs do the same client work, so their difference is what recording adds.

use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use guruconnect_server::recording::format::{
    Header, RecordType, encode_header, encode_record_header, read_index,
};
use serde_json::{Value, json};
use tokio::time::{MissedTickBehavior, interval, timeout};

use crate::peers::{Agent, Api, Viewer, as_video, payload, video_frame};
use crate::report::Row;
use crate::target::Target;

/// Frames per second of the simulated session.
const FPS: u64 = 30;
/// A 1080p H.264 frame while the picture changes everywhere (docs/benchmarks.md, Agent:
/// "full change, H.264", 45 KB mean).
const DELTA_BYTES: usize = 45 * 1000;
/// A 1080p H.264 keyframe of a desktop.
const KEYFRAME_BYTES: usize = 150 * 1000;

fn process_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// One run: the stream for `run`, then the session ended. Returns process CPU, frames the
/// viewer got, and the session id.
async fn stream(api: &Api, target: &Target, run: Duration) -> Result<(Duration, u64, String)> {
    let mut agent = Agent::connect(api, &target.base).await?;
    let mut viewer = Viewer::join(api, &target.base, &agent.session_id).await?;
    agent.wait_streaming().await?;
    let counter = tokio::spawn(async move {
        let mut frames = 0u64;
        while let Ok(Ok(bytes)) = timeout(Duration::from_secs(1), viewer.rx.recv_raw()).await {
            if as_video(bytes).is_some() {
                frames += 1;
            }
        }
        frames
    });
    let delta = payload(DELTA_BYTES);
    let key = payload(KEYFRAME_BYTES);
    let mut tick = interval(Duration::from_micros(1_000_000 / FPS));
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let cpu0 = process_cpu();
    let start = Instant::now();
    let mut seq = 0u64;
    while start.elapsed() < run {
        tick.tick().await;
        seq += 1;
        let keyframe = seq == 1
            || agent
                .refresh
                .swap(false, std::sync::atomic::Ordering::Relaxed);
        let data = if keyframe { &key } else { &delta };
        agent
            .tx
            .send_raw(video_frame(data, seq, 0, keyframe))
            .await?;
    }
    let frames = counter.await?;
    let cpu = process_cpu() - cpu0;
    let session_id = agent.session_id.clone();
    api.post_empty(&format!("/api/sessions/{session_id}/end"))
        .await?;
    agent.close().await;
    Ok((cpu, frames, session_id))
}

/// The recording's row once it is closed.
async fn closed_recording(api: &Api, id: &str) -> Result<Value> {
    for _ in 0..100 {
        if let Ok(rec) = api.get(&format!("/api/recordings/{id}")).await
            && rec["status"] != "recording"
        {
            return Ok(rec);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("recording {id} did not close within 10 s")
}

/// Recording's cost on the relay: CPU and bytes per minute of a 1080p session.
pub async fn record(target: &Target, run: Duration) -> Result<Vec<Row>> {
    let api = Api::login(&target.base, &target.admin_password).await?;
    let minutes = run.as_secs_f64() / 60.0;
    api.put("/api/settings/recording", &json!({ "mode": "off" }))
        .await?;
    let (cpu_off, frames_off, _) = stream(&api, target, run).await?;
    api.put("/api/settings/recording", &json!({ "mode": "all" }))
        .await?;
    let (cpu_on, frames_on, sid) = stream(&api, target, run).await?;
    api.put("/api/settings/recording", &json!({ "mode": "off" }))
        .await?;
    let rec = closed_recording(&api, &sid).await?;
    if rec["status"] != "complete" {
        bail!("the recording failed: {rec}");
    }
    let bytes = rec["bytes"].as_f64().context("recording bytes")?;
    let keyframes = rec["keyframes"].as_array().map_or(0, Vec::len);
    let added = cpu_on.as_secs_f64() - cpu_off.as_secs_f64();
    Ok(vec![
        Row::info(
            "Stream",
            format!(
                "{FPS} fps of {} KB frames, {} KB keyframes when asked, {:.0} s per run",
                DELTA_BYTES / 1000,
                KEYFRAME_BYTES / 1000,
                run.as_secs_f64()
            ),
        ),
        Row::info(
            "Process CPU per minute, recording off / on (server + bench clients)",
            format!(
                "{:.2} s / {:.2} s ({frames_off} / {frames_on} frames reached the viewer)",
                cpu_off.as_secs_f64() / minutes,
                cpu_on.as_secs_f64() / minutes
            ),
        ),
        Row::info(
            "**Added by recording**, CPU per minute of session",
            format!(
                "**{:.2} s** ({:.1} % of one core)",
                added / minutes,
                100.0 * added / run.as_secs_f64()
            ),
        ),
        Row::info(
            "Recorded bytes per minute",
            format!(
                "**{:.1} MB** ({keyframes} keyframes in the file)",
                bytes / 1e6 / minutes
            ),
        ),
        Row::info(
            "Added CPU per GB recorded",
            format!("{:.2} s", added / (bytes / 1e9)),
        ),
    ])
}

/// Writes a synthetic recording of `minutes` at [`FPS`], a keyframe every 5 s; returns
/// its size.
fn synthetic(path: &std::path::Path, minutes: u64, delta: usize, key: usize) -> Result<u64> {
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let header = Header {
        session_id: uuid::Uuid::new_v4().to_string(),
        agent_id: "bench".into(),
        hostname: "bench".into(),
        kind: "managed".into(),
        started_at: 0,
    };
    out.write_all(&encode_header(&header))?;
    let (delta, key) = (payload(delta), payload(key));
    let frames = minutes * 60 * FPS;
    for n in 0..frames {
        let t = u32::try_from(n * 1000 / FPS)?;
        let keyframe = n % (5 * FPS) == 0;
        let data: &Bytes = if keyframe { &key } else { &delta };
        let frame = video_frame(data, n, 0, keyframe);
        let kind = if keyframe {
            RecordType::Keyframe
        } else {
            RecordType::Frame
        };
        out.write_all(&encode_record_header(kind, t, u32::try_from(frame.len())?))?;
        out.write_all(&frame)?;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

/// Drops the file's pages from the page cache, so the next read comes from the disk.
fn evict(path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::open(path)?;
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed)?;
    Ok(())
}

/// Seeking to the middle of a 30-minute recording: what the server does (index the file)
/// and what the player then reads (from the last keyframe up to the point, here the worst
/// case of 4.9 s past a keyframe).
pub fn seek(minutes: u64) -> Result<Vec<Row>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("synthetic.gcrec");
    // A busy session (more bytes to skip over) is 10 KB a frame on average here.
    let size = synthetic(&path, minutes, 10_000, KEYFRAME_BYTES)?;
    let mut rows = vec![Row::info(
        "Recording",
        format!(
            "{minutes} min at {FPS} fps, 10 KB frames, a {} KB keyframe every 5 s: {:.0} MB, {} records",
            KEYFRAME_BYTES / 1000,
            size as f64 / 1e6,
            minutes * 60 * FPS
        ),
    )];
    for cold in [true, false] {
        if cold {
            evict(&path)?;
        }
        let start = Instant::now();
        let file = std::fs::File::open(&path)?;
        let index = read_index(std::io::BufReader::with_capacity(16 * 1024, file))?;
        let indexed = start.elapsed();
        // The worst case: just before the next keyframe after the middle one.
        let middle = u32::try_from(minutes * 60 * 1000 / 2 + 4_900)?;
        let key = index
            .keyframes
            .iter()
            .rev()
            .find(|k| k.t <= middle)
            .context("no keyframe before the middle")?;
        // The player reads from that keyframe up to the middle.
        if cold {
            evict(&path)?;
        }
        let start = Instant::now();
        let mut file = std::fs::File::open(&path)?;
        file.seek(SeekFrom::Start(key.offset))?;
        let mut read = 0u64;
        let mut head = [0u8; 9];
        loop {
            file.read_exact(&mut head)?;
            let t = u32::from_le_bytes([head[1], head[2], head[3], head[4]]);
            let len = u32::from_le_bytes([head[5], head[6], head[7], head[8]]);
            let mut body = vec![0u8; len as usize];
            file.read_exact(&mut body)?;
            read += 9 + u64::from(len);
            if t >= middle {
                break;
            }
        }
        let fetched = start.elapsed();
        let which = if cold {
            "cold page cache"
        } else {
            "warm page cache"
        };
        rows.push(Row::info(
            format!(
                "Index by scanning every record ({which}): {} keyframes",
                index.keyframes.len()
            ),
            format!("{:.1} ms", indexed.as_secs_f64() * 1e3),
        ));
        rows.push(Row::info(
            format!("Read from the last keyframe up to 4.9 s past the middle ({which})"),
            format!(
                "{:.1} ms ({:.2} MB, keyframe at {:.1} s)",
                fetched.as_secs_f64() * 1e3,
                read as f64 / 1e6,
                f64::from(key.t) / 1e3
            ),
        ));
    }
    // What the server does for a closed recording: the index saved beside it at close.
    guruconnect_server::recording::load_index(&path, true)?;
    evict(&path.with_extension("gcidx"))?;
    let start = Instant::now();
    let index = guruconnect_server::recording::load_index(&path, true)?;
    rows.push(Row::info(
        format!(
            "**Load the index saved at close** (cold page cache): {} keyframes, {:.0} KB",
            index.keyframes.len(),
            std::fs::metadata(path.with_extension("gcidx"))?.len() as f64 / 1e3
        ),
        format!("**{:.1} ms**", start.elapsed().as_secs_f64() * 1e3),
    ));
    Ok(rows)
}
