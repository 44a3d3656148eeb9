//! File transfer through the relay (issue 14): who may transfer, where (managed sessions
//! only), how large, that every message of a transfer reaches only the viewer that started
//! it under that viewer's number, that a leaving viewer's transfers are cancelled on the
//! agent, and the audit. The agent is the protocol client; the real agent's file handling
//! is tested in `crates/agent/tests/e2e_x11.rs` and its unit tests.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
#[path = "common/relay.rs"]
mod relay_support;

use common::TestServer;
use guruconnect_client::Connection;
use guruconnect_proto::{
    FileAck, FileCancel, FileChunk, FileDownload, FileInfo, FileResult, FileUpload, Payload,
};
use relay_support::*;

fn files_hello() -> Payload {
    let Payload::AgentHello(mut h) = hello("files-host", "") else {
        unreachable!()
    };
    h.capabilities = vec!["files".into()];
    Payload::AgentHello(h)
}

fn upload(transfer_id: u32, size: u64) -> Payload {
    Payload::FileUpload(FileUpload {
        resume: false,
        transfer_id,
        directory: "/tmp".into(),
        name: "report.pdf".into(),
        size,
        overwrite: false,
    })
}

async fn agent_gets(agent: &mut Agent, what: &str) -> Payload {
    recv_until(&mut agent.conn, what, WAIT, |p| {
        matches!(
            p,
            Payload::FileUpload(_)
                | Payload::FileDownload(_)
                | Payload::FileChunk(_)
                | Payload::FileAck(_)
                | Payload::FileDone(_)
                | Payload::FileCancel(_)
        )
    })
    .await
}

async fn refused(conn: &mut Connection, transfer_id: u32) -> String {
    let got = recv_until(
        conn,
        "file refusal",
        WAIT,
        |p| matches!(p, Payload::FileResult(r) if r.transfer_id == transfer_id),
    )
    .await;
    let Payload::FileResult(r) = got else {
        unreachable!()
    };
    assert!(!r.ok, "{r:?}");
    r.error
}

#[tokio::test]
async fn a_transfer_is_routed_to_its_viewer_only_and_cancelled_when_it_leaves() {
    let server = TestServer::start().await;
    let admin = server.admin_token().await;
    let key = new_machine_key(&server, &admin).await;
    let mut agent = agent_hello(&server, &key.key, files_hello()).await;
    let sid = agent.session_id.clone();
    let technician = user_with_role(&server, &admin, "technician").await;
    let mut mine = viewer(&server, &technician, &sid).await;
    let mut other = viewer(&server, &admin, &sid).await;
    wait_viewers(&server, &sid, 2).await;

    // A technician may upload; the agent sees the relay's number.
    mine.send(upload(7, 10)).await.unwrap();
    let Payload::FileUpload(up) = agent_gets(&mut agent, "upload").await else {
        panic!()
    };
    assert_eq!((up.name.as_str(), up.size), ("report.pdf", 10));
    let n = up.transfer_id;
    agent
        .conn
        .send(Payload::FileInfo(FileInfo {
            offset: 0,
            transfer_id: n,
            name: "report.pdf".into(),
            size: 10,
        }))
        .await
        .unwrap();
    let got = recv_until(&mut mine, "accepted", WAIT, |p| {
        matches!(p, Payload::FileInfo(_))
    })
    .await;
    assert!(
        matches!(got, Payload::FileInfo(ref i) if i.transfer_id == 7),
        "{got:?}"
    );

    mine.send(Payload::FileChunk(FileChunk {
        transfer_id: 7,
        offset: 0,
        data: b"0123456789".to_vec(),
    }))
    .await
    .unwrap();
    let Payload::FileChunk(c) = agent_gets(&mut agent, "chunk").await else {
        panic!()
    };
    assert_eq!((c.transfer_id, c.data.len()), (n, 10));
    agent
        .conn
        .send(Payload::FileAck(FileAck {
            transfer_id: n,
            received: 10,
        }))
        .await
        .unwrap();
    let ack = recv_until(&mut mine, "ack", WAIT, |p| matches!(p, Payload::FileAck(_))).await;
    assert_eq!(
        ack,
        Payload::FileAck(FileAck {
            transfer_id: 7,
            received: 10
        })
    );
    let leak = try_recv_until(&mut other, QUIET, |p| {
        matches!(p, Payload::FileAck(_) | Payload::FileInfo(_))
    })
    .await;
    assert!(leak.is_err(), "another viewer saw the transfer: {leak:?}");

    agent
        .conn
        .send(Payload::FileResult(FileResult {
            transfer_id: n,
            ok: true,
            sha256: "ab".repeat(32),
            bytes: 10,
            path: "/tmp/report.pdf".into(),
            ..FileResult::default()
        }))
        .await
        .unwrap();
    let done = recv_until(&mut mine, "result", WAIT, |p| {
        matches!(p, Payload::FileResult(_))
    })
    .await;
    assert!(matches!(done, Payload::FileResult(ref r) if r.ok && r.transfer_id == 7));
    assert!(
        common::eventually(WAIT, || async {
            server.events_of("file.transferred").await.len() == 1
        })
        .await
    );
    assert!(
        common::eventually(WAIT, || async {
            server.events_of("file.started").await.len() == 1
        })
        .await
    );

    // A download left running is cancelled on the agent when its viewer leaves.
    mine.send(Payload::FileDownload(FileDownload {
        transfer_id: 8,
        path: "/etc/hostname".into(),
    }))
    .await
    .unwrap();
    let Payload::FileDownload(down) = agent_gets(&mut agent, "download").await else {
        panic!()
    };
    mine.close().await.unwrap();
    let got = agent_gets(&mut agent, "cancel").await;
    assert!(
        matches!(got, Payload::FileCancel(FileCancel { transfer_id, .. }) if transfer_id == down.transfer_id),
        "{got:?}"
    );
}

