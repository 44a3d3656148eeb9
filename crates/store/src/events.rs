//! Append-only audit events.

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Event, EventFilter, Millis, NewEvent, Store, StoreResult, decode_err};

/// Largest page [`Store::list_events`] returns.
pub const MAX_EVENT_PAGE: i64 = 500;

/// A bind value for dynamically built queries.
enum Arg {
    Text(String),
    Int(i64),
}

fn event_from_row(row: &AnyRow) -> StoreResult<Event> {
    let details: String = row.try_get("details")?;
    Ok(Event {
        id: row.try_get("id")?,
        created_at: row.try_get("created_at")?,
        event: NewEvent {
            tenant_id: row.try_get("tenant_id")?,
            event_type: row.try_get("event_type")?,
            user_id: row.try_get("user_id")?,
            username: row.try_get("username")?,
            agent_id: row.try_get("agent_id")?,
            session_id: row.try_get("session_id")?,
            client_ip: row.try_get("client_ip")?,
            details: serde_json::from_str(&details).map_err(decode_err)?,
        },
    })
}

/// Inserts `event` on `conn` (a pooled connection or an open transaction, so a change
/// and its audit event can commit together).
pub(crate) async fn insert_event(
    conn: &mut sqlx::AnyConnection,
    event: &NewEvent,
    now: Millis,
) -> StoreResult<i64> {
    let details = serde_json::to_string(&event.details).map_err(decode_err)?;
    let row = sqlx::query(
        "INSERT INTO events (tenant_id, created_at, event_type, user_id, username, \
         agent_id, session_id, client_ip, details) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
    )
    .bind(&event.tenant_id)
    .bind(now)
    .bind(&event.event_type)
    .bind(event.user_id.as_deref())
    .bind(event.username.as_deref())
    .bind(event.agent_id.as_deref())
    .bind(event.session_id.as_deref())
    .bind(event.client_ip.as_deref())
    .bind(details)
    .fetch_one(&mut *conn)
    .await?;
    Ok(row.try_get("id")?)
}

impl Store {
    /// Appends an event recorded at `now`; returns its id (monotonic, usable as cursor).
    pub async fn record_event(&self, event: &NewEvent, now: Millis) -> StoreResult<i64> {
        let mut conn = self.pool().acquire().await?;
        insert_event(&mut conn, event, now).await
    }

    /// Events matching `filter`, newest first (by id). The page size is clamped to
    /// `1..=500`. `event_type` ending in `.` matches as a prefix, otherwise exactly;
    /// `user` matches the username case-insensitively or the user id exactly.
    pub async fn list_events(&self, filter: &EventFilter) -> StoreResult<Vec<Event>> {
        let mut sql = String::from(
            "SELECT id, tenant_id, created_at, event_type, user_id, username, agent_id, \
             session_id, client_ip, details FROM events WHERE tenant_id = $1",
        );
        let mut args = vec![Arg::Text(filter.tenant_id.clone())];
        fn push(args: &mut Vec<Arg>, arg: Arg) -> usize {
            args.push(arg);
            args.len()
        }
        if let Some(t) = &filter.event_type {
            let n = push(&mut args, Arg::Text(t.clone()));
            if t.ends_with('.') {
                // Not LIKE: its case sensitivity differs between SQLite and PostgreSQL.
                sql.push_str(&format!(" AND substr(event_type, 1, length(${n})) = ${n}"));
            } else {
                sql.push_str(&format!(" AND event_type = ${n}"));
            }
        }
        if let Some(u) = &filter.user {
            let n = push(&mut args, Arg::Text(u.clone()));
            sql.push_str(&format!(
                " AND (lower(username) = lower(${n}) OR user_id = ${n})"
            ));
        }
        if let Some(a) = &filter.agent_id {
            let n = push(&mut args, Arg::Text(a.clone()));
            sql.push_str(&format!(" AND agent_id = ${n}"));
        }
        if let Some(s) = &filter.session_id {
            let n = push(&mut args, Arg::Text(s.clone()));
            sql.push_str(&format!(" AND session_id = ${n}"));
        }
        if let Some(since) = filter.since {
            let n = push(&mut args, Arg::Int(since));
            sql.push_str(&format!(" AND created_at >= ${n}"));
        }
        if let Some(until) = filter.until {
            let n = push(&mut args, Arg::Int(until));
            sql.push_str(&format!(" AND created_at < ${n}"));
        }
        if let Some(before) = filter.before_id {
            let n = push(&mut args, Arg::Int(before));
            sql.push_str(&format!(" AND id < ${n}"));
        }
        let n = push(&mut args, Arg::Int(filter.limit.clamp(1, MAX_EVENT_PAGE)));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${n}"));

        let mut query = sqlx::query(&sql);
        for arg in args {
            query = match arg {
                Arg::Text(s) => query.bind(s),
                Arg::Int(i) => query.bind(i),
            };
        }
        let rows = query.fetch_all(self.pool()).await?;
        rows.iter().map(event_from_row).collect()
    }

    /// The host name of each machine in `agent_ids` that the tenant has or had (removed
    /// machines too: their events outlive them), by agent id.
    pub async fn machine_hostnames(
        &self,
        tenant_id: &str,
        agent_ids: &[&str],
    ) -> StoreResult<std::collections::HashMap<String, String>> {
        let mut names = std::collections::HashMap::new();
        // A page of events names at most MAX_EVENT_PAGE machines; chunk to stay far
        // below either backend's bind-parameter limit.
        for chunk in agent_ids.chunks(100) {
            let placeholders: Vec<String> = (2..chunk.len() + 2).map(|n| format!("${n}")).collect();
            let sql = format!(
                "SELECT agent_id, hostname FROM machines WHERE tenant_id = $1 AND agent_id IN ({})",
                placeholders.join(", ")
            );
            let mut query = sqlx::query(&sql).bind(tenant_id);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(self.pool()).await? {
                names.insert(row.try_get("agent_id")?, row.try_get("hostname")?);
            }
        }
        Ok(names)
    }
}
