//! Backend conformance suite: every `case_*` runs against SQLite (always, in a fresh
//! temp directory) and PostgreSQL (when `GURUCONNECT_TEST_DATABASE_URL` is set, in a
//! fresh schema per test).

use std::time::{Duration, Instant};

use guruconnect_store::testing::test_database_url;
use guruconnect_store::*;
use serde_json::json;

/// Generates `sqlite::<case>` and `postgres::<case>` tests for each `case` fn
/// taking a `Store`.
macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    let store = guruconnect_store::Store::open_sqlite_in(dir.path())
                        .await
                        .expect("open sqlite");
                    assert_eq!(store.backend(), guruconnect_store::Backend::Sqlite);
                    super::$case(store).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(url) = guruconnect_store::testing::test_database_url().await else {
                        eprintln!(
                            "skipped postgres::{}: GURUCONNECT_TEST_DATABASE_URL not set",
                            stringify!($case)
                        );
                        return;
                    };
                    let store = guruconnect_store::Store::connect(&url)
                        .await
                        .expect("connect postgres");
                    assert_eq!(store.backend(), guruconnect_store::Backend::Postgres);
                    super::$case(store).await;
                }
            )*
        }
    };
}

conformance!(
    case_ping,
    case_recordings,
    case_users_crud,
    case_users_case_insensitive_conflict,
    case_users_tenant_isolation,
    case_last_admin_counting,
    case_tokens,
    case_tokens_revoke_except_and_children,
    case_tokens_prune,
    case_events_filters,
    case_events_pagination_and_limits,
    case_settings,
    case_settings_if_absent_race,
    case_machines_upsert_get_list,
    case_machines_soft_delete,
    case_machines_uid_uniqueness,
    case_machines_inventory_and_touch,
    case_machines_new_fields_defaults,
    case_machine_labels,
    case_machine_pending_and_site,
    case_create_machine_and_collision_row,
    case_machines_by_ids_and_count,
    case_search_maintained_on_every_write,
    case_search_like_escaping,
    case_search_pagination_and_order,
    case_search_field_terms_and_status,
    case_search_matches_brute_force,
    case_sites,
    case_site_key_rotation,
    case_keys,
    case_codes_consume_once,
    case_codes_customer_name,
    case_releases_and_update_state,
    case_codes_expired_and_cancelled,
    case_codes_consume_race,
    case_codes_list_and_end,
    case_codes_pagination,
    case_codes_prune,
    case_codes_audit_in_same_transaction,
    case_users_audit_in_same_transaction,
    case_sites_audit_in_same_transaction,
    case_keys_audit_in_same_transaction,
    case_machines_audit_in_same_transaction,
    case_sessions_audit_in_same_transaction,
    case_enroll_in_one_transaction,
    case_sessions,
    case_sessions_of_instances,
    case_out_of_order_binding,
    case_errors_map,
    case_nul_byte_is_not_transient,
    case_totp_lifecycle,
    case_limits_window_counter,
    case_limits_concurrent_hits,
    case_limits_failure_lockout,
    case_limits_prune,
);

const T: &str = DEFAULT_TENANT;

fn new_user(id: &str, username: &str, role: &str) -> NewUser {
    NewUser {
        id: id.to_owned(),
        tenant_id: T.to_owned(),
        username: username.to_owned(),
        password_hash: format!("$argon2id$hash-of-{id}"),
        role: role.to_owned(),
    }
}

fn token(jti: &str, user: &str, kind: TokenKind, parent: Option<&str>, exp: i64) -> IssuedToken {
    IssuedToken {
        jti: jti.to_owned(),
        user_id: user.to_owned(),
        kind,
        parent_jti: parent.map(str::to_owned),
        issued_at: 1_000,
        expires_at: exp,
        revoked_at: None,
    }
}

fn machine(agent_id: &str, uid: Option<&str>, hostname: &str, seen_at: i64) -> MachineUpsert {
    MachineUpsert {
        agent_id: agent_id.to_owned(),
        tenant_id: T.to_owned(),
        machine_uid: uid.map(str::to_owned),
        hostname: hostname.to_owned(),
        os: "windows".to_owned(),
        os_version: "10.0.19045".to_owned(),
        agent_version: "0.1.0".to_owned(),
        external_ip: Some("203.0.113.7".to_owned()),
        seen_at,
    }
}

fn agent_key(id: &str, agent_id: &str, hash: &str, created_at: i64) -> AgentKey {
    AgentKey {
        id: id.to_owned(),
        agent_id: agent_id.to_owned(),
        key_hash: hash.to_owned(),
        prefix: "cak_ab12".to_owned(),
        label: Some("primary".to_owned()),
        created_by: Some("u-admin".to_owned()),
        created_at,
        last_used_at: None,
        revoked_at: None,
    }
}

fn code(code: &str, created_at: i64, expires_at: i64) -> SupportCode {
    SupportCode {
        code: code.to_owned(),
        tenant_id: T.to_owned(),
        status: CodeStatus::Pending,
        created_by: "u-tech".to_owned(),
        created_by_name: "tech".to_owned(),
        note: Some("ticket 42".to_owned()),
        created_at,
        expires_at,
        consumed_at: None,
        session_id: None,
        customer_name: None,
    }
}

fn session(id: &str, agent_id: &str, status: SessionStatus, created_at: i64) -> SessionRecord {
    SessionRecord {
        id: id.to_owned(),
        tenant_id: T.to_owned(),
        agent_id: agent_id.to_owned(),
        kind: SessionKind::Managed,
        code: None,
        status,
        created_at,
        ended_at: None,
        end_reason: None,
    }
}

// ---------------------------------------------------------------- connection

async fn case_ping(store: Store) {
    store.ping().await.expect("ping");
    let clone = store.clone();
    clone.ping().await.expect("ping clone");
}

// ---------------------------------------------------------------- users

async fn case_users_crud(store: Store) {
    let u = store
        .create_user(&new_user("u-1", "Alice", "admin"), 100, &ev("user.created"))
        .await
        .expect("create");
    assert_eq!(u.id, "u-1");
    assert_eq!(u.tenant_id, T);
    assert_eq!(u.username, "Alice");
    assert_eq!(u.password_hash, "$argon2id$hash-of-u-1");
    assert_eq!(u.role, "admin");
    assert!(!u.disabled);
    assert_eq!((u.created_at, u.updated_at), (100, 100));
    assert_eq!(store.get_user("u-1").await.expect("get"), u);

    store
        .create_user(
            &new_user("u-2", "bob", "technician"),
            101,
            &ev("user.created"),
        )
        .await
        .expect("create bob");
    store
        .create_user(
            &new_user("u-3", "Carol", "viewer"),
            102,
            &ev("user.created"),
        )
        .await
        .expect("create carol");
    store
        .create_user(&new_user("u-4", "_zed", "viewer"), 103, &ev("user.created"))
        .await
        .expect("create _zed");

    let names: Vec<String> = store
        .list_users(T)
        .await
        .expect("list")
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["_zed", "Alice", "bob", "Carol"]);
    assert_eq!(store.count_users(T).await.expect("count"), 4);

    let found = store
        .find_user_by_username(T, "aLiCe")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.id, "u-1");
    assert!(
        store
            .find_user_by_username(T, "nobody")
            .await
            .expect("find")
            .is_none()
    );

    let patched = store
        .update_user(
            "u-2",
            &UserPatch {
                role: Some("admin".to_owned()),
                password_hash: None,
                disabled: Some(true),
            },
            200,
            &ev("user.updated"),
        )
        .await
        .expect("update");
    assert_eq!(patched.role, "admin");
    assert!(patched.disabled);
    assert_eq!(patched.password_hash, "$argon2id$hash-of-u-2");
    assert_eq!((patched.created_at, patched.updated_at), (101, 200));

    let patched = store
        .update_user(
            "u-2",
            &UserPatch {
                password_hash: Some("new-hash".to_owned()),
                disabled: Some(false),
                ..UserPatch::default()
            },
            300,
            &ev("user.updated"),
        )
        .await
        .expect("update 2");
    assert_eq!(patched.role, "admin");
    assert!(!patched.disabled);
    assert_eq!(patched.password_hash, "new-hash");
    assert_eq!(patched.updated_at, 300);

    assert!(matches!(
        store
            .update_user("nope", &UserPatch::default(), 1, &ev("user.updated"))
            .await,
        Err(StoreError::NotFound)
    ));

    store.delete_user("u-3").await.expect("delete");
    assert!(matches!(
        store.get_user("u-3").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_user("u-3").await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.count_users(T).await.expect("count"), 3);
}

async fn case_users_case_insensitive_conflict(store: Store) {
    store
        .create_user(&new_user("u-1", "Admin", "admin"), 1, &ev("user.created"))
        .await
        .expect("create");
    let err = store
        .create_user(&new_user("u-2", "ADMIN", "viewer"), 2, &ev("user.created"))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, StoreError::Conflict("username taken")),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "conflict: username taken");
    // Same id is also a conflict.
    let err = store
        .create_user(&new_user("u-1", "other", "viewer"), 2, &ev("user.created"))
        .await
        .expect_err("duplicate id");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.count_users(T).await.expect("count"), 1);
}

async fn case_users_tenant_isolation(store: Store) {
    store
        .create_user(&new_user("u-1", "alice", "admin"), 1, &ev("user.created"))
        .await
        .expect("create");
    let mut other = new_user("u-2", "ALICE", "admin");
    other.tenant_id = "other".to_owned();
    store
        .create_user(&other, 1, &ev("user.created"))
        .await
        .expect("same name in other tenant");
    assert_eq!(store.count_users(T).await.expect("count"), 1);
    assert_eq!(store.count_users("other").await.expect("count"), 1);
    assert_eq!(store.list_users("other").await.expect("list").len(), 1);
    let found = store
        .find_user_by_username("other", "alice")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(found.id, "u-2");
    assert_eq!(store.count_active_admins("other").await.expect("admins"), 1);
}

async fn case_last_admin_counting(store: Store) {
    assert_eq!(store.count_active_admins(T).await.expect("count"), 0);
    store
        .create_user(&new_user("a-1", "root", "admin"), 1, &ev("user.created"))
        .await
        .expect("create");
    store
        .create_user(&new_user("a-2", "root2", "admin"), 1, &ev("user.created"))
        .await
        .expect("create");
    store
        .create_user(
            &new_user("t-1", "tech", "technician"),
            1,
            &ev("user.created"),
        )
        .await
        .expect("create");
    assert_eq!(store.count_active_admins(T).await.expect("count"), 2);

    let disable = UserPatch {
        disabled: Some(true),
        ..UserPatch::default()
    };
    store
        .update_user("a-2", &disable, 2, &ev("user.updated"))
        .await
        .expect("disable");
    assert_eq!(store.count_active_admins(T).await.expect("count"), 1);

    let demote = UserPatch {
        role: Some("viewer".to_owned()),
        ..UserPatch::default()
    };
    store
        .update_user("a-1", &demote, 3, &ev("user.updated"))
        .await
        .expect("demote");
    assert_eq!(store.count_active_admins(T).await.expect("count"), 0);
    assert_eq!(store.count_users(T).await.expect("count"), 3);
}

// ---------------------------------------------------------------- tokens

async fn case_tokens(store: Store) {
    let t = token("j-1", "u-1", TokenKind::Login, None, 5_000);
    store.record_token(&t).await.expect("record");
    assert_eq!(store.get_token("j-1").await.expect("get"), Some(t.clone()));
    assert_eq!(store.get_token("missing").await.expect("get"), None);

    let err = store.record_token(&t).await.expect_err("dup");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    let v = token("j-v", "u-1", TokenKind::Viewer, Some("j-1"), 1_300);
    store.record_token(&v).await.expect("record viewer");
    let got = store.get_token("j-v").await.expect("get").expect("some");
    assert_eq!(got.kind, TokenKind::Viewer);
    assert_eq!(got.parent_jti.as_deref(), Some("j-1"));

    assert!(store.revoke_token("j-1", 2_000).await.expect("revoke"));
    assert!(!store.revoke_token("j-1", 3_000).await.expect("again"));
    assert!(!store.revoke_token("missing", 3_000).await.expect("missing"));
    let got = store.get_token("j-1").await.expect("get").expect("some");
    assert_eq!(got.revoked_at, Some(2_000), "first revocation time kept");
    // The viewer token is untouched by revoking its parent alone.
    let got = store.get_token("j-v").await.expect("get").expect("some");
    assert_eq!(got.revoked_at, None);

    // A pre-revoked record round-trips.
    let mut r = token("j-r", "u-1", TokenKind::Login, None, 5_000);
    r.revoked_at = Some(1_500);
    store.record_token(&r).await.expect("record revoked");
    assert_eq!(store.get_token("j-r").await.expect("get"), Some(r));
}

async fn case_tokens_revoke_except_and_children(store: Store) {
    for t in [
        token("l-1", "u-1", TokenKind::Login, None, 9_000),
        token("l-2", "u-1", TokenKind::Login, None, 9_000),
        token("v-1", "u-1", TokenKind::Viewer, Some("l-1"), 9_000),
        token("v-2", "u-1", TokenKind::Viewer, Some("l-2"), 9_000),
        token("v-3", "u-1", TokenKind::Viewer, Some("l-2"), 9_000),
        token("o-1", "u-2", TokenKind::Login, None, 9_000),
        token("o-v", "u-2", TokenKind::Viewer, Some("o-1"), 9_000),
    ] {
        store.record_token(&t).await.expect("record");
    }
    let revoked = |jti: &'static str| {
        let store = store.clone();
        async move {
            store
                .get_token(jti)
                .await
                .expect("get")
                .expect("exists")
                .revoked_at
        }
    };

    // Children of l-2 only.
    assert_eq!(
        store
            .revoke_child_tokens("l-2", 100)
            .await
            .expect("children"),
        2
    );
    assert_eq!(revoked("v-2").await, Some(100));
    assert_eq!(revoked("v-3").await, Some(100));
    assert_eq!(revoked("v-1").await, None);
    assert_eq!(revoked("l-2").await, None);
    assert_eq!(
        store.revoke_child_tokens("l-2", 101).await.expect("again"),
        0
    );

    // User viewer tokens.
    assert_eq!(
        store
            .revoke_user_viewer_tokens("u-2", 150)
            .await
            .expect("viewers"),
        1
    );
    assert_eq!(revoked("o-v").await, Some(150));
    assert_eq!(revoked("o-1").await, None);

    // Everything of u-1 except l-1 (including l-1's viewer token).
    assert_eq!(
        store
            .revoke_user_tokens_except("u-1", Some("l-1"), 200)
            .await
            .expect("except"),
        2 // l-2 and v-1; v-2/v-3 were already revoked
    );
    assert_eq!(revoked("l-1").await, None);
    assert_eq!(revoked("l-2").await, Some(200));
    assert_eq!(revoked("v-1").await, Some(200));
    assert_eq!(revoked("v-2").await, Some(100), "earlier revocation kept");
    assert_eq!(revoked("o-1").await, None, "other user untouched");

    assert_eq!(
        store
            .revoke_user_tokens_except("u-1", None, 300)
            .await
            .expect("all"),
        1
    );
    assert_eq!(revoked("l-1").await, Some(300));
}

async fn case_tokens_prune(store: Store) {
    store
        .record_token(&token("old", "u-1", TokenKind::Login, None, 999))
        .await
        .expect("record");
    store
        .record_token(&token("edge", "u-1", TokenKind::Login, None, 1_000))
        .await
        .expect("record");
    store
        .record_token(&token("new", "u-1", TokenKind::Viewer, None, 2_000))
        .await
        .expect("record");
    assert_eq!(store.prune_expired_tokens(1_000).await.expect("prune"), 1);
    assert!(store.get_token("old").await.expect("get").is_none());
    assert!(store.get_token("edge").await.expect("get").is_some());
    assert!(store.get_token("new").await.expect("get").is_some());
    assert_eq!(store.prune_expired_tokens(1_000).await.expect("again"), 0);
    assert_eq!(store.prune_expired_tokens(5_000).await.expect("all"), 2);
}

// ---------------------------------------------------------------- events

fn ev(event_type: &str) -> NewEvent {
    NewEvent {
        tenant_id: T.to_owned(),
        event_type: event_type.to_owned(),
        ..NewEvent::default()
    }
}

