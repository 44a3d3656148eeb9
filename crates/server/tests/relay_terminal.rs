//! Remote terminals through the relay (issue 14): who may open one, that each terminal's
//! output reaches only the viewer that opened it under that viewer's number, that a
//! viewer's terminals close when it leaves, and that a terminal-only viewer (`video=0`)
//! starts no stream. The agent here is the protocol client; the real agent's shells are
//! tested in `crates/agent/tests/e2e_x11.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use common::TestServer;
use guruconnect_client::connect_viewer_with;
use guruconnect_proto::{
    Payload, TerminalClose, TerminalExit, TerminalInput, TerminalOpen, TerminalOutput,
};
use relay_support::*;

fn open(terminal_id: u32) -> Payload {
    Payload::TerminalOpen(TerminalOpen {
        terminal_id,
        cols: 80,
        rows: 24,
    })
}

fn input(terminal_id: u32, data: &[u8]) -> Payload {
    Payload::TerminalInput(TerminalInput {
        terminal_id,
        data: data.to_vec(),
    })
}

fn output(terminal_id: u32, data: &[u8]) -> Payload {
    Payload::TerminalOutput(TerminalOutput {
        terminal_id,
        data: data.to_vec(),
    })
}

fn terminal_hello() -> Payload {
    let Payload::AgentHello(mut h) = hello("terminal-host", "") else {
        unreachable!()
    };
    h.capabilities = vec!["terminal".into()];
    Payload::AgentHello(h)
}

async fn managed_terminal_agent(server: &TestServer, admin: &str) -> Agent {
    let key = new_machine_key(server, admin).await;
    agent_hello(server, &key.key, terminal_hello()).await
}

/// The `TerminalOpen` the agent receives; returns the agent's number for it.
async fn agent_opens(agent: &mut Agent) -> u32 {
    let got = recv_until(&mut agent.conn, "terminal open", WAIT, |p| {
        matches!(p, Payload::TerminalOpen(_))
    })
    .await;
    let Payload::TerminalOpen(o) = got else {
        unreachable!()
    };
    assert_eq!((o.cols, o.rows), (80, 24));
    o.terminal_id
}

async fn refusal(conn: &mut guruconnect_client::Connection, terminal_id: u32) -> TerminalExit {
    let got = recv_until(
        conn,
        "terminal refusal",
        WAIT,
        |p| matches!(p, Payload::TerminalExit(e) if e.terminal_id == terminal_id),
    )
    .await;
    let Payload::TerminalExit(e) = got else {
        unreachable!()
    };
    assert_eq!(e.exit_code, -1, "{e:?}");
    e
}

#[tokio::test]
async fn output_reaches_only_the_viewer_that_opened_the_terminal_under_its_number() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let mut agent = managed_terminal_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let mut mine = viewer(&server, &admin, &sid).await;
    let mut other = viewer(&server, &admin, &sid).await;
    wait_viewers(&server, &sid, 2).await;

    mine.send(open(5)).await.unwrap();
    let t = agent_opens(&mut agent).await;
    // The other viewer uses the same number for its own terminal: a different one.
    other.send(open(5)).await.unwrap();
    let t_other = agent_opens(&mut agent).await;
    assert_ne!(t, t_other);

    agent.conn.send(output(t, b"hello\r\n")).await.unwrap();
    let got = recv_until(&mut mine, "output", WAIT, |p| {
        matches!(p, Payload::TerminalOutput(_))
    })
    .await;
    assert_eq!(got, output(5, b"hello\r\n"));
    let to_other = try_recv_until(&mut other, QUIET, |p| {
        matches!(p, Payload::TerminalOutput(_))
    })
    .await;
    assert!(
        to_other.is_err(),
        "another viewer got the output: {to_other:?}"
    );

    // Keystrokes go to the agent under its number; an unknown terminal goes nowhere.
    mine.send(input(9, b"nope")).await.unwrap();
    mine.send(input(5, b"ls\r")).await.unwrap();
    let got = recv_until(&mut agent.conn, "input", WAIT, |p| {
        matches!(p, Payload::TerminalInput(_))
    })
    .await;
    assert_eq!(got, input(t, b"ls\r"));

    // The shell's end reaches the viewer and the route is forgotten.
    agent
        .conn
        .send(Payload::TerminalExit(TerminalExit {
            terminal_id: t,
            exit_code: 0,
            reason: "the shell exited with code 0".into(),
        }))
        .await
        .unwrap();
    let got = recv_until(&mut mine, "exit", WAIT, |p| {
        matches!(p, Payload::TerminalExit(_))
    })
    .await;
    let Payload::TerminalExit(e) = got else {
        unreachable!()
    };
    assert_eq!((e.terminal_id, e.exit_code), (5, 0));
    agent.conn.send(output(t, b"late")).await.unwrap();
    let late = try_recv_until(&mut mine, QUIET, |p| {
        matches!(p, Payload::TerminalOutput(_))
    })
    .await;
    assert!(
        late.is_err(),
        "output of a closed terminal arrived: {late:?}"
    );

    // A viewer that leaves closes its terminals on the agent.
    other.close().await.unwrap();
    let got = recv_until(&mut agent.conn, "close", WAIT, |p| {
        matches!(p, Payload::TerminalClose(_))
    })
    .await;
    assert_eq!(
        got,
        Payload::TerminalClose(TerminalClose {
            terminal_id: t_other
        })
    );

    assert!(
        common::eventually(WAIT, || async {
            server.events_of("terminal.opened").await.len() == 2
        })
        .await,
        "the openings were not audited"
    );
    assert!(
        common::eventually(WAIT, || async {
            server.events_of("terminal.closed").await.len() == 1
        })
        .await,
        "the shell's end was not audited"
    );
}

