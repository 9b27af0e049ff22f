//! The demo: the page in `web-demo/` (embedded in the binary, so running the server needs no
//! build step) and `GET /demo/token?user=NAME`, which mints a token of the demo tenant.

use crate::config::DEMO_TENANT;
use crate::api::ApiError;
use crate::shared::Shared;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::sync::Arc;

const FILES: &[(&str, &str, &str)] = &[
    ("/", "text/html; charset=utf-8", include_str!("../web-demo/index.html")),
    ("/accolade.js", "text/javascript; charset=utf-8", include_str!("../clients/js/accolade.js")),
    ("/app.js", "text/javascript; charset=utf-8", include_str!("../web-demo/app.js")),
    ("/style.css", "text/css; charset=utf-8", include_str!("../web-demo/style.css")),
];

pub fn routes() -> Router<Arc<Shared>> {
    let mut r = Router::new().route("/demo/token", get(token)).route("/demo/catalogue", get(catalogue));
    for (path, mime, body) in FILES {
        r = r.route(path, get(move || async move { ([(header::CONTENT_TYPE, *mime), (header::CACHE_CONTROL, "no-cache")], *body) }));
    }
    r
}

#[derive(Deserialize)]
struct TokenQuery {
    user: Option<String>,
}

fn query_user(q: Query<TokenQuery>) -> Result<String, ApiError> {
    let user = q.0.user.unwrap_or_default();
    if user.is_empty() || user.len() > 64 || !user.chars().all(|c| c.is_alphanumeric() || "-_. ".contains(c)) {
        return Err(ApiError(StatusCode::BAD_REQUEST, "invalid_user", "user must be 1 to 64 letters, digits, spaces, '-', '_' or '.'".into()));
    }
    Ok(user)
}

async fn token(State(shared): State<Arc<Shared>>, q: Query<TokenQuery>) -> Result<impl IntoResponse, ApiError> {
    let user = query_user(q)?;
    let token = shared
        .keys
        .mint(DEMO_TENANT, &user, crate::auth::now_secs(), 24 * 3600)
        .ok_or_else(|| ApiError(StatusCode::INTERNAL_SERVER_ERROR, "no_demo_tenant", "the demo tenant has no key".into()))?;
    Ok(Json(serde_json::json!({ "token": token, "user": user, "tenant": DEMO_TENANT })))
}

/// The badges of the catalogue in force, for the demo's badge shelf. Hidden badges show as
/// "???" until earned, which the page decides from the welcome's owned list.
async fn catalogue(State(shared): State<Arc<Shared>>) -> Result<Json<serde_json::Value>, ApiError> {
    let cat = shared.catalogue(DEMO_TENANT).ok_or_else(|| ApiError(StatusCode::NOT_FOUND, "no_demo_tenant", "the demo tenant is not configured".into()))?;
    // Retired badges are not on the shelf: nobody can earn them any more.
    let badges: Vec<serde_json::Value> = cat
        .badges
        .iter()
        .filter(|b| !b.retired)
        .map(|b| {
            if b.hidden {
                serde_json::json!({ "id": &*b.id, "name": "???", "description": "???", "tier": b.tier.as_str(), "icon": "❔", "hidden": true })
            } else {
                let mut v = crate::protocol::badge_json(b);
                v["hidden"] = false.into();
                v
            }
        })
        .collect();
    Ok(Json(serde_json::json!({ "version": cat.version, "name": cat.name, "badges": badges })))
}