async fn ids(store: &Store, f: EventFilter) -> Vec<i64> {
    store
        .list_events(&f)
        .await
        .expect("list")
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn filter() -> EventFilter {
    EventFilter {
        tenant_id: T.to_owned(),
        limit: 100,
        ..EventFilter::default()
    }
}

async fn case_events_filters(store: Store) {
    let e1 = NewEvent {
        user_id: Some("u-1".to_owned()),
        username: Some("Alice".to_owned()),
        client_ip: Some("198.51.100.1".to_owned()),
        details: json!({"method": "password", "n": 1, "nested": {"ok": true}}),
        ..ev("auth.login_success")
    };
    let e2 = NewEvent {
        user_id: Some("u-2".to_owned()),
        username: Some("bob".to_owned()),
        ..ev("auth.login_failed")
    };
    let e3 = NewEvent {
        user_id: Some("u-1".to_owned()),
        username: Some("alice".to_owned()),
        agent_id: Some("a-1".to_owned()),
        session_id: Some("s-1".to_owned()),
        ..ev("session.started")
    };
    let e4 = NewEvent {
        agent_id: Some("a-2".to_owned()),
        ..ev("authz.denied")
    };
    let e5 = NewEvent {
        agent_id: Some("a-1".to_owned()),
        session_id: Some("s-1".to_owned()),
        ..ev("session.ended")
    };
    let other_tenant = NewEvent {
        tenant_id: "other".to_owned(),
        ..ev("auth.login_success")
    };
    let id1 = store.record_event(&e1, 1_000).await.expect("rec");
    let id2 = store.record_event(&e2, 2_000).await.expect("rec");
    let id3 = store.record_event(&e3, 3_000).await.expect("rec");
    let id4 = store.record_event(&e4, 4_000).await.expect("rec");
    let id5 = store.record_event(&e5, 5_000).await.expect("rec");
    let id6 = store.record_event(&other_tenant, 6_000).await.expect("rec");
    assert!(id1 < id2 && id2 < id3 && id3 < id4 && id4 < id5 && id5 < id6);

    // Round trip, newest first, tenant isolated.
    let all = store.list_events(&filter()).await.expect("list");
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        [id5, id4, id3, id2, id1]
    );
    let first = all.last().expect("e1");
    assert_eq!(first.event, e1);
    assert_eq!(first.created_at, 1_000);
    assert_eq!(first.event.details["nested"]["ok"], json!(true));
    assert_eq!(all[0].event.details, serde_json::Value::Null);

    let f = |mut x: EventFilter, apply: &dyn Fn(&mut EventFilter)| {
        apply(&mut x);
        x
    };
    // Exact type.
    assert_eq!(
        ids(
            &store,
            f(filter(), &|x| x.event_type =
                Some("auth.login_failed".into()))
        )
        .await,
        [id2]
    );
    // Prefix: must not match `authz.` and is case-sensitive.
    assert_eq!(
        ids(
            &store,
            f(filter(), &|x| x.event_type = Some("auth.".into()))
        )
        .await,
        [id2, id1]
    );
    assert_eq!(
        ids(
            &store,
            f(filter(), &|x| x.event_type = Some("AUTH.".into()))
        )
        .await,
        Vec::<i64>::new()
    );
    // Without the trailing dot it is exact, so `auth` matches nothing.
    assert_eq!(
        ids(&store, f(filter(), &|x| x.event_type = Some("auth".into()))).await,
        Vec::<i64>::new()
    );
    // LIKE wildcards are literal.
    assert_eq!(
        ids(
            &store,
            f(filter(), &|x| x.event_type = Some("auth_%".into()))
        )
        .await,
        Vec::<i64>::new()
    );
    // User: username case-insensitive or exact id.
    assert_eq!(
        ids(&store, f(filter(), &|x| x.user = Some("ALICE".into()))).await,
        [id3, id1]
    );
    assert_eq!(
        ids(&store, f(filter(), &|x| x.user = Some("u-2".into()))).await,
        [id2]
    );
    assert_eq!(
        ids(&store, f(filter(), &|x| x.user = Some("U-2".into()))).await,
        Vec::<i64>::new(),
        "user id matches exactly"
    );
    // Agent and session.
    assert_eq!(
        ids(&store, f(filter(), &|x| x.agent_id = Some("a-1".into()))).await,
        [id5, id3]
    );
    assert_eq!(
        ids(&store, f(filter(), &|x| x.session_id = Some("s-1".into()))).await,
        [id5, id3]
    );
    // Time window: since inclusive, until exclusive.
    assert_eq!(
        ids(
            &store,
            f(filter(), &|x| {
                x.since = Some(2_000);
                x.until = Some(4_000);
            })
        )
        .await,
        [id3, id2]
    );
    // Combined.
    assert_eq!(
        ids(
            &store,
            f(filter(), &|x| {
                x.event_type = Some("session.".into());
                x.user = Some("alice".into());
                x.agent_id = Some("a-1".into());
                x.session_id = Some("s-1".into());
                x.since = Some(0);
                x.until = Some(10_000);
                x.before_id = Some(id5);
            })
        )
        .await,
        [id3]
    );
    // Other tenant.
    assert_eq!(
        ids(&store, f(filter(), &|x| x.tenant_id = "other".into())).await,
        [id6]
    );
}

async fn case_events_pagination_and_limits(store: Store) {
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(
            store
                .record_event(&ev("machine.seen"), 1_000 + i)
                .await
                .expect("rec"),
        );
    }
    all.reverse();

    // Cursor pagination, 3 per page.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = ids(
            &store,
            EventFilter {
                before_id: cursor,
                limit: 3,
                ..filter()
            },
        )
        .await;
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        cursor = page.last().copied();
        seen.extend(page);
    }
    assert_eq!(seen, all);

    // Limits below 1 are raised to 1.
    for limit in [0, -5] {
        assert_eq!(
            ids(&store, EventFilter { limit, ..filter() }).await,
            [all[0]]
        );
    }

    // Limits above 500 are capped.
    for i in 0..MAX_EVENT_PAGE {
        store
            .record_event(&ev("bulk.insert"), 10_000 + i)
            .await
            .expect("rec");
    }
    let page = ids(
        &store,
        EventFilter {
            limit: 100_000,
            ..filter()
        },
    )
    .await;
    assert_eq!(page.len(), 500);
}

// ---------------------------------------------------------------- settings

async fn case_settings(store: Store) {
    assert_eq!(store.get_setting("jwt_secret").await.expect("get"), None);
    store.set_setting("jwt_secret", "one").await.expect("set");
    assert_eq!(
        store
            .get_setting("jwt_secret")
            .await
            .expect("get")
            .as_deref(),
        Some("one")
    );
    store
        .set_setting("jwt_secret", "two")
        .await
        .expect("upsert");
    assert_eq!(
        store
            .get_setting("jwt_secret")
            .await
            .expect("get")
            .as_deref(),
        Some("two")
    );
    assert_eq!(
        store
            .set_setting_if_absent("jwt_secret", "three")
            .await
            .expect("if absent"),
        "two"
    );
    assert_eq!(
        store
            .set_setting_if_absent("instance", "abc")
            .await
            .expect("if absent"),
        "abc"
    );
    assert_eq!(
        store.get_setting("instance").await.expect("get").as_deref(),
        Some("abc")
    );
}

async fn case_settings_if_absent_race(store: Store) {
    for round in 0..5 {
        let key = format!("secret-{round}");
        let mut tasks = Vec::new();
        for i in 0..4 {
            let store = store.clone();
            let key = key.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .set_setting_if_absent(&key, &format!("value-{i}"))
                    .await
                    .expect("if absent")
            }));
        }
        let mut values = Vec::new();
        for t in tasks {
            values.push(t.await.expect("join"));
        }
        assert!(values.iter().all(|v| *v == values[0]), "{values:?}");
        assert_eq!(
            store.get_setting(&key).await.expect("get"),
            Some(values[0].clone())
        );
    }
}

// ---------------------------------------------------------------- machines

async fn case_machines_upsert_get_list(store: Store) {
    let m = store
        .upsert_machine(&machine("a-1", Some("uid-1"), "zeta", 1_000))
        .await
        .expect("insert");
    assert_eq!(m.agent_id, "a-1");
    assert_eq!(m.tenant_id, T);
    assert_eq!(m.machine_uid.as_deref(), Some("uid-1"));
    assert_eq!(m.hostname, "zeta");
    assert_eq!(m.os, "windows");
    assert_eq!(m.os_version, "10.0.19045");
    assert_eq!(m.agent_version, "0.1.0");
    assert_eq!(m.external_ip.as_deref(), Some("203.0.113.7"));
    assert_eq!(m.status, MachineStatus::Active);
    assert_eq!(m.tags, Vec::<String>::new());
    assert_eq!(m.inventory, json!({}));
    assert_eq!(m.last_seen, Some(1_000));
    assert_eq!(m.created_at, 1_000);
    assert_eq!((m.company.clone(), m.site.clone()), (None, None));
    assert_eq!(store.get_machine("a-1").await.expect("get"), m);

    // Update: reported fields change, created_at and uid stay.
    let mut up = machine("a-1", Some("uid-other"), "Zeta-renamed", 2_000);
    up.os_version = "10.0.22631".to_owned();
    up.agent_version = "0.2.0".to_owned();
    up.external_ip = None;
    let m2 = store.upsert_machine(&up).await.expect("update");
    assert_eq!(m2.machine_uid.as_deref(), Some("uid-1"), "uid kept");
    assert_eq!(m2.hostname, "Zeta-renamed");
    assert_eq!(m2.os_version, "10.0.22631");
    assert_eq!(m2.agent_version, "0.2.0");
    assert_eq!(m2.external_ip, None);
    assert_eq!(m2.last_seen, Some(2_000));
    assert_eq!(m2.created_at, 1_000);

    // A machine without uid gets one later.
    store
        .upsert_machine(&machine("a-2", None, "alpha", 1_500))
        .await
        .expect("insert");
    let m3 = store
        .upsert_machine(&machine("a-2", Some("uid-2"), "alpha", 1_600))
        .await
        .expect("set uid");
    assert_eq!(m3.machine_uid.as_deref(), Some("uid-2"));
    let by_uid = store
        .find_machine_by_uid(T, "uid-2")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(by_uid.agent_id, "a-2");
    assert!(
        store
            .find_machine_by_uid("other", "uid-2")
            .await
            .expect("find")
            .is_none()
    );

    store
        .upsert_machine(&machine("a-4", None, "beta", 1_700))
        .await
        .expect("insert");
    store
        .upsert_machine(&machine("a-3", None, "beta", 1_700))
        .await
        .expect("insert");
    let mut other = machine("o-1", None, "aaa", 1_800);
    other.tenant_id = "other".to_owned();
    store.upsert_machine(&other).await.expect("other tenant");

    let (list, total) = store.list_machines(T, 10, 0).await.expect("list");
    assert_eq!(total, 4);
    assert_eq!(
        list.iter().map(|m| m.agent_id.as_str()).collect::<Vec<_>>(),
        ["a-2", "a-3", "a-4", "a-1"]
    );
    let (page, total) = store.list_machines(T, 2, 1).await.expect("page");
    assert_eq!(total, 4);
    assert_eq!(
        page.iter().map(|m| m.agent_id.as_str()).collect::<Vec<_>>(),
        ["a-3", "a-4"]
    );
    let (page, total) = store.list_machines(T, 10, 10).await.expect("past end");
    assert!(page.is_empty());
    assert_eq!(total, 4);
    let (page, _) = store.list_machines("other", 10, 0).await.expect("other");
    assert_eq!(page.len(), 1);
}

