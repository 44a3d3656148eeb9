//! Adaptive quality through the relay (issue 16): frame acknowledgements from any viewer
//! reach the agent (under their own bucket), the agent's stream mode reaches every viewer,
//! and a viewer preferring lossless gets a lossless stream with H.264 as the fallback.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use std::time::Duration;

use common::TestServer;
use guruconnect_client::{Connection, connect_viewer};
use guruconnect_proto::{
    AgentHello, Codec, FrameAck, Payload, StartStream, StreamMode, ViewerHello,
};
use relay_support::*;

fn hello_with_h264() -> Payload {
    let Payload::AgentHello(hello) = hello("adaptive-host", "") else {
        unreachable!()
    };
    Payload::AgentHello(AgentHello {
        codecs: vec![Codec::RawZstd as i32, Codec::H264 as i32],
        ..hello
    })
}

fn viewer_hello(codecs: &[Codec], prefer_lossless: bool) -> Payload {
    Payload::ViewerHello(ViewerHello {
        protocol_version: guruconnect_proto::PROTOCOL_VERSION,
        codecs: codecs.iter().map(|&c| c as i32).collect(),
        prefer_lossless,
    })
}

/// The next `StartStream` in `codec` (the relay may send others first: a viewer that joined
/// streams lossless until its hello).
async fn next_start(agent: &mut Connection, codec: Codec) -> StartStream {
    match recv_until(
        agent,
        "StartStream",
        WAIT,
        |p| matches!(p, Payload::StartStream(s) if s.codec == codec as i32),
    )
    .await
    {
        Payload::StartStream(s) => s,
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_reach_the_agent_from_any_viewer_and_the_mode_reaches_every_viewer() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let (mut agent, _key) = managed_agent(&server, &admin).await;
    let watcher_user = user_with_role(&server, &admin, "viewer").await;
    let mut watcher = viewer(&server, &watcher_user, &agent.session_id).await;
    let mut controller = viewer(&server, &admin, &agent.session_id).await;
    wait_viewers(&server, &agent.session_id, 2).await;

    // A view-only viewer's acknowledgement is not input: it reaches the agent.
    watcher
        .send(Payload::FrameAck(FrameAck { sequence: 41 }))
        .await
        .unwrap();
    let got = recv_until(&mut agent.conn, "frame ack", WAIT, |p| {
        matches!(p, Payload::FrameAck(_))
    })
    .await;
    assert!(matches!(got, Payload::FrameAck(a) if a.sequence == 41));

    let mode = StreamMode {
        codec: Codec::H264 as i32,
        adaptive: true,
        fps: 12,
        bitrate_kbps: 800,
        bandwidth_kbps: 1000,
        rtt_ms: 150,
        reason: "link limited".into(),
    };
    agent
        .conn
        .send(Payload::StreamMode(mode.clone()))
        .await
        .unwrap();
    for v in [&mut watcher, &mut controller] {
        let got = recv_until(v, "stream mode", WAIT, |p| {
            matches!(p, Payload::StreamMode(_))
        })
        .await;
        assert_eq!(got, Payload::StreamMode(mode.clone()));
    }

    // A flood of acknowledgements is cut at the bucket (120/s), not passed on whole.
    for sequence in 0..1000 {
        controller
            .send(Payload::FrameAck(FrameAck {
                sequence: 100 + sequence,
            }))
            .await
            .unwrap();
    }
    let seen = collect_for(&mut agent.conn, Duration::from_millis(500))
        .await
        .0
        .into_iter()
        .filter(|p| matches!(p, Payload::FrameAck(_)))
        .count();
    assert!(
        (100..=300).contains(&seen),
        "{seen} of 1000 flooded acknowledgements reached the agent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_preferring_lossless_gets_lossless_with_h264_as_the_fallback() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let key = new_machine_key(&server, &admin).await;
    let mut agent = agent_hello(&server, &key.key, hello_with_h264()).await;
    let (token, _) = mint(&server, &admin, &agent.session_id).await;
    let mut v = connect_viewer(&server.base, &agent.session_id, &token)
        .await
        .unwrap();

    v.send(viewer_hello(&[Codec::RawZstd, Codec::H264], false))
        .await
        .unwrap();
    let start = next_start(&mut agent.conn, Codec::H264).await;
    assert!(start.fallback_codecs.is_empty());
    assert!(start.frame_acks);

    v.send(viewer_hello(&[Codec::RawZstd, Codec::H264], true))
        .await
        .unwrap();
    let start = next_start(&mut agent.conn, Codec::RawZstd).await;
    assert_eq!(start.fallback_codecs, vec![Codec::H264 as i32]);

    // A second viewer without H.264: lossless and no fallback.
    let (token, _) = mint(&server, &admin, &agent.session_id).await;
    let mut plain = connect_viewer(&server.base, &agent.session_id, &token)
        .await
        .unwrap();
    plain
        .send(viewer_hello(&[Codec::RawZstd], false))
        .await
        .unwrap();
    let start = recv_until(
        &mut agent.conn,
        "StartStream without fallback",
        WAIT,
        |p| matches!(p, Payload::StartStream(s) if s.fallback_codecs.is_empty()),
    )
    .await;
    assert!(matches!(start, Payload::StartStream(s) if s.codec == Codec::RawZstd as i32));
}
