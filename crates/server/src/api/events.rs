//! The audit log: `GET /api/events` (admin), newest first, filterable, cursor-paginated.

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use guruconnect_store::{Event, EventFilter, MAX_EVENT_PAGE};
use serde::{Deserialize, Serialize};

use crate::AppState;
use crate::auth::AdminUser;
use crate::error::{ApiError, ApiResult};

/// `/api/events`.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/events", get(list))
}

/// Filters; all optional.
#[derive(Debug, Deserialize)]
pub struct EventQuery {
    /// Exact type, or a prefix ending in `.` (e.g. `auth.`).
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Username (case-insensitive) or user id.
    user: Option<String>,
    /// Machine.
    agent_id: Option<String>,
    /// Session.
    session_id: Option<String>,
    /// Inclusive lower bound, Unix ms.
    since: Option<i64>,
    /// Exclusive upper bound, Unix ms.
    until: Option<i64>,
    /// Cursor: events older than this id.
    before_id: Option<i64>,
    /// Page size, 1..=500 (default 100).
    limit: Option<i64>,
}

/// An event with the host name of its machine, so the log reads without lookups.
#[derive(Debug, Serialize)]
pub struct EventView {
    #[serde(flatten)]
    event: Event,
    /// The machine's host name when the event names one the server knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
}

/// One page of events.
#[derive(Debug, Serialize)]
pub struct EventPage {
    items: Vec<EventView>,
    /// Pass as `before_id` for the next page; absent on the last page.
    next_before_id: Option<i64>,
}

async fn list(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Query(q): Query<EventQuery>,
) -> ApiResult<Json<EventPage>> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_EVENT_PAGE).contains(&limit) {
        return Err(ApiError::Validation(format!(
            "limit must be between 1 and {MAX_EVENT_PAGE}"
        )));
    }
    let filter = EventFilter {
        tenant_id: admin.user.tenant_id.clone(),
        event_type: q.event_type.filter(|s| !s.is_empty()),
        user: q.user.filter(|s| !s.is_empty()),
        agent_id: q.agent_id.filter(|s| !s.is_empty()),
        session_id: q.session_id.filter(|s| !s.is_empty()),
        since: q.since,
        until: q.until,
        before_id: q.before_id,
        limit,
    };
    let events = state.store.list_events(&filter).await?;
    let next_before_id = if events.len() as i64 == limit {
        events.last().map(|e| e.id)
    } else {
        None
    };
    let mut agent_ids: Vec<&str> = events
        .iter()
        .filter_map(|e| e.event.agent_id.as_deref())
        .collect();
    agent_ids.sort_unstable();
    agent_ids.dedup();
    let hostnames = state
        .store
        .machine_hostnames(&admin.user.tenant_id, &agent_ids)
        .await?;
    let items = events
        .into_iter()
        .map(|event| {
            let hostname = event
                .event
                .agent_id
                .as_deref()
                .and_then(|id| hostnames.get(id).cloned());
            EventView { event, hostname }
        })
        .collect();
    Ok(Json(EventPage {
        items,
        next_before_id,
    }))
}