async fn case_machines_soft_delete(store: Store) {
    store
        .upsert_machine(&machine("a-1", Some("uid-1"), "host", 1_000))
        .await
        .expect("insert");
    store
        .soft_delete_machine("a-1", 2_000, &ev("machine.removed"))
        .await
        .expect("delete");
    assert!(matches!(
        store.get_machine("a-1").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .soft_delete_machine("a-1", 3_000, &ev("machine.removed"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .soft_delete_machine("never", 3_000, &ev("machine.removed"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(
        store
            .find_machine_by_uid(T, "uid-1")
            .await
            .expect("find")
            .is_none()
    );
    let (list, total) = store.list_machines(T, 10, 0).await.expect("list");
    assert!(list.is_empty());
    assert_eq!(total, 0);
    // A deleted machine stays deleted when its agent reconnects.
    assert!(matches!(
        store
            .upsert_machine(&machine("a-1", Some("uid-1"), "host", 4_000))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.touch_machine("a-1", 5_000).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_machine_inventory("a-1", &json!({}), 5_000).await,
        Err(StoreError::NotFound)
    ));
    // Its uid is free again for a new machine.
    let fresh = store
        .upsert_machine(&machine("a-2", Some("uid-1"), "host", 6_000))
        .await
        .expect("uid reusable after delete");
    assert_eq!(fresh.machine_uid.as_deref(), Some("uid-1"));
}

async fn case_machines_uid_uniqueness(store: Store) {
    store
        .upsert_machine(&machine("a-1", Some("uid-1"), "one", 1_000))
        .await
        .expect("insert");
    let err = store
        .upsert_machine(&machine("a-2", Some("uid-1"), "two", 1_000))
        .await
        .expect_err("dup uid");
    assert!(
        matches!(err, StoreError::Conflict("machine uid taken")),
        "{err:?}"
    );
    assert!(matches!(
        store.get_machine("a-2").await,
        Err(StoreError::NotFound)
    ));
    // Setting a taken uid on an existing uid-less machine conflicts too.
    store
        .upsert_machine(&machine("a-3", None, "three", 1_000))
        .await
        .expect("insert");
    let err = store
        .upsert_machine(&machine("a-3", Some("uid-1"), "three", 1_100))
        .await
        .expect_err("dup uid on update");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    // Same uid in another tenant is fine; many uid-less machines are fine.
    let mut other = machine("o-1", Some("uid-1"), "other", 1_000);
    other.tenant_id = "other".to_owned();
    store.upsert_machine(&other).await.expect("other tenant");
    store
        .upsert_machine(&machine("a-4", None, "four", 1_000))
        .await
        .expect("no uid");
}

async fn case_machines_inventory_and_touch(store: Store) {
    store
        .upsert_machine(&machine("a-1", None, "host", 1_000))
        .await
        .expect("insert");
    store.touch_machine("a-1", 1_500).await.expect("touch");
    assert_eq!(
        store.get_machine("a-1").await.expect("get").last_seen,
        Some(1_500)
    );
    let inv = json!({"cpu": "x86_64", "ram_mb": 16384, "disks": [{"name": "C:", "free": 1}]});
    store
        .set_machine_inventory("a-1", &inv, 2_000)
        .await
        .expect("inventory");
    let m = store.get_machine("a-1").await.expect("get");
    assert_eq!(m.inventory, inv);
    assert_eq!(m.last_seen, Some(2_000));
    assert!(matches!(
        store.touch_machine("missing", 1).await,
        Err(StoreError::NotFound)
    ));
}

// ---------------------------------------------------------------- agent keys

async fn case_keys(store: Store) {
    store
        .upsert_machine(&machine("a-1", None, "host", 1_000))
        .await
        .expect("machine");
    let k1 = agent_key("k-1", "a-1", "hash-1", 1_000);
    let k2 = agent_key("k-2", "a-1", "hash-2", 2_000);
    store
        .create_agent_key(&k1, &ev("key.issued"))
        .await
        .expect("create");
    store
        .create_agent_key(&k2, &ev("key.issued"))
        .await
        .expect("create");
    let err = store
        .create_agent_key(&agent_key("k-3", "a-1", "hash-1", 3_000), &ev("key.issued"))
        .await
        .expect_err("dup hash");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    assert_eq!(
        store.find_active_key_by_hash("hash-1").await.expect("find"),
        Some(k1.clone())
    );
    assert_eq!(
        store.find_active_key_by_hash("nope").await.expect("find"),
        None
    );
    assert_eq!(
        store.list_agent_keys("a-1").await.expect("list"),
        vec![k2.clone(), k1.clone()]
    );
    assert_eq!(store.count_active_keys("a-1").await.expect("count"), 2);

    store.touch_agent_key("k-1", 1_234).await.expect("touch");
    assert_eq!(
        store
            .find_active_key_by_hash("hash-1")
            .await
            .expect("find")
            .expect("some")
            .last_used_at,
        Some(1_234)
    );
    assert!(matches!(
        store.touch_agent_key("nope", 1).await,
        Err(StoreError::NotFound)
    ));

    let revoked = store
        .revoke_agent_key("a-1", "k-1", 5_000, &ev("key.revoked"))
        .await
        .expect("revoke");
    assert_eq!(revoked.revoked_at, Some(5_000));
    let again = store
        .revoke_agent_key("a-1", "k-1", 6_000, &ev("key.revoked"))
        .await
        .expect("idempotent");
    assert_eq!(again.revoked_at, Some(5_000), "first revocation kept");
    assert_eq!(
        store.find_active_key_by_hash("hash-1").await.expect("find"),
        None
    );
    assert_eq!(store.count_active_keys("a-1").await.expect("count"), 1);
    assert_eq!(store.list_agent_keys("a-1").await.expect("list").len(), 2);
    // Wrong agent or unknown key.
    assert!(matches!(
        store
            .revoke_agent_key("a-2", "k-2", 6_000, &ev("key.revoked"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .revoke_agent_key("a-1", "k-9", 6_000, &ev("key.revoked"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(
        store
            .find_active_key_by_hash("hash-2")
            .await
            .expect("find")
            .is_some(),
        "revoking for the wrong agent changed nothing"
    );

    // Keys of a soft-deleted machine are not found.
    store
        .soft_delete_machine("a-1", 7_000, &ev("machine.removed"))
        .await
        .expect("delete");
    assert_eq!(
        store.find_active_key_by_hash("hash-2").await.expect("find"),
        None
    );
}

// ---------------------------------------------------------------- support codes

async fn case_codes_consume_once(store: Store) {
    let c = code("123-456-789", 1_000, 10_000);
    store
        .create_code(&c, &ev("code.created"))
        .await
        .expect("create");
    assert_eq!(store.get_code("123-456-789").await.expect("get"), Some(c));
    let err = store
        .create_code(&code("123-456-789", 1_000, 10_000), &ev("code.created"))
        .await
        .expect_err("dup");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    assert!(
        store
            .consume_code("123-456-789", "s-1", 2_000)
            .await
            .expect("consume")
    );
    assert!(
        !store
            .consume_code("123-456-789", "s-2", 2_001)
            .await
            .expect("second")
    );
    let got = store
        .get_code("123-456-789")
        .await
        .expect("get")
        .expect("some");
    assert_eq!(got.status, CodeStatus::Consumed);
    assert_eq!(got.consumed_at, Some(2_000));
    assert_eq!(got.session_id.as_deref(), Some("s-1"));
    assert!(
        !store
            .cancel_code("123-456-789", &ev("code.cancelled"), 3_000)
            .await
            .expect("cancel consumed")
    );
    assert!(
        !store
            .consume_code("000-000-000", "s-1", 2_000)
            .await
            .expect("unknown")
    );
    assert_eq!(store.get_code("000-000-000").await.expect("get"), None);
}

async fn case_codes_customer_name(store: Store) {
    const CODE: &str = "222-333-444";
    store
        .create_code(&code(CODE, 1_000, 10_000), &ev("code.created"))
        .await
        .expect("create");
    let set = |name: &'static str, now| {
        let store = store.clone();
        async move {
            store
                .set_code_customer_name(CODE, name, now)
                .await
                .expect("set name")
        }
    };
    let stored = || {
        let store = store.clone();
        async move {
            let c = store.get_code(CODE).await.expect("get").expect("some");
            c.customer_name
        }
    };
    assert!(set("Dana", 2_000).await);
    assert!(set("Dana Smith", 2_100).await, "the newest name wins");
    assert_eq!(stored().await.as_deref(), Some("Dana Smith"));
    // Expired, unknown and consumed codes keep what they had.
    assert!(!set("Mallory", 10_000).await);
    assert!(
        !store
            .set_code_customer_name("000-000-000", "X", 2_000)
            .await
            .expect("unknown")
    );
    assert!(
        store
            .consume_code(CODE, "s-1", 3_000)
            .await
            .expect("consume")
    );
    assert!(!set("Mallory", 3_100).await);
    assert_eq!(stored().await.as_deref(), Some("Dana Smith"));
}

fn release(version: &str, channel: &str, created_at: i64) -> Release {
    Release {
        version: version.to_owned(),
        channel: channel.to_owned(),
        manifest: format!("{{\"version\":\"{version}\"}}"),
        signature: "c2ln".to_owned(),
        notes: format!("notes of {version}"),
        rollout_percent: 100,
        created_by: "admin".to_owned(),
        created_at,
    }
}

async fn case_releases_and_update_state(store: Store) {
    let a = release("1.2.0", "stable", 1_000);
    let b = release("1.3.0-beta.1", "beta", 2_000);
    store
        .create_release(&a, &ev("release.published"))
        .await
        .expect("a");
    store
        .create_release(&b, &ev("release.published"))
        .await
        .expect("b");
    let err = store
        .create_release(&release("1.2.0", "stable", 3_000), &ev("release.published"))
        .await
        .expect_err("duplicate");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(
        store.list_releases().await.expect("list"),
        [b.clone(), a.clone()]
    );
    assert_eq!(store.get_release("1.2.0").await.expect("get"), a);
    let staged = store
        .set_release_rollout("1.2.0", 25, &ev("release.rollout_changed"), 4_000)
        .await
        .expect("rollout");
    assert_eq!(staged.rollout_percent, 25);
    assert!(matches!(
        store.get_release("9.9.9").await,
        Err(StoreError::NotFound)
    ));
    store
        .delete_release("1.3.0-beta.1", &ev("release.deleted"), 5_000)
        .await
        .expect("delete");
    assert!(matches!(
        store
            .delete_release("1.3.0-beta.1", &ev("release.deleted"), 5_001)
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.list_releases().await.expect("list"), [staged]);
    // Audit events went in with each change: published twice, rollout, delete.
    for (kind, n) in [
        ("release.published", 2),
        ("release.rollout_changed", 1),
        ("release.deleted", 1),
    ] {
        assert_eq!(code_events(&store, kind).await, n, "{kind}");
    }

    // A machine's update state round-trips as JSON; a site's channel is set and cleared.
    store
        .upsert_machine(&machine("a-1", None, "host", 1_000))
        .await
        .expect("machine");
    let status = json!({ "state": "done", "version": "1.2.0" });
    assert!(
        store
            .set_machine_update_status("a-1", &status)
            .await
            .expect("status")
    );
    assert!(
        !store
            .set_machine_update_status("nope", &status)
            .await
            .expect("unknown")
    );
    let m = store.get_machine("a-1").await.expect("get");
    assert_eq!(m.update_status, Some(status));
    store
        .create_site(&site("s-1", T, "Main", "MAIN"), &ev("site.created"))
        .await
        .expect("site");
    assert_eq!(store.site_update_channel("s-1").await.expect("site"), None);
    store
        .set_site_update_channel("s-1", Some("beta"), &ev("site.channel"), 6_000)
        .await
        .expect("set");
    assert_eq!(
        store
            .site_update_channel("s-1")
            .await
            .expect("site")
            .as_deref(),
        Some("beta")
    );
    let all = store.site_update_channels(T).await.expect("all");
    assert_eq!(all.get("s-1").map(String::as_str), Some("beta"));
    assert_eq!(all.len(), 1);
    assert!(
        store
            .site_update_channels("other")
            .await
            .expect("other")
            .is_empty()
    );
    store
        .set_site_update_channel("s-1", None, &ev("site.channel"), 6_001)
        .await
        .expect("clear");
    assert_eq!(store.site_update_channel("s-1").await.expect("site"), None);
    assert!(matches!(
        store.site_update_channel("s-9").await,
        Err(StoreError::NotFound)
    ));
}

async fn case_codes_expired_and_cancelled(store: Store) {
    store
        .create_code(&code("111-111-111", 1_000, 5_000), &ev("code.created"))
        .await
        .expect("create");
    // Exactly at expiry it is no longer consumable.
    assert!(
        !store
            .consume_code("111-111-111", "s-1", 5_000)
            .await
            .expect("expired")
    );
    assert!(
        store
            .consume_code("111-111-111", "s-1", 4_999)
            .await
            .expect("just in time")
    );

    store
        .create_code(&code("222-222-222", 1_000, 5_000), &ev("code.created"))
        .await
        .expect("create");
    assert!(
        store
            .cancel_code("222-222-222", &ev("code.cancelled"), 2_000)
            .await
            .expect("cancel")
    );
    assert!(
        !store
            .cancel_code("222-222-222", &ev("code.cancelled"), 2_001)
            .await
            .expect("cancel again")
    );
    assert!(
        !store
            .consume_code("222-222-222", "s-2", 2_500)
            .await
            .expect("cancelled")
    );
    let got = store
        .get_code("222-222-222")
        .await
        .expect("get")
        .expect("some");
    assert_eq!(got.status, CodeStatus::Cancelled);
    assert_eq!(got.session_id, None);
}

async fn case_codes_consume_race(store: Store) {
    for round in 0..3 {
        let c = format!("900-000-00{round}");
        store
            .create_code(&code(&c, 1_000, 100_000), &ev("code.created"))
            .await
            .expect("create");
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let c = c.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .consume_code(&c, &format!("s-{i}"), 2_000)
                    .await
                    .expect("consume")
            }));
        }
        let mut wins = 0;
        for t in tasks {
            if t.await.expect("join") {
                wins += 1;
            }
        }
        assert_eq!(wins, 1, "exactly one consumer wins");
        let got = store.get_code(&c).await.expect("get").expect("some");
        assert_eq!(got.status, CodeStatus::Consumed);
        assert!(got.session_id.is_some());
    }
}

async fn case_codes_list_and_end(store: Store) {
    store
        .create_code(&code("100-000-001", 1_000, 9_000), &ev("code.created"))
        .await
        .expect("create");
    store
        .create_code(&code("100-000-002", 2_000, 9_000), &ev("code.created"))
        .await
        .expect("create");
    store
        .create_code(&code("100-000-003", 3_000, 9_000), &ev("code.created"))
        .await
        .expect("create");
    // Pending but expired: still listed (the caller filters expiry).
    store
        .create_code(&code("100-000-004", 500, 600), &ev("code.created"))
        .await
        .expect("create");
    let mut other = code("100-000-005", 4_000, 9_000);
    other.tenant_id = "other".to_owned();
    store
        .create_code(&other, &ev("code.created"))
        .await
        .expect("create other");

    assert!(
        store
            .consume_code("100-000-002", "s-2", 2_500)
            .await
            .expect("consume")
    );
    assert!(
        store
            .cancel_code("100-000-003", &ev("code.cancelled"), 3_500)
            .await
            .expect("cancel")
    );

    let pending: Vec<String> = store
        .list_pending_codes(T)
        .await
        .expect("list")
        .into_iter()
        .map(|c| c.code)
        .collect();
    assert_eq!(pending, ["100-000-001", "100-000-004"]);
    let (all, total) = store.list_codes_page(T, 100, 0).await.expect("list");
    assert_eq!(total, 4);
    let all: Vec<String> = all.into_iter().map(|c| c.code).collect();
    assert_eq!(
        all,
        ["100-000-003", "100-000-002", "100-000-001", "100-000-004"]
    );

    assert!(store.end_code("100-000-002").await.expect("end"));
    assert!(!store.end_code("100-000-002").await.expect("end again"));
    assert!(!store.end_code("100-000-001").await.expect("end pending"));
    assert_eq!(
        store
            .get_code("100-000-002")
            .await
            .expect("get")
            .expect("some")
            .status,
        CodeStatus::Ended
    );
}

async fn case_codes_pagination(store: Store) {
    for i in 0..5 {
        store
            .create_code(
                &code(&format!("300-000-00{i}"), 1_000 + i, 9_000),
                &ev("code.created"),
            )
            .await
            .expect("create");
    }
    let mut other = code("300-000-009", 5_000, 9_000);
    other.tenant_id = "other".to_owned();
    store
        .create_code(&other, &ev("code.created"))
        .await
        .expect("create other");

    let page = |limit, offset| {
        let store = store.clone();
        async move {
            let (items, total) = store.list_codes_page(T, limit, offset).await.expect("page");
            (items.into_iter().map(|c| c.code).collect::<Vec<_>>(), total)
        }
    };
    assert_eq!(
        page(2, 0).await,
        (vec!["300-000-004".to_owned(), "300-000-003".to_owned()], 5)
    );
    assert_eq!(
        page(2, 2).await,
        (vec!["300-000-002".to_owned(), "300-000-001".to_owned()], 5)
    );
    assert_eq!(page(2, 4).await, (vec!["300-000-000".to_owned()], 5));
    assert_eq!(page(2, 10).await, (Vec::<String>::new(), 5));
}

async fn code_events(store: &Store, event_type: &str) -> usize {
    let mut f = filter();
    f.event_type = Some(event_type.to_owned());
    store.list_events(&f).await.expect("events").len()
}

/// A code and its audit event commit together: a refused change records no event, and
/// every stored change has one.
async fn case_codes_audit_in_same_transaction(store: Store) {
    store
        .create_code(&code("600-000-001", 1_000, 9_000), &ev("code.created"))
        .await
        .expect("create");
    assert_eq!(code_events(&store, "code.created").await, 1);
    // The same code again: refused, and its event is rolled back with it.
    let err = store
        .create_code(&code("600-000-001", 1_000, 9_000), &ev("code.created"))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(err, StoreError::Conflict("code exists")),
        "{err:?}"
    );
    assert_eq!(code_events(&store, "code.created").await, 1);

    assert!(
        store
            .cancel_code("600-000-001", &ev("code.cancelled"), 2_000)
            .await
            .expect("cancel")
    );
    assert_eq!(code_events(&store, "code.cancelled").await, 1);
    // No longer pending: nothing changes, nothing is recorded.
    assert!(
        !store
            .cancel_code("600-000-001", &ev("code.cancelled"), 2_001)
            .await
            .expect("cancel again")
    );
    assert!(
        !store
            .cancel_code("600-000-404", &ev("code.cancelled"), 2_002)
            .await
            .expect("cancel missing")
    );
    assert_eq!(code_events(&store, "code.cancelled").await, 1);
}

/// A user change and its event commit together; a refused change records none.
async fn case_users_audit_in_same_transaction(store: Store) {
    store
        .create_user(&new_user("u-a1", "Ann", "admin"), 10, &ev("user.created"))
        .await
        .expect("create");
    let err = store
        .create_user(&new_user("u-a2", "ann", "viewer"), 11, &ev("user.created"))
        .await
        .expect_err("duplicate name");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(code_events(&store, "user.created").await, 1);

    let patch = UserPatch {
        role: Some("technician".to_owned()),
        ..UserPatch::default()
    };
    store
        .create_user(&new_user("u-a3", "Ben", "viewer"), 12, &ev("user.created"))
        .await
        .expect("create ben");
    store
        .update_user("u-a3", &patch, 13, &ev("user.updated"))
        .await
        .expect("update");
    store
        .update_user("u-missing", &patch, 14, &ev("user.updated"))
        .await
        .expect_err("missing");
    assert_eq!(code_events(&store, "user.updated").await, 1);

    // The last admin cannot be demoted: refused, no event.
    store
        .change_user_keeping_an_admin("u-a1", Some(&patch), 15, &ev("user.demoted"))
        .await
        .expect_err("last admin");
    assert_eq!(code_events(&store, "user.demoted").await, 0);
    store
        .change_user_keeping_an_admin("u-a3", None, 16, &ev("user.deleted"))
        .await
        .expect("delete ben");
    store
        .change_user_keeping_an_admin("u-a3", None, 17, &ev("user.deleted"))
        .await
        .expect_err("already gone");
    assert_eq!(code_events(&store, "user.deleted").await, 1);
}

/// A site change and its event commit together; a refused change records none.
async fn case_sites_audit_in_same_transaction(store: Store) {
    let s = site("s-a1", T, "Audit", "AUD");
    store
        .create_site(&s, &ev("site.created"))
        .await
        .expect("create");
    store
        .create_site(&site("s-a2", T, "Again", "aud"), &ev("site.created"))
        .await
        .expect_err("code taken");
    assert_eq!(code_events(&store, "site.created").await, 1);
    store
        .rotate_site_key("s-a1", "h2", 2, "fp2", 20, &ev("site.key_rotated"))
        .await
        .expect("rotate");
    // Stale version: refused, no event.
    store
        .rotate_site_key("s-a1", "h3", 2, "fp3", 21, &ev("site.key_rotated"))
        .await
        .expect_err("stale");
    assert_eq!(code_events(&store, "site.key_rotated").await, 1);
}

/// A key change and its event commit together; a refused change records none.
async fn case_keys_audit_in_same_transaction(store: Store) {
    store
        .upsert_machine(&machine("m-a1", Some("uid-a1"), "pc-a1", 1))
        .await
        .expect("machine");
    store
        .create_agent_key(&agent_key("k-a1", "m-a1", "hash-a1", 2), &ev("key.issued"))
        .await
        .expect("key");
    store
        .create_agent_key(&agent_key("k-a2", "m-a1", "hash-a1", 3), &ev("key.issued"))
        .await
        .expect_err("same hash");
    assert_eq!(code_events(&store, "key.issued").await, 1);
    store
        .revoke_agent_key("m-a1", "k-a1", 4, &ev("key.revoked"))
        .await
        .expect("revoke");
    store
        .revoke_agent_key("m-other", "k-a1", 5, &ev("key.revoked"))
        .await
        .expect_err("not this machine's key");
    assert_eq!(code_events(&store, "key.revoked").await, 1);
}

/// A machine change and its event commit together; a refused change records none.
async fn case_machines_audit_in_same_transaction(store: Store) {
    store
        .upsert_machine(&machine("m-b1", Some("uid-b1"), "pc-b1", 1))
        .await
        .expect("machine");
    let mut l = labels();
    l.company = some("Acme");
    store
        .update_machine_labels("m-b1", &l, 2, Some(&ev("machine.labels_changed")))
        .await
        .expect("labels");
    store
        .update_machine_labels("m-none", &l, 3, Some(&ev("machine.labels_changed")))
        .await
        .expect_err("missing");
    assert_eq!(code_events(&store, "machine.labels_changed").await, 1);
    store
        .set_machine_pending("m-b1", Some("collision"), 4, None)
        .await
        .expect("pending");
    store
        .set_machine_pending("m-b1", None, 5, Some(&ev("machine.approved")))
        .await
        .expect("approve");
    store
        .set_machine_pending("m-none", None, 6, Some(&ev("machine.approved")))
        .await
        .expect_err("missing");
    assert_eq!(code_events(&store, "machine.approved").await, 1);
    store
        .soft_delete_machine("m-b1", 7, &ev("machine.removed"))
        .await
        .expect("remove");
    store
        .soft_delete_machine("m-b1", 8, &ev("machine.removed"))
        .await
        .expect_err("already removed");
    assert_eq!(code_events(&store, "machine.removed").await, 1);
}

fn enrollment(new_machine: Option<NewMachine>, site_id: &str, key: AgentKey) -> Enrollment {
    let mut labels = labels();
    labels.company = some("Acme");
    labels.site = some("North");
    labels.tags = Some(vec!["kiosk".to_owned()]);
    let mut event = ev("machine.enrolled");
    event.agent_id = Some(key.agent_id.clone());
    event.details = json!({ "key_id": key.id });
    Enrollment {
        new_machine,
        site_id: site_id.to_owned(),
        labels,
        key,
        event,
    }
}

fn revoked_event(key: &AgentKey) -> NewEvent {
    let mut e = ev("key.revoked");
    e.agent_id = Some(key.agent_id.clone());
    e.details = json!({ "key_id": key.id });
    e
}

/// Number of events stored (at most 100).
async fn event_count(store: &Store) -> usize {
    store.list_events(&filter()).await.expect("events").len()
}

/// `key_id`s in the details of the events of `event_type`, oldest first.
async fn event_key_ids(store: &Store, event_type: &str) -> Vec<String> {
    let mut f = filter();
    f.event_type = Some(event_type.to_owned());
    let mut ids: Vec<String> = store
        .list_events(&f)
        .await
        .expect("events")
        .into_iter()
        .map(|e| {
            e.event.details["key_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    ids.reverse();
    ids
}

/// Enrollment writes the machine, its site and labels, the revocation of its earlier
/// keys and its new key with their events in one transaction: a refused enrollment
/// leaves nothing behind.
async fn case_enroll_in_one_transaction(store: Store) {
    store
        .create_site(&site("s-e1", T, "North", "NORTH"), &ev("site.created"))
        .await
        .expect("site");
    store
        .create_site(&site("s-e2", T, "South", "SOUTH"), &ev("site.created"))
        .await
        .expect("site");
    let mut fresh = new_machine("m-e1", Some("uid-e1"), "pc-e1");
    fresh.site_id = Some("s-e1".to_owned());

    // A new machine: row, site, labels, key and event.
    let (m, revoked) = store
        .enroll(
            &enrollment(
                Some(fresh.clone()),
                "s-e1",
                agent_key("k-e1", "m-e1", "hash-e1", 10),
            ),
            revoked_event,
        )
        .await
        .expect("enroll");
    assert!(revoked.is_empty());
    assert_eq!(m.agent_id, "m-e1");
    assert_eq!(m.site_id.as_deref(), Some("s-e1"));
    assert_eq!(m.company.as_deref(), Some("Acme"));
    assert_eq!(m.tags, vec!["kiosk".to_owned()]);
    assert_eq!(store.get_machine("m-e1").await.expect("stored"), m);
    assert_eq!(found(&store, "company:acme").await, vec!["m-e1".to_owned()]);
    let keys = store.list_agent_keys("m-e1").await.expect("keys");
    assert_eq!(keys, vec![agent_key("k-e1", "m-e1", "hash-e1", 10)]);
    assert_eq!(
        event_key_ids(&store, "machine.enrolled").await,
        vec!["k-e1"]
    );
    assert!(event_key_ids(&store, "key.revoked").await.is_empty());

    // Re-enrollment into another site: every unrevoked key is revoked with its event;
    // an already revoked key keeps its time and gets none.
    store
        .create_agent_key(&agent_key("k-e0", "m-e1", "hash-e0", 11), &ev("key.issued"))
        .await
        .expect("issue");
    store
        .create_agent_key(
            &agent_key("k-old", "m-e1", "hash-old", 12),
            &ev("key.issued"),
        )
        .await
        .expect("issue");
    store
        .revoke_agent_key("m-e1", "k-old", 13, &ev("key.revoked"))
        .await
        .expect("revoke");
    let (m, revoked) = store
        .enroll(
            &enrollment(None, "s-e2", agent_key("k-e2", "m-e1", "hash-e2", 20)),
            revoked_event,
        )
        .await
        .expect("re-enroll");
    assert_eq!(m.site_id.as_deref(), Some("s-e2"));
    let mut revoked_ids: Vec<&str> = revoked.iter().map(|k| k.id.as_str()).collect();
    revoked_ids.sort_unstable();
    assert_eq!(revoked_ids, vec!["k-e0", "k-e1"]);
    assert!(revoked.iter().all(|k| k.revoked_at == Some(20)));
    let keys = store.list_agent_keys("m-e1").await.expect("keys");
    let state: Vec<(&str, Option<i64>)> =
        keys.iter().map(|k| (k.id.as_str(), k.revoked_at)).collect();
    assert_eq!(
        state,
        vec![
            ("k-e2", None),
            ("k-old", Some(13)),
            ("k-e0", Some(20)),
            ("k-e1", Some(20))
        ]
    );
    let mut revoked_events = event_key_ids(&store, "key.revoked").await;
    revoked_events.sort_unstable();
    // The first one is k-old's, recorded by revoke_agent_key without details.
    assert_eq!(revoked_events, vec!["", "k-e0", "k-e1"]);
    assert_eq!(
        event_key_ids(&store, "machine.enrolled").await,
        vec!["k-e1", "k-e2"]
    );
    let enrolled_at: Vec<i64> = {
        let mut f = filter();
        f.event_type = Some("machine.enrolled".to_owned());
        store
            .list_events(&f)
            .await
            .expect("events")
            .iter()
            .map(|e| e.created_at)
            .collect()
    };
    assert_eq!(enrolled_at, vec![20, 10]);

    // Refused enrollments store nothing: not the machine, not a revocation, no event.
    let events_before = event_count(&store).await;
    let mut other = new_machine("m-e3", Some("uid-e3"), "pc-e3");
    other.site_id = Some("s-e1".to_owned());
    let err = store
        .enroll(
            &enrollment(
                Some(other.clone()),
                "s-e1",
                agent_key("k-e3", "m-e3", "hash-e2", 30),
            ),
            revoked_event,
        )
        .await
        .expect_err("key hash taken");
    assert!(matches!(err, StoreError::Conflict("key exists")), "{err:?}");
    assert!(matches!(
        store.get_machine("m-e3").await,
        Err(StoreError::NotFound)
    ));
    let err = store
        .enroll(
            &enrollment(None, "s-e1", agent_key("k-e4", "m-e1", "hash-e2", 31)),
            revoked_event,
        )
        .await
        .expect_err("key hash taken");
    assert!(matches!(err, StoreError::Conflict("key exists")), "{err:?}");
    let keys = store.list_agent_keys("m-e1").await.expect("keys");
    assert_eq!(keys[0].id, "k-e2");
    assert_eq!(
        keys[0].revoked_at, None,
        "the refused re-enrollment revoked nothing"
    );
    let m = store.get_machine("m-e1").await.expect("machine");
    assert_eq!(m.site_id.as_deref(), Some("s-e2"), "nor moved the machine");
    let mut taken = new_machine("m-e5", Some("uid-e1"), "pc-e5");
    taken.site_id = Some("s-e1".to_owned());
    let err = store
        .enroll(
            &enrollment(
                Some(taken),
                "s-e1",
                agent_key("k-e5", "m-e5", "hash-e5", 32),
            ),
            revoked_event,
        )
        .await
        .expect_err("uid taken");
    assert!(
        matches!(err, StoreError::Conflict("machine uid taken")),
        "{err:?}"
    );
    let err = store
        .enroll(
            &enrollment(
                Some(fresh),
                "s-e1",
                agent_key("k-e6", "m-e1", "hash-e6", 33),
            ),
            revoked_event,
        )
        .await
        .expect_err("agent id taken");
    assert!(
        matches!(err, StoreError::Conflict("machine exists")),
        "{err:?}"
    );
    let err = store
        .enroll(
            &enrollment(
                Some(new_machine("m-e7", Some("uid-e7"), "pc-e7")),
                "s-none",
                agent_key("k-e7", "m-e7", "hash-e7", 34),
            ),
            revoked_event,
        )
        .await
        .expect_err("no such site");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert!(matches!(
        store.get_machine("m-e7").await,
        Err(StoreError::NotFound)
    ));
    let err = store
        .enroll(
            &enrollment(None, "s-e1", agent_key("k-e8", "m-none", "hash-e8", 35)),
            revoked_event,
        )
        .await
        .expect_err("no such machine");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(event_count(&store).await, events_before);
    for (agent, key) in [
        ("m-e3", "k-e3"),
        ("m-e1", "k-e4"),
        ("m-e5", "k-e5"),
        ("m-e1", "k-e6"),
        ("m-e7", "k-e7"),
        ("m-none", "k-e8"),
    ] {
        assert!(
            !store
                .list_agent_keys(agent)
                .await
                .expect("keys")
                .iter()
                .any(|k| k.id == key),
            "key {key} stored by a refused enrollment"
        );
    }
    assert_eq!(
        store.list_agent_keys("m-e1").await.expect("keys").len(),
        4,
        "k-e2, k-old, k-e0, k-e1"
    );
}

/// A session change and its event commit together; a refused change records none.
async fn case_sessions_audit_in_same_transaction(store: Store) {
    store
        .upsert_machine(&machine("m-c1", Some("uid-c1"), "pc-c1", 1))
        .await
        .expect("machine");
    store
        .create_session(
            &session("s-c1", "m-c1", SessionStatus::Active, 2),
            &ev("session.created"),
        )
        .await
        .expect("session");
    store
        .create_session(
            &session("s-c1", "m-c1", SessionStatus::Active, 3),
            &ev("session.created"),
        )
        .await
        .expect_err("same id");
    assert_eq!(code_events(&store, "session.created").await, 1);
    assert!(
        store
            .end_session("s-c1", "bye", 4, Some(&ev("session.ended")))
            .await
            .expect("end")
    );
    assert_eq!(code_events(&store, "session.ended").await, 1);
    store
        .soft_delete_session("s-c1", 5, &ev("session.removed"))
        .await
        .expect("remove");
    store
        .soft_delete_session("s-c1", 6, &ev("session.removed"))
        .await
        .expect_err("already removed");
    assert_eq!(code_events(&store, "session.removed").await, 1);
}

async fn case_codes_prune(store: Store) {
    // (code, expires_at, what happens to it)
    store
        .create_code(&code("400-000-001", 1_000, 2_000), &ev("code.created"))
        .await
        .expect("create");
    store
        .create_code(&code("400-000-002", 1_000, 2_000), &ev("code.created"))
        .await
        .expect("create");
    store
        .create_code(&code("400-000-003", 1_000, 2_000), &ev("code.created"))
        .await
        .expect("create");
    store
        .create_code(&code("400-000-004", 1_000, 2_000), &ev("code.created"))
        .await
        .expect("create");
    store
        .create_code(&code("400-000-005", 1_000, 2_000), &ev("code.created"))
        .await
        .expect("create");
    store
        .create_code(&code("400-000-006", 1_000, 9_000), &ev("code.created"))
        .await
        .expect("create");
    // 001 stays pending (expired), 002 is cancelled, 003 is consumed and its session ended
    // (code ended), 004 is consumed by a session that is still open, 005 is consumed by a
    // session that was ended without ending the code (a crash), 006 expires later.
    assert!(
        store
            .cancel_code("400-000-002", &ev("code.cancelled"), 1_500)
            .await
            .expect("cancel")
    );
    for (c, sid) in [
        ("400-000-003", "s-3"),
        ("400-000-004", "s-4"),
        ("400-000-005", "s-5"),
    ] {
        assert!(store.consume_code(c, sid, 1_500).await.expect("consume"));
        let mut s = session(sid, "a-1", SessionStatus::WaitingConsent, 1_500);
        s.kind = SessionKind::Attended;
        s.code = Some(c.to_owned());
        store
            .create_session(&s, &ev("session.created"))
            .await
            .expect("session");
    }
    assert!(
        store
            .end_session("s-3", "done", 1_600, None)
            .await
            .expect("end")
    );
    assert!(store.end_code("400-000-003").await.expect("end code"));
    assert!(
        store
            .end_session("s-5", "crash", 1_600, None)
            .await
            .expect("end")
    );

    // Nothing has been expired for the retention period yet.
    assert_eq!(store.prune_codes(1_999).await.expect("prune"), 0);
    assert_eq!(store.list_codes_page(T, 100, 0).await.expect("list").1, 6);

    // Cut-off past their expiry: all finished ones go, the live one and 006 stay.
    assert_eq!(store.prune_codes(2_000).await.expect("prune"), 4);
    let (left, total) = store.list_codes_page(T, 100, 0).await.expect("list");
    let mut left: Vec<String> = left.into_iter().map(|c| c.code).collect();
    left.sort();
    assert_eq!(left, ["400-000-004", "400-000-006"]);
    assert_eq!(total, 2);
    assert!(store.get_code("400-000-001").await.expect("get").is_none());

    // Once its session ends, the consumed code goes too; 006 only after its own expiry.
    assert!(
        store
            .end_session("s-4", "done", 3_000, None)
            .await
            .expect("end")
    );
    assert_eq!(store.prune_codes(8_999).await.expect("prune"), 1);
    assert_eq!(store.prune_codes(9_000).await.expect("prune"), 1);
    assert_eq!(store.list_codes_page(T, 100, 0).await.expect("list").1, 0);
}

// ---------------------------------------------------------------- sessions

async fn case_sessions(store: Store) {
    let mut s1 = session("s-1", "a-1", SessionStatus::WaitingConsent, 1_000);
    s1.kind = SessionKind::Attended;
    s1.code = Some("123-456-789".to_owned());
    store
        .create_session(&s1, &ev("session.created"))
        .await
        .expect("create");
    store
        .create_session(
            &session("s-2", "a-2", SessionStatus::Active, 2_000),
            &ev("session.created"),
        )
        .await
        .expect("create");
    store
        .create_session(
            &session("s-3", "a-1", SessionStatus::Active, 3_000),
            &ev("session.created"),
        )
        .await
        .expect("create");
    let mut other = session("s-9", "a-9", SessionStatus::Active, 3_500);
    other.tenant_id = "other".to_owned();
    store
        .create_session(&other, &ev("session.created"))
        .await
        .expect("create other");
    assert_eq!(store.get_session("s-1").await.expect("get"), s1);
    let err = store
        .create_session(&s1, &ev("session.created"))
        .await
        .expect_err("dup");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");

    store
        .set_session_status("s-1", SessionStatus::Active)
        .await
        .expect("status");
    assert_eq!(
        store.get_session("s-1").await.expect("get").status,
        SessionStatus::Active
    );
    assert!(matches!(
        store
            .set_session_status("nope", SessionStatus::Active)
            .await,
        Err(StoreError::NotFound)
    ));

    assert!(
        store
            .end_session("s-2", "viewer_closed", 4_000, None)
            .await
            .expect("end")
    );
    assert!(
        !store
            .end_session("s-2", "again", 5_000, None)
            .await
            .expect("end again")
    );
    let s2 = store.get_session("s-2").await.expect("get");
    assert_eq!(s2.status, SessionStatus::Ended);
    assert_eq!(s2.ended_at, Some(4_000));
    assert_eq!(s2.end_reason.as_deref(), Some("viewer_closed"));

    let list_ids = |only_open: bool, limit: i64| {
        let store = store.clone();
        async move {
            store
                .list_sessions(T, only_open, limit)
                .await
                .expect("list")
                .into_iter()
                .map(|s| s.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list_ids(false, 50).await, ["s-3", "s-2", "s-1"]);
    assert_eq!(list_ids(true, 50).await, ["s-3", "s-1"]);
    assert_eq!(list_ids(false, 2).await, ["s-3", "s-2"]);

    store
        .soft_delete_session("s-3", 5_000, &ev("session.removed"))
        .await
        .expect("delete");
    assert!(matches!(
        store.get_session("s-3").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .soft_delete_session("s-3", 5_001, &ev("session.removed"))
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(list_ids(false, 50).await, ["s-2", "s-1"]);

    // Server start: everything still open is ended (all tenants).
    assert_eq!(
        store
            .end_open_sessions("server_restart", 6_000)
            .await
            .expect("end open"),
        3 // s-1, s-3 (deleted but open), s-9
    );
    let s1 = store.get_session("s-1").await.expect("get");
    assert_eq!(s1.status, SessionStatus::Ended);
    assert_eq!(s1.ended_at, Some(6_000));
    assert_eq!(s1.end_reason.as_deref(), Some("server_restart"));
    let s2 = store.get_session("s-2").await.expect("get");
    assert_eq!(s2.end_reason.as_deref(), Some("viewer_closed"), "kept");
    assert_eq!(list_ids(true, 50).await, Vec::<String>::new());
    assert_eq!(
        store
            .end_open_sessions("server_restart", 7_000)
            .await
            .expect("again"),
        0
    );
}

// ---------------------------------------------------------------- SQL details

/// Statements bind `$N` out of textual order (`SET revoked_at = $2 WHERE jti = $1`,
/// `consumed_at = $3, session_id = $2 WHERE code = $1 … expires_at > $3`): the values
/// must land in the right places on both backends.
async fn case_out_of_order_binding(store: Store) {
    store
        .record_token(&token("jti-a", "u-1", TokenKind::Login, None, 9_000))
        .await
        .expect("record");
    store
        .record_token(&token("jti-b", "u-1", TokenKind::Login, None, 9_000))
        .await
        .expect("record");
    assert!(store.revoke_token("jti-b", 4_242).await.expect("revoke"));
    assert_eq!(
        store
            .get_token("jti-b")
            .await
            .expect("get")
            .expect("some")
            .revoked_at,
        Some(4_242)
    );
    assert_eq!(
        store
            .get_token("jti-a")
            .await
            .expect("get")
            .expect("some")
            .revoked_at,
        None
    );

    store
        .create_code(&code("321-321-321", 1_000, 8_000), &ev("code.created"))
        .await
        .expect("create");
    assert!(
        store
            .consume_code("321-321-321", "sess-x", 7_777)
            .await
            .expect("consume")
    );
    let c = store
        .get_code("321-321-321")
        .await
        .expect("get")
        .expect("some");
    assert_eq!(c.consumed_at, Some(7_777));
    assert_eq!(c.session_id.as_deref(), Some("sess-x"));

    // `$1` used in two places, `$2`/`$3` bound after it.
    assert!(
        store
            .end_session("missing", "r", 1, None)
            .await
            .is_ok_and(|changed| !changed)
    );
    store
        .create_session(
            &session("s-o", "a-1", SessionStatus::Active, 1),
            &ev("session.created"),
        )
        .await
        .expect("create");
    assert!(
        store
            .end_session("s-o", "why", 99, None)
            .await
            .expect("end")
    );
    let s = store.get_session("s-o").await.expect("get");
    assert_eq!(
        (s.ended_at, s.end_reason.as_deref()),
        (Some(99), Some("why"))
    );
}

async fn case_errors_map(store: Store) {
    let err = store.get_user("missing").await.expect_err("missing user");
    assert!(matches!(err, StoreError::NotFound), "{err:?}");
    assert_eq!(err.to_string(), "not found");
    assert!(matches!(
        store.get_machine("missing").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.get_session("missing").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.delete_user("missing").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store
            .revoke_agent_key("a", "k", 1, &ev("key.revoked"))
            .await,
        Err(StoreError::NotFound)
    ));
    // Display never leaks SQL or driver text.
    store
        .create_user(&new_user("u-1", "x", "admin"), 1, &ev("user.created"))
        .await
        .expect("create");
    let err = store
        .create_user(&new_user("u-2", "X", "admin"), 1, &ev("user.created"))
        .await
        .expect_err("conflict");
    let shown = err.to_string();
    assert!(
        !shown.contains("INSERT") && !shown.contains("users"),
        "{shown}"
    );
}

/// A NUL byte in a string is the caller's mistake, never "database unavailable":
/// PostgreSQL refuses it with SQLSTATE 22021 (whose number, read as a SQLite code, would
/// be BUSY), SQLite stores it.
async fn case_nul_byte_is_not_transient(store: Store) {
    let outcomes = [
        store.find_user_by_username(T, "ad\0min").await.map(|_| ()),
        store
            .create_user(
                &new_user("u-nul", "nul\0name", "admin"),
                1,
                &ev("user.created"),
            )
            .await
            .map(|_| ()),
        store
            .create_code(&code("500-000-X\0Y", 1_000, 9_000), &ev("code.created"))
            .await,
    ];
    for outcome in outcomes {
        match outcome {
            Ok(()) => assert_eq!(store.backend(), Backend::Sqlite, "PostgreSQL took a NUL"),
            Err(StoreError::Invalid(_)) => {
                assert_eq!(store.backend(), Backend::Postgres, "SQLite refused a NUL");
            }
            Err(other) => panic!("a NUL byte must be an invalid value, got {other:?}"),
        }
    }
    store.ping().await.expect("the store is still usable");
}

// ---------------------------------------------------------------- backend specifics

#[tokio::test]
async fn sqlite_open_creates_dir_reopens_and_uses_wal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let nested = dir.path().join("data dir?#1").join("nested");
    {
        let store = Store::open_sqlite_in(&nested).await.expect("open");
        store
            .create_user(&new_user("u-1", "keep", "admin"), 1, &ev("user.created"))
            .await
            .expect("create");
        assert!(nested.join("guruconnect.db").exists());
        assert!(
            nested.join("guruconnect.db-wal").exists(),
            "journal_mode=WAL"
        );
        store.close().await;
    }
    // Re-opening re-runs migrations idempotently and keeps data.
    let store = Store::open_sqlite_in(&nested).await.expect("reopen");
    assert_eq!(store.get_user("u-1").await.expect("get").username, "keep");
}

#[tokio::test]
async fn sqlite_connect_by_url() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("x.db").to_str().expect("utf-8 temp path")
    );
    let store = Store::connect(&url).await.expect("connect");
    assert_eq!(store.backend(), Backend::Sqlite);
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn unsupported_scheme_is_an_error() {
    assert!(Store::connect("mysql://localhost/x").await.is_err());
}

#[tokio::test]
async fn unreachable_postgres_fails_fast_as_unavailable() {
    let started = Instant::now();
    // Port 1 on localhost: connection refused.
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        Store::connect("postgres://postgres@127.0.0.1:1/none"),
    )
    .await
    .expect("connect must not hang");
    let err = result.expect_err("must fail");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    assert_eq!(err.to_string(), "database unavailable");
    assert!(started.elapsed() < Duration::from_secs(15));
}

/// Raw sqlx check of the `$N` convention on both backends, independent of `Store`.
async fn raw_out_of_order(url: &str) {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("pool");
    sqlx::query("CREATE TABLE bind_check (id TEXT PRIMARY KEY, a BIGINT, b TEXT)")
        .execute(&pool)
        .await
        .expect("create");
    for id in ["x", "y"] {
        sqlx::query("INSERT INTO bind_check (id, a, b) VALUES ($1, 0, 'none')")
            .bind(id)
            .execute(&pool)
            .await
            .expect("insert");
    }
    let res = sqlx::query("UPDATE bind_check SET b = $3, a = $2 WHERE id = $1")
        .bind("y")
        .bind(42_i64)
        .bind("set")
        .execute(&pool)
        .await
        .expect("update");
    assert_eq!(res.rows_affected(), 1);
    let row = sqlx::query("SELECT a, b FROM bind_check WHERE id = $1 AND $2 > a")
        .bind("y")
        .bind(100_i64)
        .fetch_one(&pool)
        .await
        .expect("select");
    assert_eq!(row.try_get::<i64, _>("a").expect("a"), 42);
    assert_eq!(row.try_get::<String, _>("b").expect("b"), "set");
    let row = sqlx::query("SELECT a FROM bind_check WHERE id = $2 OR b = $1")
        .bind("nomatch")
        .bind("x")
        .fetch_one(&pool)
        .await
        .expect("select x");
    assert_eq!(row.try_get::<i64, _>("a").expect("a"), 0);
    pool.close().await;
}

#[tokio::test]
async fn sqlite_raw_out_of_order_binding() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_sqlite_in(dir.path()).await.expect("open");
    store.close().await;
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path()
            .join("guruconnect.db")
            .to_str()
            .expect("utf-8 temp path")
    );
    raw_out_of_order(&url).await;
}

#[tokio::test]
async fn postgres_raw_out_of_order_binding() {
    let Some(url) = test_database_url().await else {
        eprintln!(
            "skipped postgres_raw_out_of_order_binding: GURUCONNECT_TEST_DATABASE_URL not set"
        );
        return;
    };
    raw_out_of_order(&url).await;
}

/// A stored state name no enum knows (written by a newer binary, or by hand) makes the
/// read fail with an internal error instead of a panic.
async fn raw_unknown_states(store: Store, url: &str) {
    store
        .create_session(
            &session("s-x", "a-x", SessionStatus::Active, 1),
            &ev("session.created"),
        )
        .await
        .expect("session");
    store
        .create_code(&code("111-222-333", 1, 10), &ev("code.created"))
        .await
        .expect("code");
    store
        .upsert_machine(&machine("a-x", None, "host", 1))
        .await
        .expect("machine");
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("pool");
    let raw = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query(sql).execute(&pool).await.expect(sql) }
    };
    raw("UPDATE sessions SET kind = 'robot' WHERE id = 's-x'").await;
    assert!(matches!(
        store.get_session("s-x").await,
        Err(StoreError::Internal(_))
    ));
    raw("UPDATE sessions SET kind = 'managed', status = 'paused' WHERE id = 's-x'").await;
    assert!(matches!(
        store.get_session("s-x").await,
        Err(StoreError::Internal(_))
    ));
    assert!(matches!(
        store.open_sessions().await,
        Err(StoreError::Internal(_))
    ));
    raw("UPDATE support_codes SET status = 'lost'").await;
    assert!(matches!(
        store.get_code("111-222-333").await,
        Err(StoreError::Internal(_))
    ));
    raw("UPDATE machines SET status = 'retired'").await;
    assert!(matches!(
        store.get_machine("a-x").await,
        Err(StoreError::Internal(_))
    ));
    pool.close().await;
}

#[tokio::test]
async fn sqlite_unknown_stored_states_are_errors() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open_sqlite_in(dir.path()).await.expect("open");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path()
            .join("guruconnect.db")
            .to_str()
            .expect("utf-8 temp path")
    );
    raw_unknown_states(store, &url).await;
}

#[tokio::test]
async fn postgres_unknown_stored_states_are_errors() {
    let Some(url) = test_database_url().await else {
        eprintln!(
            "skipped postgres_unknown_stored_states_are_errors: GURUCONNECT_TEST_DATABASE_URL not set"
        );
        return;
    };
    let store = Store::connect(&url).await.expect("connect");
    raw_unknown_states(store, &url).await;
}

/// Migrations land in the per-test schema and nowhere else.
#[tokio::test]
async fn postgres_schema_per_test_isolation() {
    use sqlx::Row;
    let (Some(url_a), Some(url_b)) = (test_database_url().await, test_database_url().await) else {
        eprintln!(
            "skipped postgres_schema_per_test_isolation: GURUCONNECT_TEST_DATABASE_URL not set"
        );
        return;
    };
    let schema_of = |url: &str| {
        url.rsplit("search_path%3D")
            .next()
            .expect("schema in url")
            .to_owned()
    };
    let (schema_a, schema_b) = (schema_of(&url_a), schema_of(&url_b));
    assert_ne!(schema_a, schema_b);

    let a = Store::connect(&url_a).await.expect("connect a");
    let b = Store::connect(&url_b).await.expect("connect b");
    a.create_user(&new_user("u-1", "same", "admin"), 1, &ev("user.created"))
        .await
        .expect("create in a");
    b.create_user(&new_user("u-1", "same", "admin"), 1, &ev("user.created"))
        .await
        .expect("same row in b does not collide");
    a.set_setting("k", "a").await.expect("set a");
    b.set_setting("k", "b").await.expect("set b");
    assert_eq!(a.get_setting("k").await.expect("get").as_deref(), Some("a"));
    assert_eq!(b.get_setting("k").await.expect("get").as_deref(), Some("b"));

    let base = std::env::var(guruconnect_store::testing::TEST_DATABASE_URL_VAR).expect("set");
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(&base)
        .await
        .expect("base pool");
    for schema in [&schema_a, &schema_b] {
        let n: i64 = sqlx::query(
            "SELECT COUNT(*) AS n FROM information_schema.tables WHERE table_schema = $1 \
             AND table_name IN ('users', 'issued_tokens', 'events', 'settings', 'machines', \
             'agent_keys', 'support_codes', 'sessions', '_sqlx_migrations')",
        )
        .bind(schema.as_str())
        .fetch_one(&pool)
        .await
        .expect("count tables")
        .try_get("n")
        .expect("n");
        assert_eq!(n, 9, "all tables in {schema}");
    }
}

// ---------------------------------------------------------------- fleet lifecycle

fn labels() -> MachineLabels {
    MachineLabels::default()
}

fn some(s: &str) -> Option<Option<String>> {
    Some(Some(s.to_owned()))
}

fn agent_ids(list: &[Machine]) -> Vec<&str> {
    list.iter().map(|m| m.agent_id.as_str()).collect()
}

fn search(query: &str) -> MachineSearch {
    MachineSearch {
        tenant_id: T.to_owned(),
        query: query.to_owned(),
        limit: 1000,
        offset: 0,
        online_ids: None,
    }
}

/// Agent ids matching `query` (all pages), in result order.
async fn found(store: &Store, query: &str) -> Vec<String> {
    let (list, total) = store.search_machines(&search(query)).await.expect("search");
    assert_eq!(total, list.len() as i64, "total of {query:?}");
    list.into_iter().map(|m| m.agent_id).collect()
}

fn new_machine(agent_id: &str, uid: Option<&str>, hostname: &str) -> NewMachine {
    NewMachine {
        agent_id: agent_id.to_owned(),
        tenant_id: T.to_owned(),
        machine_uid: uid.map(str::to_owned),
        hostname: hostname.to_owned(),
        os: "linux".to_owned(),
        os_version: "Debian 12".to_owned(),
        agent_version: "0.3.0".to_owned(),
        status: MachineStatus::Active,
        created_at: 5_000,
        ..NewMachine::default()
    }
}

fn site(id: &str, tenant: &str, name: &str, code: &str) -> Site {
    Site {
        id: id.to_owned(),
        tenant_id: tenant.to_owned(),
        name: name.to_owned(),
        code: code.to_owned(),
        key_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt${id}"),
        key_version: 1,
        key_fingerprint: "v1 (AB12)".to_owned(),
        created_at: 1_000,
        rotated_at: None,
    }
}

async fn case_machines_new_fields_defaults(store: Store) {
    let m = store
        .upsert_machine(&machine("a-1", Some("uid-1"), "host", 1_000))
        .await
        .expect("insert");
    assert_eq!(m.status, MachineStatus::Active);
    assert_eq!(m.pending_reason, None);
    assert_eq!(m.claimed_machine_uid, None);
    assert_eq!(m.site_id, None);
}

async fn case_machine_labels(store: Store) {
    store
        .upsert_machine(&machine("a-1", None, "host", 1_000))
        .await
        .expect("insert");
    let m = store
        .update_machine_labels(
            "a-1",
            &MachineLabels {
                company: some("Acme"),
                site: some("Main Office"),
                department: some("Finance"),
                device_type: some("laptop"),
                tags: Some(vec!["vip".to_owned(), "eu".to_owned()]),
                notes: some("Printer on the left.\nAsk for Dana."),
                update_channel: some("beta"),
            },
            2_000,
            None,
        )
        .await
        .expect("set all");
    assert_eq!(m.company.as_deref(), Some("Acme"));
    assert_eq!(m.site.as_deref(), Some("Main Office"));
    assert_eq!(m.department.as_deref(), Some("Finance"));
    assert_eq!(m.device_type.as_deref(), Some("laptop"));
    assert_eq!(m.tags, ["vip", "eu"]);
    assert_eq!(
        m.notes.as_deref(),
        Some("Printer on the left.\nAsk for Dana.")
    );
    assert_eq!(m.update_channel.as_deref(), Some("beta"));
    assert_eq!(store.get_machine("a-1").await.expect("get"), m);

    // None leaves, Some(None) clears.
    let m = store
        .update_machine_labels(
            "a-1",
            &MachineLabels {
                company: Some(None),
                department: some("IT"),
                ..labels()
            },
            3_000,
            None,
        )
        .await
        .expect("partial");
    assert_eq!(m.company, None);
    assert_eq!(m.site.as_deref(), Some("Main Office"));
    assert_eq!(m.department.as_deref(), Some("IT"));
    assert_eq!(m.device_type.as_deref(), Some("laptop"));
    assert_eq!(m.tags, ["vip", "eu"]);
    assert_eq!(
        m.notes.as_deref(),
        Some("Printer on the left.\nAsk for Dana.")
    );
    // Nothing to change is fine; an empty tag list clears tags.
    let same = store
        .update_machine_labels("a-1", &labels(), 3_100, None)
        .await
        .expect("noop");
    assert_eq!(same, m);
    let m = store
        .update_machine_labels(
            "a-1",
            &MachineLabels {
                tags: Some(vec![]),
                ..labels()
            },
            3_200,
            None,
        )
        .await
        .expect("clear tags");
    assert!(m.tags.is_empty());
    // Reported fields survive a reconnect; labels survive too.
    let m = store
        .upsert_machine(&machine("a-1", None, "host2", 4_000))
        .await
        .expect("reconnect");
    assert_eq!(m.site.as_deref(), Some("Main Office"));

    assert!(matches!(
        store
            .update_machine_labels("missing", &labels(), 1, None)
            .await,
        Err(StoreError::NotFound)
    ));
    store
        .soft_delete_machine("a-1", 5_000, &ev("machine.removed"))
        .await
        .expect("del");
    assert!(matches!(
        store
            .update_machine_labels(
                "a-1",
                &MachineLabels {
                    company: some("x"),
                    ..labels()
                },
                6_000,
                None
            )
            .await,
        Err(StoreError::NotFound)
    ));
}

async fn case_machine_pending_and_site(store: Store) {
    store
        .upsert_machine(&machine("a-1", None, "host", 1_000))
        .await
        .expect("insert");
    store
        .set_machine_pending("a-1", Some("machine_uid_collision"), 0, None)
        .await
        .expect("pending");
    let m = store.get_machine("a-1").await.expect("get");
    assert_eq!(m.status, MachineStatus::Pending);
    assert_eq!(m.pending_reason.as_deref(), Some("machine_uid_collision"));
    // A reconnect does not approve it.
    let m = store
        .upsert_machine(&machine("a-1", None, "host", 2_000))
        .await
        .expect("reconnect");
    assert_eq!(m.status, MachineStatus::Pending);
    store
        .set_machine_pending("a-1", None, 0, None)
        .await
        .expect("approve");
    let m = store.get_machine("a-1").await.expect("get");
    assert_eq!(m.status, MachineStatus::Active);
    assert_eq!(m.pending_reason, None);
    assert!(matches!(
        store
            .set_machine_pending("missing", Some("x"), 0, None)
            .await,
        Err(StoreError::NotFound)
    ));

    store
        .create_site(&site("s-1", T, "Main", "MAIN"), &ev("site.created"))
        .await
        .expect("site");
    store
        .create_site(
            &site("s-other", "other", "Other", "OTH"),
            &ev("site.created"),
        )
        .await
        .expect("site");
    store
        .set_machine_site("a-1", Some("s-1"))
        .await
        .expect("move");
    assert_eq!(
        store
            .get_machine("a-1")
            .await
            .expect("get")
            .site_id
            .as_deref(),
        Some("s-1")
    );
    assert!(matches!(
        store.set_machine_site("a-1", Some("s-other")).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_machine_site("a-1", Some("nope")).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store
            .get_machine("a-1")
            .await
            .expect("get")
            .site_id
            .as_deref(),
        Some("s-1"),
        "unchanged by failed moves"
    );
    store.set_machine_site("a-1", None).await.expect("clear");
    assert_eq!(store.get_machine("a-1").await.expect("get").site_id, None);
    assert!(matches!(
        store.set_machine_site("missing", None).await,
        Err(StoreError::NotFound)
    ));
    store
        .soft_delete_machine("a-1", 3_000, &ev("machine.removed"))
        .await
        .expect("del");
    assert!(matches!(
        store.set_machine_pending("a-1", None, 0, None).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.set_machine_site("a-1", Some("s-1")).await,
        Err(StoreError::NotFound)
    ));
}

async fn case_create_machine_and_collision_row(store: Store) {
    store
        .create_site(&site("s-1", T, "Main", "MAIN"), &ev("site.created"))
        .await
        .expect("site");
    let mut nm = new_machine("a-1", Some("uid-1"), "enrolled");
    nm.site_id = Some("s-1".to_owned());
    nm.company = Some("Acme".to_owned());
    nm.site = Some("HQ".to_owned());
    nm.department = Some("Ops".to_owned());
    nm.device_type = Some("server".to_owned());
    nm.tags = vec!["linux".to_owned(), "prod".to_owned()];
    nm.external_ip = Some("198.51.100.4".to_owned());
    nm.last_seen = Some(5_000);
    let m = store.create_machine(&nm).await.expect("create");
    assert_eq!(m.agent_id, "a-1");
    assert_eq!(m.machine_uid.as_deref(), Some("uid-1"));
    assert_eq!(m.site_id.as_deref(), Some("s-1"));
    assert_eq!(m.company.as_deref(), Some("Acme"));
    assert_eq!(m.site.as_deref(), Some("HQ"));
    assert_eq!(m.department.as_deref(), Some("Ops"));
    assert_eq!(m.device_type.as_deref(), Some("server"));
    assert_eq!(m.tags, ["linux", "prod"]);
    assert_eq!(m.external_ip.as_deref(), Some("198.51.100.4"));
    assert_eq!(m.inventory, json!({}));
    assert_eq!(m.status, MachineStatus::Active);
    assert_eq!(m.last_seen, Some(5_000));
    assert_eq!(m.created_at, 5_000);
    assert_eq!(store.get_machine("a-1").await.expect("get"), m);
    assert_eq!(found(&store, "tag:prod company:acme").await, ["a-1"]);

    // Same uid, other agent id: the unique index refuses it.
    let err = store
        .create_machine(&new_machine("a-2", Some("uid-1"), "dup"))
        .await
        .expect_err("uid taken");
    assert!(
        matches!(err, StoreError::Conflict("machine uid taken")),
        "{err:?}"
    );
    // Same agent id: "machine exists".
    let err = store
        .create_machine(&new_machine("a-1", Some("uid-9"), "again"))
        .await
        .expect_err("id taken");
    assert!(
        matches!(err, StoreError::Conflict("machine exists")),
        "{err:?}"
    );

    // The collided endpoint gets its own pending row: uid NULL, claimed uid recorded.
    let mut collided = new_machine("a-2", None, "clone");
    collided.claimed_machine_uid = Some("uid-1".to_owned());
    collided.status = MachineStatus::Pending;
    collided.pending_reason = Some("machine_uid_collision".to_owned());
    let c = store.create_machine(&collided).await.expect("pending row");
    assert_eq!(c.machine_uid, None);
    assert_eq!(c.claimed_machine_uid.as_deref(), Some("uid-1"));
    assert_eq!(c.status, MachineStatus::Pending);
    // The uid still resolves to the original machine only.
    let owner = store
        .find_machine_by_uid(T, "uid-1")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(owner.agent_id, "a-1");
    // Both show up when searching the uid; status filters tell them apart.
    assert_eq!(found(&store, "uid-1").await, ["a-2", "a-1"]);
    assert_eq!(found(&store, "uid-1 status:pending").await, ["a-2"]);
    assert_eq!(found(&store, "uid-1 status:active").await, ["a-1"]);
    // Approval keeps the claimed uid for the record.
    store
        .set_machine_pending("a-2", None, 0, None)
        .await
        .expect("approve");
    let c = store.get_machine("a-2").await.expect("get");
    assert_eq!(
        (c.status, c.machine_uid.clone()),
        (MachineStatus::Active, None)
    );
    assert_eq!(c.claimed_machine_uid.as_deref(), Some("uid-1"));

    // After the original is removed, its uid is free for a new machine.
    store
        .soft_delete_machine("a-1", 6_000, &ev("machine.removed"))
        .await
        .expect("del");
    store
        .create_machine(&new_machine("a-3", Some("uid-1"), "reinstalled"))
        .await
        .expect("uid free again");
    // Other tenants are independent.
    let mut other = new_machine("o-1", Some("uid-1"), "other");
    other.tenant_id = "other".to_owned();
    store.create_machine(&other).await.expect("other tenant");
}

async fn case_machines_by_ids_and_count(store: Store) {
    for (id, host) in [("a-1", "Zulu"), ("a-2", "alpha"), ("a-3", "Mike")] {
        store
            .upsert_machine(&machine(id, None, host, 1_000))
            .await
            .expect("insert");
    }
    let mut other = machine("o-1", None, "other", 1_000);
    other.tenant_id = "other".to_owned();
    store.upsert_machine(&other).await.expect("other");
    store
        .soft_delete_machine("a-3", 2_000, &ev("machine.removed"))
        .await
        .expect("del");
    assert_eq!(store.count_machines(T).await.expect("count"), 2);
    assert_eq!(store.count_machines("other").await.expect("count"), 1);
    assert_eq!(store.count_machines("none").await.expect("count"), 0);

    let ids: Vec<String> = ["a-1", "a-2", "a-3", "o-1", "missing", "a-1", "x'); --"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let list = store.list_machines_by_ids(T, &ids).await.expect("by ids");
    assert_eq!(agent_ids(&list), ["a-2", "a-1"]);
    assert!(
        store
            .list_machines_by_ids(T, &[])
            .await
            .expect("empty")
            .is_empty()
    );
    let many: Vec<String> = (0..600).map(|i| format!("id-{i}")).collect();
    assert!(
        store
            .list_machines_by_ids(T, &many)
            .await
            .expect("many")
            .is_empty()
    );
}

async fn case_search_maintained_on_every_write(store: Store) {
    let mut up = machine("a-1", Some("UID-Abc"), "Reception-PC", 1_000);
    up.external_ip = Some("203.0.113.50".to_owned());
    store.upsert_machine(&up).await.expect("insert");
    assert_eq!(found(&store, "reception").await, ["a-1"]);
    assert_eq!(found(&store, "RECEPTION-pc").await, ["a-1"]);
    assert_eq!(found(&store, "uid-abc").await, ["a-1"]);
    assert_eq!(found(&store, "a-1").await, ["a-1"]);
    assert_eq!(found(&store, "113.50").await, ["a-1"]);
    assert_eq!(found(&store, "ip:203.0").await, ["a-1"]);
    assert_eq!(found(&store, "windows").await, ["a-1"]);

    // upsert_machine: new reported fields replace old ones in the index.
    let mut up = machine("a-1", None, "FrontDesk", 2_000);
    up.os = "Linux".to_owned();
    up.os_version = "Ubuntu 24.04".to_owned();
    up.agent_version = "1.4.2".to_owned();
    up.external_ip = Some("198.51.100.1".to_owned());
    store.upsert_machine(&up).await.expect("update");
    assert!(found(&store, "reception").await.is_empty());
    assert!(found(&store, "windows").await.is_empty());
    assert!(found(&store, "203.0.113").await.is_empty());
    assert_eq!(found(&store, "frontdesk").await, ["a-1"]);
    assert_eq!(found(&store, "os:ubuntu").await, ["a-1"]);
    assert_eq!(found(&store, "os:linux").await, ["a-1"]);
    assert_eq!(found(&store, "version:1.4").await, ["a-1"]);
    assert_eq!(found(&store, "uid-abc").await, ["a-1"], "uid kept");

    // set_machine_inventory.
    let inv = json!({
        "logged_on_user": "CORP\\jdoe",
        "serial": "SN-778899",
        "cpu_model": "Intel(R) Core(TM) i7-1185G7",
        "time_zone": "Europe/Berlin",
        "interfaces": [
            {"name": "eth0", "mac": "00:1A:2B:3C:4D:5E", "addresses": ["10.20.30.40", "fe80::1234"]},
            {"name": "wlan0", "mac": "66:77:88:99:AA:BB", "addresses": ["192.168.7.9"]},
        ],
    });
    store
        .set_machine_inventory("a-1", &inv, 3_000)
        .await
        .expect("inventory");
    for q in [
        "jdoe",
        "user:corp\\jdoe",
        "sn-7788",
        "i7-1185",
        "berlin",
        "00:1a:2b",
        "aa:bb",
        "10.20.30",
        "ip:10.20.30.40",
        "ip:fe80::1234",
        "ip:192.168.7",
        "ip:198.51.100.1",
    ] {
        assert_eq!(found(&store, q).await, ["a-1"], "{q}");
    }
    // MACs are not IPs; the user is only in `user:`.
    assert!(found(&store, "ip:00:1a").await.is_empty());
    assert!(found(&store, "host:jdoe").await.is_empty());
    // Replacing the inventory drops the old values.
    store
        .set_machine_inventory("a-1", &json!({"logged_on_user": "asmith"}), 4_000)
        .await
        .expect("inventory 2");
    assert!(found(&store, "jdoe").await.is_empty());
    assert!(found(&store, "10.20.30").await.is_empty());
    assert_eq!(found(&store, "user:asmith").await, ["a-1"]);

    // update_machine_labels.
    store
        .update_machine_labels(
            "a-1",
            &MachineLabels {
                company: some("Globex Corp"),
                site: some("New York"),
                department: some("Accounting"),
                device_type: some("Workstation"),
                tags: Some(vec!["Front-Office".to_owned(), "kiosk".to_owned()]),
                notes: None,
                update_channel: None,
            },
            5_000,
            None,
        )
        .await
        .expect("labels");
    for q in [
        "globex",
        "company:globex",
        "site:\"new york\"",
        "\"new york\"",
        "accounting",
        "workstation",
        "tag:front",
        "tag:kiosk",
        "front-office",
    ] {
        assert_eq!(found(&store, q).await, ["a-1"], "{q}");
    }
    store
        .update_machine_labels(
            "a-1",
            &MachineLabels {
                company: Some(None),
                site: some("Boston"),
                tags: Some(vec!["vip".to_owned()]),
                ..labels()
            },
            6_000,
            None,
        )
        .await
        .expect("labels 2");
    assert!(found(&store, "globex").await.is_empty());
    assert!(found(&store, "site:york").await.is_empty());
    assert!(found(&store, "kiosk").await.is_empty());
    assert_eq!(found(&store, "site:boston tag:vip").await, ["a-1"]);
    assert_eq!(found(&store, "accounting").await, ["a-1"], "left as is");

    // touch / pending / site moves keep the index; soft delete hides the machine.
    store.touch_machine("a-1", 7_000).await.expect("touch");
    store
        .set_machine_pending("a-1", Some("review"), 0, None)
        .await
        .expect("pending");
    assert_eq!(found(&store, "boston").await, ["a-1"]);
    store
        .soft_delete_machine("a-1", 8_000, &ev("machine.removed"))
        .await
        .expect("del");
    assert!(found(&store, "boston").await.is_empty());
    assert!(found(&store, "").await.is_empty());
}

async fn case_search_like_escaping(store: Store) {
    for (id, tag) in [
        ("a-1", "50%"),
        ("a-2", "500"),
        ("a-3", "5_0"),
        ("a-4", "a\\b"),
        ("a-5", "ab"),
        ("a-6", "5x0"),
    ] {
        store
            .upsert_machine(&machine(id, None, &format!("h{id}"), 1_000))
            .await
            .expect("insert");
        store
            .update_machine_labels(
                id,
                &MachineLabels {
                    tags: Some(vec![tag.to_owned()]),
                    ..labels()
                },
                1_000,
                None,
            )
            .await
            .expect("tag");
    }
    assert_eq!(found(&store, "50%").await, ["a-1"]);
    assert_eq!(found(&store, "tag:50%").await, ["a-1"]);
    assert_eq!(found(&store, "%").await, ["a-1"]);
    assert_eq!(found(&store, "5_0").await, ["a-3"]);
    assert_eq!(found(&store, "tag:_").await, ["a-3"]);
    assert_eq!(found(&store, "a\\b").await, ["a-4"]);
    assert_eq!(found(&store, "tag:\\").await, ["a-4"]);
    assert_eq!(found(&store, "tag:a%b").await, Vec::<String>::new());
    assert_eq!(found(&store, "tag:5%0").await, Vec::<String>::new());
    assert_eq!(found(&store, "'").await, Vec::<String>::new());
    assert_eq!(found(&store, "\"tag:500\"").await, Vec::<String>::new());
    assert_eq!(found(&store, "tag:500").await, ["a-2"]);
}

async fn case_search_pagination_and_order(store: Store) {
    // 25 matching machines with mixed-case hostnames, 5 others, 1 deleted match,
    // 1 match in another tenant.
    for i in 0..25 {
        let host = if i % 2 == 0 {
            format!("Match-{i:02}")
        } else {
            format!("match-{i:02}")
        };
        store
            .upsert_machine(&machine(&format!("m-{i:02}"), None, &host, 1_000))
            .await
            .expect("insert");
    }
    for i in 0..5 {
        store
            .upsert_machine(&machine(
                &format!("n-{i}"),
                None,
                &format!("other-{i}"),
                1_000,
            ))
            .await
            .expect("insert");
    }
    store
        .upsert_machine(&machine("m-del", None, "match-deleted", 1_000))
        .await
        .expect("insert");
    store
        .soft_delete_machine("m-del", 2_000, &ev("machine.removed"))
        .await
        .expect("del");
    let mut other = machine("o-1", None, "match-other-tenant", 1_000);
    other.tenant_id = "other".to_owned();
    store.upsert_machine(&other).await.expect("other");

    let expect: Vec<String> = (0..25).map(|i| format!("m-{i:02}")).collect();
    let mut got = Vec::new();
    for (offset, len) in [(0, 10), (10, 10), (20, 5), (30, 0)] {
        let (page, total) = store
            .search_machines(&MachineSearch {
                limit: 10,
                offset,
                ..search("MATCH")
            })
            .await
            .expect("page");
        assert_eq!(total, 25, "total at offset {offset}");
        assert_eq!(page.len(), len, "page at offset {offset}");
        got.extend(page.into_iter().map(|m| m.agent_id));
    }
    assert_eq!(got, expect, "ordered by lower(hostname), no overlap");
    let (page, total) = store
        .search_machines(&MachineSearch {
            limit: 0,
            ..search("match")
        })
        .await
        .expect("limit 0");
    assert!(page.is_empty());
    assert_eq!(total, 25);
    let (page, total) = store
        .search_machines(&MachineSearch {
            limit: 5,
            offset: -3,
            ..search("match")
        })
        .await
        .expect("negative offset");
    assert_eq!(agent_ids(&page), ["m-00", "m-01", "m-02", "m-03", "m-04"]);
    assert_eq!(total, 25);
    // Empty query: every live machine, like list_machines.
    let (all, total) = store.search_machines(&search("  ")).await.expect("all");
    assert_eq!(total, 30);
    let (listed, _) = store.list_machines(T, 1000, 0).await.expect("list");
    assert_eq!(all, listed);
    let (none, total) = store
        .search_machines(&MachineSearch {
            tenant_id: "nobody".to_owned(),
            ..search("")
        })
        .await
        .expect("empty tenant");
    assert!(none.is_empty());
    assert_eq!(total, 0);
}

async fn case_search_field_terms_and_status(store: Store) {
    let specs = [
        ("a-1", "web-01", "windows", "Server 2022", "2.0.1"),
        ("a-2", "db-01", "linux", "Ubuntu 22.04", "2.1.0"),
        ("a-3", "win-desk", "linux", "Fedora 40", "1.9.9"),
    ];
    for (id, host, os, ver, agent) in specs {
        let mut up = machine(id, None, host, 1_000);
        up.os = os.to_owned();
        up.os_version = ver.to_owned();
        up.agent_version = agent.to_owned();
        store.upsert_machine(&up).await.expect("insert");
    }
    store
        .set_machine_pending("a-3", Some("machine_uid_collision"), 0, None)
        .await
        .expect("pending");
    assert_eq!(found(&store, "win").await, ["a-1", "a-3"]);
    assert_eq!(found(&store, "os:win").await, ["a-1"]);
    assert_eq!(found(&store, "host:win").await, ["a-3"]);
    assert_eq!(
        found(&store, "HOST:WIN").await,
        ["a-3"],
        "field names fold case"
    );
    assert_eq!(found(&store, "os:ubuntu").await, ["a-2"]);
    assert_eq!(found(&store, "version:2.").await, ["a-2", "a-1"]);
    assert_eq!(found(&store, "version:2. os:linux").await, ["a-2"]);
    assert_eq!(found(&store, "os:linux -01").await, ["a-2"]);
    assert_eq!(found(&store, "status:pending").await, ["a-3"]);
    assert_eq!(found(&store, "status:active").await, ["a-2", "a-1"]);
    assert!(found(&store, "status:bogus").await.is_empty());
    // Unknown field: the whole term is a bare substring.
    assert!(found(&store, "foo:web").await.is_empty());
    store
        .update_machine_labels(
            "a-1",
            &MachineLabels {
                tags: Some(vec!["foo:web".to_owned()]),
                ..labels()
            },
            2_000,
            None,
        )
        .await
        .expect("tag");
    assert_eq!(found(&store, "foo:web").await, ["a-1"]);
    // Empty values are ignored.
    assert_eq!(found(&store, "os: \"\" host:db").await, ["a-2"]);

    // Online/offline come from the caller.
    let with_online = |q: &str, online: Option<Vec<&str>>| MachineSearch {
        online_ids: online.map(|v| v.into_iter().map(str::to_owned).collect()),
        ..search(q)
    };
    let ids = |r: (Vec<Machine>, i64)| {
        assert_eq!(r.1, r.0.len() as i64);
        r.0.into_iter().map(|m| m.agent_id).collect::<Vec<_>>()
    };
    let q = |query: &'static str, online: Option<Vec<&'static str>>| {
        let store = store.clone();
        let s = with_online(query, online);
        async move { ids(store.search_machines(&s).await.expect("search")) }
    };
    assert_eq!(
        q("status:online", Some(vec!["a-1", "a-3", "gone"])).await,
        ["a-1", "a-3"]
    );
    assert_eq!(q("status:offline", Some(vec!["a-1", "a-3"])).await, ["a-2"]);
    assert_eq!(
        q("status:online status:pending", Some(vec!["a-1", "a-3"])).await,
        ["a-3"]
    );
    assert!(q("status:online", None).await.is_empty());
    assert!(q("status:online", Some(vec![])).await.is_empty());
    assert_eq!(q("status:offline", None).await, ["a-2", "a-1", "a-3"]);
    assert!(
        q("status:online status:offline", Some(vec!["a-1"]))
            .await
            .is_empty()
    );
}

// ------------------------------------------------ search vs. brute force

/// Small deterministic PRNG (xorshift64*), so the generated fleet is reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

const HOSTS: &[&str] = &[
    "WS",
    "ws",
    "Srv",
    "LAPTOP",
    "kiosk",
    "Reception",
    "db",
    "NAS",
];
const OSES: &[(&str, &[&str])] = &[
    (
        "windows",
        &["10 Pro 22H2", "11 Pro 23H2", "Server 2019", "Server 2022"],
    ),
    ("linux", &["Ubuntu 22.04", "Debian 12", "Fedora 40"]),
    ("macos", &["14.5 Sonoma", "13.6 Ventura"]),
];
const VERSIONS: &[&str] = &["0.9.1", "1.0.0", "1.2.3", "2.0.0-beta.1"];
const COMPANIES: &[&str] = &["Acme Corp", "Globex", "Initech", "Umbrella", "50% Off Ltd"];
const SITES: &[&str] = &["New York", "Berlin", "HQ", "Remote", "São Paulo"];
const DEPTS: &[&str] = &["Finance", "IT", "Sales", "Front_Desk"];
const TYPES: &[&str] = &["laptop", "desktop", "server", "vm"];
const TAGS: &[&str] = &["vip", "eu", "us", "kiosk", "legacy", "patch-me", "100%"];
const USERS: &[&str] = &["CORP\\jdoe", "asmith", "Bob.Jones", "admin", "ÄRGER"];
const TZS: &[&str] = &["Europe/Berlin", "America/New_York", "UTC"];
const CPUS: &[&str] = &[
    "Intel(R) Core(TM) i7-1185G7",
    "AMD Ryzen 7 5800X",
    "Apple M2",
];

/// Every attribute value of a machine, as the spec lists them (brute-force model).
fn all_values(m: &Machine) -> Vec<String> {
    let mut v = vec![
        m.agent_id.clone(),
        m.hostname.clone(),
        m.os.clone(),
        m.os_version.clone(),
        m.agent_version.clone(),
    ];
    v.extend(m.machine_uid.clone());
    v.extend(m.claimed_machine_uid.clone());
    v.extend(m.company.clone());
    v.extend(m.site.clone());
    v.extend(m.department.clone());
    v.extend(m.device_type.clone());
    v.extend(m.tags.iter().cloned());
    v.extend(m.external_ip.clone());
    v.extend(inv_str(m, "logged_on_user"));
    v.extend(inv_str(m, "serial"));
    v.extend(inv_str(m, "cpu_model"));
    v.extend(inv_str(m, "time_zone"));
    v.extend(inv_addrs(m));
    if let Some(list) = m.inventory["interfaces"].as_array() {
        v.extend(
            list.iter()
                .filter_map(|i| i["mac"].as_str().map(str::to_owned)),
        );
    }
    v
}

fn inv_str(m: &Machine, key: &str) -> Option<String> {
    m.inventory[key].as_str().map(str::to_owned)
}

fn inv_addrs(m: &Machine) -> Vec<String> {
    m.inventory["interfaces"]
        .as_array()
        .map(|list| {
            list.iter()
                .flat_map(|i| i["addresses"].as_array().cloned().unwrap_or_default())
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn any_contains(values: &[String], needle: &str) -> bool {
    values.iter().any(|v| v.to_lowercase().contains(needle))
}

/// The brute-force meaning of one `(field, value)` term; `value` already lowercased.
fn term_matches(m: &Machine, field: Option<&str>, value: &str, online: &[String]) -> bool {
    let one = |o: &Option<String>| o.iter().cloned().collect::<Vec<_>>();
    match field {
        None => any_contains(&all_values(m), value),
        Some("host") => any_contains(std::slice::from_ref(&m.hostname), value),
        Some("os") => any_contains(&[m.os.clone(), m.os_version.clone()], value),
        Some("user") => any_contains(
            &inv_str(m, "logged_on_user").into_iter().collect::<Vec<_>>(),
            value,
        ),
        Some("ip") => {
            let mut ips = one(&m.external_ip);
            ips.extend(inv_addrs(m));
            any_contains(&ips, value)
        }
        Some("site") => any_contains(&one(&m.site), value),
        Some("tag") => any_contains(&m.tags, value),
        Some("company") => any_contains(&one(&m.company), value),
        Some("version") => any_contains(std::slice::from_ref(&m.agent_version), value),
        Some("status") => match value {
            "online" => online.contains(&m.agent_id),
            "offline" => !online.contains(&m.agent_id),
            "pending" | "active" => m.status.as_str() == value,
            _ => false,
        },
        Some(other) => panic!("unknown field {other}"),
    }
}

/// A random fragment (1..=5 chars, on char boundaries) of one of `words`.
fn fragment(rng: &mut Rng, words: &[&str]) -> String {
    let w: Vec<char> = rng.pick(words).chars().collect();
    let len = 1 + rng.below(w.len().min(5));
    let start = rng.below(w.len() - len + 1);
    w[start..start + len].iter().collect()
}

async fn case_search_matches_brute_force(store: Store) {
    let mut rng = Rng(0x05EE_D0FF_1EE7);
    let mut online = Vec::new();
    for i in 0..300 {
        let agent_id = format!("{:08x}-{i:04}", rng.next() as u32);
        let (os, versions) = OSES[rng.below(OSES.len())];
        let mut up = MachineUpsert {
            agent_id: agent_id.clone(),
            tenant_id: T.to_owned(),
            machine_uid: rng
                .chance(80)
                .then(|| format!("UID-{:06X}", rng.next() as u32 & 0xFF_FFFF)),
            hostname: format!("{}-{:03}", rng.pick(HOSTS), rng.below(1000)),
            os: os.to_owned(),
            os_version: rng.pick(versions).to_owned(),
            agent_version: rng.pick(VERSIONS).to_owned(),
            external_ip: rng
                .chance(90)
                .then(|| format!("203.0.{}.{}", rng.below(4), rng.below(256))),
            seen_at: 1_000 + i as i64,
        };
        if up.machine_uid.is_some()
            && store
                .find_machine_by_uid(T, up.machine_uid.as_deref().unwrap_or_default())
                .await
                .expect("find")
                .is_some()
        {
            up.machine_uid = None;
        }
        store.upsert_machine(&up).await.expect("insert");
        if rng.chance(85) {
            let mut inv = serde_json::Map::new();
            if rng.chance(80) {
                inv.insert("logged_on_user".into(), json!(rng.pick(USERS)));
            }
            inv.insert(
                "serial".into(),
                json!(format!("SN{:05}", rng.below(100_000))),
            );
            inv.insert("cpu_model".into(), json!(rng.pick(CPUS)));
            inv.insert("time_zone".into(), json!(rng.pick(TZS)));
            let ifaces: Vec<_> = (0..rng.below(3))
                .map(|k| {
                    json!({
                        "name": format!("eth{k}"),
                        "mac": format!("00:1A:2B:{:02X}:{:02X}:{:02X}", rng.below(256), rng.below(256), k),
                        "addresses": [format!("10.{}.{}.{}", rng.below(3), rng.below(256), rng.below(256)), "fe80::1"],
                    })
                })
                .collect();
            inv.insert("interfaces".into(), json!(ifaces));
            store
                .set_machine_inventory(&agent_id, &serde_json::Value::Object(inv), 2_000)
                .await
                .expect("inventory");
        }
        let maybe = |rng: &mut Rng, vocab: &[&str]| {
            if rng.chance(70) {
                Some(Some(rng.pick(vocab).to_owned()))
            } else {
                None
            }
        };
        let lab = MachineLabels {
            company: maybe(&mut rng, COMPANIES),
            site: maybe(&mut rng, SITES),
            department: maybe(&mut rng, DEPTS),
            device_type: maybe(&mut rng, TYPES),
            tags: Some(
                (0..rng.below(3))
                    .map(|_| rng.pick(TAGS).to_owned())
                    .collect(),
            ),
            notes: None,
            update_channel: None,
        };
        store
            .update_machine_labels(&agent_id, &lab, 3_000, None)
            .await
            .expect("labels");
        if rng.chance(10) {
            store
                .set_machine_pending(&agent_id, Some("machine_uid_collision"), 0, None)
                .await
                .expect("pending");
        }
        if rng.chance(5) {
            store
                .soft_delete_machine(&agent_id, 4_000, &ev("machine.removed"))
                .await
                .expect("del");
        }
        if rng.chance(40) {
            online.push(agent_id);
        }
    }
    let (fleet, total) = store.list_machines(T, 1000, 0).await.expect("list");
    assert_eq!(total as usize, fleet.len());
    assert!(fleet.len() > 250, "{}", fleet.len());

    let bare_words: Vec<&str> = HOSTS
        .iter()
        .chain(COMPANIES)
        .chain(SITES)
        .chain(DEPTS)
        .chain(TYPES)
        .chain(TAGS)
        .chain(USERS)
        .chain(TZS)
        .chain(CPUS)
        .chain(VERSIONS)
        .chain(&[
            "windows",
            "linux",
            "Ubuntu 22.04",
            "203.0.1",
            "10.2.",
            "00:1a:2b",
            "uid-",
            "sn1",
            "fe80",
        ])
        .copied()
        .collect();
    let field_vocab: &[(&str, &[&str])] = &[
        ("host", HOSTS),
        (
            "os",
            &[
                "windows",
                "linux",
                "macos",
                "Server 2022",
                "22.04",
                "Sonoma",
                "11 Pro",
            ],
        ),
        ("user", USERS),
        ("ip", &["203.0.2.", "10.1.", "fe80::1", "203.0.3.17"]),
        ("site", SITES),
        ("tag", TAGS),
        ("company", COMPANIES),
        ("version", VERSIONS),
    ];
    let mut nonempty = 0;
    for qi in 0..60 {
        let n_terms = 1 + rng.below(3);
        let mut query = Vec::new();
        let mut model: Vec<(Option<&str>, String)> = Vec::new();
        for _ in 0..n_terms {
            match rng.below(10) {
                0..=3 => {
                    let mut f = fragment(&mut rng, &bare_words);
                    if rng.chance(20) {
                        f = f.to_uppercase();
                    }
                    let shown = if f.contains(' ') || rng.chance(10) {
                        format!("\"{f}\"")
                    } else {
                        f.clone()
                    };
                    // A fragment with a space needs quotes; model the normalised value.
                    query.push(shown);
                    model.push((None, f.to_lowercase()));
                }
                4..=7 => {
                    let (field, vocab) = field_vocab[rng.below(field_vocab.len())];
                    let v = if rng.chance(50) {
                        rng.pick(vocab).to_owned()
                    } else {
                        fragment(&mut rng, vocab)
                    };
                    let shown_field = if rng.chance(15) {
                        field.to_uppercase()
                    } else {
                        field.to_owned()
                    };
                    query.push(if v.contains(' ') || rng.chance(10) {
                        format!("{shown_field}:\"{v}\"")
                    } else {
                        format!("{shown_field}:{v}")
                    });
                    model.push((Some(field), v.to_lowercase()));
                }
                8 => {
                    let v = rng.pick(&["online", "offline", "pending", "active"]);
                    query.push(format!("status:{v}"));
                    model.push((Some("status"), v.to_owned()));
                }
                _ => {
                    // Unknown field: bare substring of the whole term.
                    let v = fragment(&mut rng, &["x", "zz", "a"]);
                    query.push(format!("nofield:{v}"));
                    model.push((None, format!("nofield:{v}")));
                }
            }
        }
        let query = query.join(if qi % 2 == 0 { " " } else { "   " });
        let mut expect: Vec<&Machine> = fleet
            .iter()
            .filter(|m| model.iter().all(|(f, v)| term_matches(m, *f, v, &online)))
            .collect();
        expect.sort_by(|a, b| {
            (a.hostname.to_ascii_lowercase(), &a.agent_id)
                .cmp(&(b.hostname.to_ascii_lowercase(), &b.agent_id))
        });
        let expect: Vec<&str> = expect.iter().map(|m| m.agent_id.as_str()).collect();
        let (got, total) = store
            .search_machines(&MachineSearch {
                online_ids: Some(online.clone()),
                ..search(&query)
            })
            .await
            .expect("search");
        assert_eq!(agent_ids(&got), expect, "query {qi}: {query:?}");
        assert_eq!(total as usize, expect.len(), "total of {query:?}");
        if !expect.is_empty() {
            nonempty += 1;
        }
        // A middle page has the right slice and the same total.
        if expect.len() > 4 {
            let (page, total) = store
                .search_machines(&MachineSearch {
                    online_ids: Some(online.clone()),
                    limit: 3,
                    offset: 2,
                    ..search(&query)
                })
                .await
                .expect("page");
            assert_eq!(agent_ids(&page), expect[2..5], "page of {query:?}");
            assert_eq!(total as usize, expect.len());
        }
    }
    assert!(
        nonempty >= 20,
        "queries should mostly match something: {nonempty}"
    );
}

// ---------------------------------------------------------------- sites

async fn case_sites(store: Store) {
    let s = store
        .create_site(&site("s-1", T, "Main Office", "MAIN"), &ev("site.created"))
        .await
        .expect("create");
    assert_eq!(s, site("s-1", T, "Main Office", "MAIN"));
    assert_eq!(store.get_site("s-1").await.expect("get"), s);
    let err = store
        .create_site(&site("s-2", T, "Dup", "main"), &ev("site.created"))
        .await
        .expect_err("code taken case-insensitively");
    assert!(
        matches!(err, StoreError::Conflict("site code taken")),
        "{err:?}"
    );
    let err = store
        .create_site(&site("s-1", T, "Same id", "OTHER"), &ev("site.created"))
        .await
        .expect_err("id taken");
    assert!(
        matches!(err, StoreError::Conflict("site exists")),
        "{err:?}"
    );
    store
        .create_site(&site("s-3", T, "branch", "BR-1"), &ev("site.created"))
        .await
        .expect("second");
    store
        .create_site(
            &site("s-o", "other", "Main elsewhere", "MAIN"),
            &ev("site.created"),
        )
        .await
        .expect("same code in another tenant");

    let list = store.list_sites(T).await.expect("list");
    assert_eq!(
        list.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(),
        ["s-3", "s-1"]
    );
    assert_eq!(store.list_sites("other").await.expect("list").len(), 1);
    assert!(store.list_sites("none").await.expect("list").is_empty());

    let by_code = store
        .find_site_by_code(T, "Main")
        .await
        .expect("find")
        .expect("found");
    assert_eq!(by_code.id, "s-1");
    assert_eq!(by_code.key_hash, s.key_hash);
    assert_eq!(
        store
            .find_site_by_code("other", "main")
            .await
            .expect("find")
            .expect("found")
            .id,
        "s-o"
    );
    assert!(
        store
            .find_site_by_code(T, "nope")
            .await
            .expect("find")
            .is_none()
    );
    assert!(matches!(
        store.get_site("missing").await,
        Err(StoreError::NotFound)
    ));
    // The key hash is never serialized.
    let v = serde_json::to_value(&s).expect("json");
    assert!(v.get("key_hash").is_none());
    assert_eq!(v["key_fingerprint"], "v1 (AB12)");
}

async fn case_site_key_rotation(store: Store) {
    store
        .create_site(&site("s-1", T, "Main", "MAIN"), &ev("site.created"))
        .await
        .expect("create");
    let r = store
        .rotate_site_key(
            "s-1",
            "$argon2id$new2",
            2,
            "v2 (CD34)",
            9_000,
            &ev("site.key_rotated"),
        )
        .await
        .expect("rotate");
    assert_eq!(r.key_hash, "$argon2id$new2");
    assert_eq!(r.key_version, 2);
    assert_eq!(r.key_fingerprint, "v2 (CD34)");
    assert_eq!(r.rotated_at, Some(9_000));
    assert_eq!(r.created_at, 1_000);
    assert_eq!(store.get_site("s-1").await.expect("get"), r);

    // A stale caller (expects version 1 → 2 again) loses and changes nothing.
    let err = store
        .rotate_site_key(
            "s-1",
            "$argon2id$stale",
            2,
            "v2 (FFFF)",
            9_500,
            &ev("site.key_rotated"),
        )
        .await
        .expect_err("stale");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    let err = store
        .rotate_site_key(
            "s-1",
            "$argon2id$skip",
            4,
            "v4 (FFFF)",
            9_500,
            &ev("site.key_rotated"),
        )
        .await
        .expect_err("skipping a version");
    assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
    assert_eq!(store.get_site("s-1").await.expect("get"), r);
    assert!(matches!(
        store
            .rotate_site_key("missing", "$h", 2, "v2 (0000)", 1, &ev("site.key_rotated"))
            .await,
        Err(StoreError::NotFound)
    ));

    // Concurrent rotations from version 2: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .rotate_site_key(
                    "s-1",
                    &format!("$argon2id$race{i}"),
                    3,
                    "v3 (0000)",
                    10_000,
                    &ev("site.key_rotated"),
                )
                .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.expect("join") {
            Ok(s) => {
                wins += 1;
                assert_eq!(s.key_version, 3);
            }
            Err(StoreError::Conflict(_)) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(wins, 1);
    assert_eq!(store.get_site("s-1").await.expect("get").key_version, 3);
}

// ---------------------------------------------------------------- search back-fill

/// Rows whose search columns are missing (written before 0002) are back-filled on
/// connect.
async fn backfill_on_connect(url: &str) {
    let store = Store::connect(url).await.expect("connect");
    store
        .upsert_machine(&machine("a-1", Some("uid-1"), "Legacy-Box", 1_000))
        .await
        .expect("insert");
    store.close().await;
    sqlx::any::install_default_drivers();
    let pool = sqlx::any::AnyPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("pool");
    sqlx::query("UPDATE machines SET search_text = NULL, search_host = ''")
        .execute(&pool)
        .await
        .expect("forget search columns");
    pool.close().await;
    let store = Store::connect(url).await.expect("reconnect");
    assert_eq!(found(&store, "legacy").await, ["a-1"]);
    assert_eq!(found(&store, "host:legacy-box").await, ["a-1"]);
}

#[tokio::test]
async fn sqlite_backfills_search_columns() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("b.db").to_str().expect("utf-8 temp path")
    );
    backfill_on_connect(&url).await;
}

#[tokio::test]
async fn postgres_backfills_search_columns() {
    let Some(url) = test_database_url().await else {
        eprintln!(
            "skipped postgres_backfills_search_columns: GURUCONNECT_TEST_DATABASE_URL not set"
        );
        return;
    };
    backfill_on_connect(&url).await;
}

// ---------------------------------------------------------------- TOTP

async fn count_events(store: &Store, event_type: &str) -> usize {
    store
        .list_events(&EventFilter {
            tenant_id: T.to_owned(),
            event_type: Some(event_type.to_owned()),
            limit: 500,
            ..EventFilter::default()
        })
        .await
        .expect("events")
        .len()
}

async fn case_totp_lifecycle(store: Store) {
    store
        .create_user(&new_user("t1", "tina", "admin"), 1_000, &ev("user.created"))
        .await
        .expect("user");
    assert!(!store.get_user("t1").await.expect("get").totp_enabled);
    assert!(store.get_totp("t1").await.expect("get").is_none());

    // Pending until confirmed; a new setup replaces a pending secret.
    store
        .begin_totp_setup("t1", "AAAA", 1_000)
        .await
        .expect("setup");
    store
        .begin_totp_setup("t1", "BBBB", 1_001)
        .await
        .expect("setup again");
    let rec = store.get_totp("t1").await.expect("get").expect("pending");
    assert_eq!((rec.secret.as_str(), rec.enabled), ("BBBB", false));
    assert!(
        !format!("{rec:?}").contains("BBBB"),
        "Debug redacts the secret"
    );
    assert!(!store.get_user("t1").await.expect("get").totp_enabled);
    // A step is not accepted for a pending secret.
    assert!(!store.accept_totp_step("t1", 5).await.expect("step"));

    let hashes = vec!["h1".to_owned(), "h2".to_owned()];
    assert!(
        store
            .confirm_totp("t1", 100, &hashes, &ev("totp.enrolled"), 2_000)
            .await
            .expect("confirm")
    );
    assert_eq!(count_events(&store, "totp.enrolled").await, 1);
    // Confirming again changes nothing and records nothing.
    assert!(
        !store
            .confirm_totp("t1", 101, &hashes, &ev("totp.enrolled"), 2_001)
            .await
            .expect("confirm again")
    );
    assert_eq!(count_events(&store, "totp.enrolled").await, 1);
    assert!(store.get_user("t1").await.expect("get").totp_enabled);
    assert!(matches!(
        store.begin_totp_setup("t1", "CCCC", 2_002).await,
        Err(StoreError::Conflict("totp enabled"))
    ));
    assert_eq!(
        store.get_totp("t1").await.expect("get").expect("on").secret,
        "BBBB"
    );

    // Steps: only newer than the last accepted (the confirming one was 100).
    assert!(!store.accept_totp_step("t1", 100).await.expect("replay"));
    assert!(store.accept_totp_step("t1", 101).await.expect("next"));
    assert!(!store.accept_totp_step("t1", 101).await.expect("replay"));
    assert!(!store.accept_totp_step("t1", 99).await.expect("older"));

    // Recovery codes: once each, audited with their use.
    assert_eq!(store.recovery_codes_left("t1").await.expect("left"), 2);
    assert!(
        store
            .use_recovery_code("t1", "h1", &ev("recovery_code.used"), 3_000)
            .await
            .expect("use")
    );
    assert!(
        !store
            .use_recovery_code("t1", "h1", &ev("recovery_code.used"), 3_001)
            .await
            .expect("reuse")
    );
    assert!(
        !store
            .use_recovery_code("t1", "nope", &ev("recovery_code.used"), 3_002)
            .await
            .expect("unknown")
    );
    assert_eq!(count_events(&store, "recovery_code.used").await, 1);
    assert_eq!(store.recovery_codes_left("t1").await.expect("left"), 1);

    // Removal: audited once, recovery codes go with it.
    assert!(
        store
            .remove_totp("t1", &ev("totp.reset"), 4_000)
            .await
            .expect("remove")
    );
    assert!(
        !store
            .remove_totp("t1", &ev("totp.reset"), 4_001)
            .await
            .expect("again")
    );
    assert_eq!(count_events(&store, "totp.reset").await, 1);
    assert!(store.get_totp("t1").await.expect("get").is_none());
    assert_eq!(store.recovery_codes_left("t1").await.expect("left"), 0);
    assert!(
        !store
            .use_recovery_code("t1", "h2", &ev("recovery_code.used"), 4_002)
            .await
            .expect("gone")
    );
    assert!(!store.get_user("t1").await.expect("get").totp_enabled);
}

async fn case_recordings(store: Store) {
    use guruconnect_store::{Recording, RecordingEnd, RecordingStatus};
    let rec = |id: &str, agent: &str, tenant: &str, started_at| Recording {
        id: id.into(),
        tenant_id: tenant.into(),
        session_id: id.into(),
        agent_id: agent.into(),
        hostname: "host".into(),
        kind: SessionKind::Managed,
        status: RecordingStatus::Recording,
        started_at,
        ended_at: None,
        bytes: 0,
        duration_ms: 0,
        sha256: None,
        error: None,
    };
    store
        .create_recording(&rec("r1", "a1", DEFAULT_TENANT, 1_000))
        .await
        .expect("r1");
    store
        .create_recording(&rec("r2", "a2", DEFAULT_TENANT, 2_000))
        .await
        .expect("r2");
    store
        .create_recording(&rec("r3", "a1", "other", 3_000))
        .await
        .expect("r3");
    assert!(matches!(
        store
            .create_recording(&rec("r1", "a1", DEFAULT_TENANT, 1_000))
            .await,
        Err(StoreError::Conflict("recording exists"))
    ));
    let ids = |v: Vec<Recording>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store
            .list_recordings(DEFAULT_TENANT, None, 10)
            .await
            .expect("query")),
        ["r2", "r1"]
    );
    assert_eq!(
        ids(store
            .list_recordings(DEFAULT_TENANT, Some("a1"), 10)
            .await
            .expect("query")),
        ["r1"]
    );
    assert!(matches!(
        store.get_recording(DEFAULT_TENANT, "r3").await,
        Err(StoreError::NotFound)
    ));

    let open = store.open_recordings(10).await.expect("query");
    assert_eq!(
        ids(open),
        ["r1", "r2", "r3"],
        "every tenant's, oldest first"
    );
    // Only closed recordings expire; a finished one cannot be finished again.
    assert!(
        store
            .recordings_started_before(10_000, 10)
            .await
            .expect("query")
            .is_empty()
    );
    let end = RecordingEnd {
        status: RecordingStatus::Complete,
        ended_at: 5_000,
        bytes: 1234,
        duration_ms: 4_000,
        sha256: Some("ab".repeat(32)),
        error: None,
    };
    store.finish_recording("r1", &end).await.expect("finish");
    assert_eq!(
        ids(store.open_recordings(10).await.expect("query")),
        ["r2", "r3"]
    );
    assert!(matches!(
        store.finish_recording("r1", &end).await,
        Err(StoreError::NotFound)
    ));
    let got = store
        .get_recording(DEFAULT_TENANT, "r1")
        .await
        .expect("query");
    assert_eq!(
        (got.status, got.bytes, got.duration_ms, got.ended_at),
        (RecordingStatus::Complete, 1234, 4_000, Some(5_000))
    );
    assert_eq!(got.sha256, end.sha256);
    assert_eq!(
        ids(store
            .recordings_started_before(1_001, 10)
            .await
            .expect("query")),
        ["r1"]
    );
    assert!(
        store
            .recordings_started_before(1_000, 10)
            .await
            .expect("query")
            .is_empty()
    );

    assert!(matches!(
        store.delete_recording("other", "r1").await,
        Err(StoreError::NotFound)
    ));
    store
        .delete_recording(DEFAULT_TENANT, "r1")
        .await
        .expect("delete");
    assert!(matches!(
        store.get_recording(DEFAULT_TENANT, "r1").await,
        Err(StoreError::NotFound)
    ));
}

async fn case_sessions_of_instances(store: Store) {
    for (id, agent, instance) in [
        ("s-a1", "m-1", Some("gc-a")),
        ("s-a2", "m-2", Some("gc-a")),
        ("s-b1", "m-3", Some("gc-b")),
        ("s-solo", "m-4", None),
    ] {
        store
            .create_session(
                &session(id, agent, SessionStatus::Active, 1_000),
                &ev("session.created"),
            )
            .await
            .expect("create");
        if let Some(instance) = instance {
            store
                .set_session_instance(id, instance)
                .await
                .expect("instance");
        }
    }
    let open: Vec<String> = store
        .open_sessions()
        .await
        .expect("open")
        .into_iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(open, ["s-a1", "s-a2", "s-b1", "s-solo"]);
    let mut held = store.open_session_instances().await.expect("instances");
    held.sort();
    assert_eq!(held, ["gc-a", "gc-b"]);
    let ended = store
        .end_open_sessions_of_instance("gc-a", "server instance lost", 2_000)
        .await
        .expect("end");
    assert_eq!(ended, 2);
    let a1 = store.get_session("s-a1").await.expect("get");
    assert_eq!(a1.status, SessionStatus::Ended);
    assert_eq!(a1.end_reason.as_deref(), Some("server instance lost"));
    assert_eq!(
        store.get_session("s-b1").await.expect("get").status,
        SessionStatus::Active
    );
    assert_eq!(
        store.open_session_instances().await.expect("instances"),
        ["gc-b"]
    );
    // Ending again changes nothing (several instances sweep the same dead one).
    assert_eq!(
        store
            .end_open_sessions_of_instance("gc-a", "again", 3_000)
            .await
            .expect("end"),
        0
    );

    // A machine's new session supersedes its other open ones of the same kind only.
    store
        .create_session(
            &session("s-new", "m-3", SessionStatus::Active, 4_000),
            &ev("session.created"),
        )
        .await
        .expect("create");
    let mut attended = session("s-att", "m-3", SessionStatus::Active, 4_000);
    attended.kind = SessionKind::Attended;
    store
        .create_session(&attended, &ev("session.created"))
        .await
        .expect("create");
    let superseded = store
        .end_other_open_sessions("m-3", SessionKind::Managed, "s-new", "superseded", 5_000)
        .await
        .expect("supersede");
    assert_eq!(superseded, 1);
    assert_eq!(
        store.get_session("s-b1").await.expect("get").status,
        SessionStatus::Ended
    );
    assert_eq!(
        store.get_session("s-new").await.expect("get").status,
        SessionStatus::Active
    );
    assert_eq!(
        store.get_session("s-att").await.expect("get").status,
        SessionStatus::Active
    );
    assert_eq!(
        store.get_session("s-solo").await.expect("get").status,
        SessionStatus::Active
    );
}

async fn case_limits_window_counter(store: Store) {
    let k = "login:192.0.2.1";
    assert_eq!(store.rate_hits(k, 60_000).await.expect("hits"), 0);
    for n in 1..=3 {
        assert_eq!(
            store.count_rate_hit(k, 60_000, 3).await.expect("hit"),
            Some(n)
        );
    }
    // A full window refuses and does not count the refused hit.
    assert_eq!(store.count_rate_hit(k, 60_000, 3).await.expect("hit"), None);
    assert_eq!(store.rate_hits(k, 60_000).await.expect("hits"), 3);
    // A larger cap lets the same window go on.
    assert_eq!(
        store.count_rate_hit(k, 60_000, 4).await.expect("hit"),
        Some(4)
    );
    // Nothing fits under a cap below one, not even the first hit of a window.
    assert_eq!(
        store.count_rate_hit(k, 120_000, 0).await.expect("hit"),
        None
    );
    assert_eq!(store.rate_hits(k, 120_000).await.expect("hits"), 0);
    // Windows and keys are counted apart.
    assert_eq!(
        store.count_rate_hit(k, 120_000, 3).await.expect("hit"),
        Some(1)
    );
    assert_eq!(
        store
            .count_rate_hit("login:192.0.2.2", 60_000, 3)
            .await
            .expect("hit"),
        Some(1)
    );
    assert_eq!(store.rate_hits(k, 60_000).await.expect("hits"), 4);
}

async fn case_limits_concurrent_hits(store: Store) {
    // 48 concurrent hits under a cap of 30: exactly 30 pass, each with its own count.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(48));
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .count_rate_hit("code_validate:192.0.2.9", 0, 30)
                .await
                .expect("hit")
        }));
    }
    let mut counts = Vec::new();
    for t in tasks {
        if let Some(n) = t.await.expect("join") {
            counts.push(n);
        }
    }
    counts.sort_unstable();
    assert_eq!(counts, (1..=30).collect::<Vec<i64>>());
    assert_eq!(
        store
            .rate_hits("code_validate:192.0.2.9", 0)
            .await
            .expect("hits"),
        30
    );

    // Concurrent failures are all counted; the threshold locks the key.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(24));
    let mut tasks = Vec::new();
    for _ in 0..24 {
        let store = store.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .record_limit_failure("code:192.0.2.9", 1_000, 10, 900_000)
                .await
                .expect("failure")
        }));
    }
    let mut locked = 0;
    for t in tasks {
        if t.await.expect("join").is_some() {
            locked += 1;
        }
    }
    assert_eq!(
        locked, 15,
        "the 10th to 24th failures each report the lockout"
    );
    assert_eq!(
        store
            .limit_locked_until("code:192.0.2.9", 1_000)
            .await
            .expect("locked"),
        Some(901_000)
    );
}