#[tokio::test]
async fn terminals_are_refused_without_the_permission_or_the_capability() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let mut agent = managed_terminal_agent(&server, &admin).await;
    let sid = agent.session_id.clone();

    // A technician controls but has no `terminal` permission; a viewer only watches.
    for role in ["technician", "viewer"] {
        let user = user_with_role(&server, &admin, role).await;
        let mut conn = viewer(&server, &user, &sid).await;
        conn.send(open(1)).await.unwrap();
        let e = refusal(&mut conn, 1).await;
        assert!(e.reason.contains("permission `terminal`"), "{role}: {e:?}");
        conn.send(input(1, b"id\r")).await.unwrap();
        sync(&mut conn).await;
    }
    let leaked = try_recv_until(&mut agent.conn, QUIET, |p| {
        matches!(p, Payload::TerminalOpen(_) | Payload::TerminalInput(_))
    })
    .await;
    assert!(
        leaked.is_err(),
        "a refused terminal reached the agent: {leaked:?}"
    );
    assert!(
        common::eventually(WAIT, || async {
            server.events_of("terminal.refused").await.len() == 2
        })
        .await,
        "the refusals were not audited"
    );

    // Five at once is one too many for a viewer.
    let mut conn = viewer(&server, &admin, &sid).await;
    for id in 1..=4 {
        conn.send(open(id)).await.unwrap();
        agent_opens(&mut agent).await;
    }
    conn.send(open(5)).await.unwrap();
    let e = refusal(&mut conn, 5).await;
    assert!(e.reason.contains("at most 4"), "{e:?}");

    // An agent that did not announce the capability (an older one) gets nothing.
    let (old, _) = managed_agent(&server, &admin).await;
    let mut conn = viewer(&server, &admin, &old.session_id).await;
    conn.send(open(1)).await.unwrap();
    let e = refusal(&mut conn, 1).await;
    assert!(e.reason.contains("no remote terminal"), "{e:?}");
}

#[tokio::test]
async fn an_attended_session_opens_terminals_only_after_consent() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let code = create_code(&server, &admin).await;
    let mut agent = agent_hello(&server, &code, terminal_hello()).await;
    let sid = agent.session_id.clone();
    let mut conn = viewer(&server, &admin, &sid).await;
    conn.send(open(1)).await.unwrap();
    let e = refusal(&mut conn, 1).await;
    assert!(e.reason.contains("not active"), "{e:?}");

    agent.conn.send(consent(true)).await.unwrap();
    assert!(
        common::eventually(WAIT, || async {
            server
                .state
                .sessions
                .get(&sid)
                .is_some_and(|s| s.is_active())
        })
        .await
    );
    conn.send(open(2)).await.unwrap();
    agent_opens(&mut agent).await;
}

#[tokio::test]
async fn a_terminal_only_viewer_starts_no_stream_and_gets_no_frames() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let mut agent = managed_terminal_agent(&server, &admin).await;
    let sid = agent.session_id.clone();
    let (token, _) = mint(&server, &admin, &sid).await;
    let mut conn = connect_viewer_with(&server.base, &sid, &token, false)
        .await
        .expect("terminal-only viewer connects");
    wait_viewers(&server, &sid, 1).await;
    let start = try_recv_until(&mut agent.conn, QUIET, |p| {
        matches!(p, Payload::StartStream(_))
    })
    .await;
    assert!(start.is_err(), "the agent was asked to stream: {start:?}");
    agent.conn.send(frame(1, true, 64)).await.unwrap();
    let got = try_recv_until(&mut conn, QUIET, |p| matches!(p, Payload::VideoFrame(_))).await;
    assert!(got.is_err(), "a terminal-only viewer got a frame: {got:?}");
    conn.send(open(1)).await.unwrap();
    agent_opens(&mut agent).await;

    // A bad value is refused with the error envelope.
    let resp = server
        .client()
        .get(server.url(&format!(
            "/ws/viewer?session_id={sid}&token={token}&video=2"
        )))
        .send()
        .await
        .unwrap();
    common::expect_envelope(resp, reqwest::StatusCode::BAD_REQUEST, "bad_request").await;
}