#[tokio::test]
async fn transfers_are_refused_without_the_permission_in_support_sessions_and_over_the_limit() {
    let server = TestServer::start_with(|c| c.max_file_transfer_bytes = 1000).await;
    let admin = server.admin_token().await;
    let key = new_machine_key(&server, &admin).await;
    let mut agent = agent_hello(&server, &key.key, files_hello()).await;
    let sid = agent.session_id.clone();

    let watcher = user_with_role(&server, &admin, "viewer").await;
    let mut conn = viewer(&server, &watcher, &sid).await;
    conn.send(upload(1, 10)).await.unwrap();
    let e = refused(&mut conn, 1).await;
    assert!(e.contains("permission `files`"), "{e}");
    assert!(
        common::eventually(WAIT, || async {
            server.events_of("file.refused").await.len() == 1
        })
        .await,
        "the refusal was not audited"
    );

    let mut conn = viewer(&server, &admin, &sid).await;
    conn.send(upload(2, 1001)).await.unwrap();
    let e = refused(&mut conn, 2).await;
    assert!(e.contains("limit"), "{e}");

    // A download the agent announces as too large is stopped at the relay.
    conn.send(Payload::FileDownload(FileDownload {
        transfer_id: 3,
        path: "/var/big".into(),
    }))
    .await
    .unwrap();
    let Payload::FileDownload(down) = agent_gets(&mut agent, "download").await else {
        panic!()
    };
    agent
        .conn
        .send(Payload::FileInfo(FileInfo {
            offset: 0,
            transfer_id: down.transfer_id,
            name: "big".into(),
            size: 5000,
        }))
        .await
        .unwrap();
    let e = refused(&mut conn, 3).await;
    assert!(e.contains("limit"), "{e}");
    let got = agent_gets(&mut agent, "cancel").await;
    assert!(matches!(got, Payload::FileCancel(_)), "{got:?}");

    let leaked = try_recv_until(&mut agent.conn, QUIET, |p| {
        matches!(p, Payload::FileUpload(_))
    })
    .await;
    assert!(
        leaked.is_err(),
        "a refused upload reached the agent: {leaked:?}"
    );

    // Support-code sessions: only with an agent that asks the customer about each
    // transfer (`file_consent`); the agent then asks before it touches anything.
    for (capabilities, passes) in [
        (vec!["files"], false),
        (vec!["files", "file_consent"], true),
    ] {
        let code = create_code(&server, &admin).await;
        let Payload::AgentHello(mut h) = hello("customer-pc", "") else {
            unreachable!()
        };
        h.capabilities = capabilities.iter().map(|c| (*c).to_owned()).collect();
        let mut attended = agent_hello(&server, &code, Payload::AgentHello(h)).await;
        recv_until(&mut attended.conn, "consent request", WAIT, |p| {
            matches!(p, Payload::ConsentRequest(_))
        })
        .await;
        attended.conn.send(consent(true)).await.unwrap();
        let asid = attended.session_id.clone();
        assert!(
            common::eventually(WAIT, || async {
                server
                    .state
                    .sessions
                    .get(&asid)
                    .is_some_and(|s| s.is_active())
            })
            .await
        );
        let mut conn = viewer(&server, &admin, &asid).await;
        conn.send(upload(4, 10)).await.unwrap();
        if passes {
            let got = agent_gets(&mut attended, "upload").await;
            assert!(matches!(got, Payload::FileUpload(_)), "{got:?}");
        } else {
            let e = refused(&mut conn, 4).await;
            assert!(e.contains("cannot ask the person at the machine"), "{e}");
        }
    }

    // An agent that did not announce the capability.
    let (old, _) = managed_agent(&server, &admin).await;
    let mut conn = viewer(&server, &admin, &old.session_id).await;
    conn.send(upload(5, 10)).await.unwrap();
    let e = refused(&mut conn, 5).await;
    assert!(e.contains("cannot transfer files"), "{e}");
}