async fn case_limits_failure_lockout(store: Store) {
    let k = "code:192.0.2.7";
    assert_eq!(store.limit_locked_until(k, 0).await.expect("read"), None);
    for i in 0..9 {
        assert_eq!(
            store
                .record_limit_failure(k, 1_000 + i, 10, 900_000)
                .await
                .expect("failure"),
            None
        );
    }
    assert_eq!(
        store.limit_locked_until(k, 2_000).await.expect("read"),
        None
    );
    // A success clears the count.
    store.clear_limit_failures(k).await.expect("clear");
    for i in 0..9 {
        store
            .record_limit_failure(k, 2_000 + i, 10, 900_000)
            .await
            .expect("failure");
    }
    assert_eq!(
        store.limit_locked_until(k, 3_000).await.expect("read"),
        None
    );
    assert_eq!(
        store
            .record_limit_failure(k, 3_000, 10, 900_000)
            .await
            .expect("failure"),
        Some(903_000)
    );
    assert_eq!(
        store.limit_locked_until(k, 3_001).await.expect("read"),
        Some(903_000)
    );
    assert_eq!(
        store.limit_locked_until(k, 903_000).await.expect("read"),
        None
    );
    // After the lockout ends, the count starts again.
    assert_eq!(
        store
            .record_limit_failure(k, 903_000, 10, 900_000)
            .await
            .expect("failure"),
        None
    );
    assert_eq!(
        store.limit_locked_until(k, 903_001).await.expect("read"),
        None
    );
    // Keys are locked apart; a threshold of one locks on the first failure.
    assert_eq!(
        store
            .record_limit_failure("enroll:site:x", 5, 1, 10)
            .await
            .expect("failure"),
        Some(15)
    );
    assert_eq!(
        store.limit_locked_until(k, 903_001).await.expect("read"),
        None
    );
}

