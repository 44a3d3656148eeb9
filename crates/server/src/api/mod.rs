//! REST resources. Each module owns its `router()`; they are merged here, in one place.

pub mod auth;
pub mod codes;
pub mod enroll;
pub mod events;
pub mod installers;
pub mod join;
pub mod machines;
pub mod recordings;
pub mod releases;
pub mod sessions;
pub mod sites;
pub mod system;
pub mod totp;
pub mod users;

use axum::Router;

use crate::AppState;

/// Every API route.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(system::router())
        .merge(auth::router())
        .merge(users::router())
        .merge(totp::router())
        .merge(codes::router())
        .merge(enroll::router())
        .merge(sites::router())
        .merge(installers::router())
        .merge(join::router())
        .merge(system::download_router())
        .merge(events::router())
        .merge(machines::router())
        .merge(releases::router())
        .merge(sessions::router())
        .merge(recordings::router())
        .merge(crate::relay::router())
}