async fn case_limits_prune(store: Store) {
    store.count_rate_hit("a", 0, 5).await.expect("hit");
    store.count_rate_hit("a", 60_000, 5).await.expect("hit");
    for _ in 0..10 {
        store
            .record_limit_failure("locked", 1_000, 10, 5_000)
            .await
            .expect("failure");
    }
    store
        .record_limit_failure("idle", 1_000, 10, 5_000)
        .await
        .expect("failure");
    store
        .record_limit_failure("recent", 9_000, 10, 5_000)
        .await
        .expect("failure");
    // At 6_000: the lockout is over; "idle" was last touched before 2_000.
    assert_eq!(
        store
            .prune_limits(60_000, 6_000, 2_000)
            .await
            .expect("prune"),
        3
    );
    assert_eq!(store.rate_hits("a", 0).await.expect("hits"), 0);
    assert_eq!(store.rate_hits("a", 60_000).await.expect("hits"), 1);
    // The kept count goes on from where it was.
    for _ in 0..8 {
        store
            .record_limit_failure("recent", 9_000, 10, 5_000)
            .await
            .expect("failure");
    }
    assert_eq!(
        store
            .record_limit_failure("recent", 9_000, 10, 5_000)
            .await
            .expect("failure"),
        Some(14_000)
    );
    assert_eq!(
        store
            .prune_limits(60_000, 6_000, 2_000)
            .await
            .expect("prune"),
        0
    );
}
