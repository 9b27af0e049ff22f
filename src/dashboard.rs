//! The operator dashboard: the page in `web-dashboard/` (embedded in the binary, with the
//! charting library vendored beside it by `scripts/vendor-charts`, so the page loads nothing
//! from elsewhere) at `/dashboard`, and `GET /dashboard/demo-key`, which hands the page the
//! demo tenant's API key when the demo runs (on loopback, by default), so that it opens
//! directly there as the demo page does. Everywhere else the page asks for the tenant's key;
//! the figures come from the analytics API (docs/analytics.md).

use crate::config::DEMO_API_KEY;
use crate::shared::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;

const FILES: &[(&str, &str, &str)] = &[
    ("/dashboard", "text/html; charset=utf-8", include_str!("../web-dashboard/index.html")),
    ("/dashboard/dashboard.js", "text/javascript; charset=utf-8", include_str!("../web-dashboard/dashboard.js")),
    ("/dashboard/style.css", "text/css; charset=utf-8", include_str!("../web-dashboard/style.css")),
    ("/dashboard/vendor/uPlot.iife.min.js", "text/javascript; charset=utf-8", include_str!("../web-dashboard/vendor/uPlot.iife.min.js")),
    ("/dashboard/vendor/uPlot.min.css", "text/css; charset=utf-8", include_str!("../web-dashboard/vendor/uPlot.min.css")),
    ("/dashboard/vendor/uPlot.LICENSE", "text/plain; charset=utf-8", include_str!("../web-dashboard/vendor/uPlot.LICENSE")),
];

pub fn routes() -> Router<Arc<Shared>> {
    let mut r = Router::new().route("/dashboard/demo-key", get(demo_key));
    for (path, mime, body) in FILES {
        r = r.route(path, get(move || async move { ([(header::CONTENT_TYPE, *mime), (header::CACHE_CONTROL, "no-cache")], *body) }));
    }
    r
}

/// The demo tenant's key, only while the demo runs: its key is public then anyway (it is in
/// the README), and the demo only runs on loopback unless told otherwise.
async fn demo_key(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if shared.demo {
        (StatusCode::OK, Json(serde_json::json!({ "key": DEMO_API_KEY, "tenant": crate::config::DEMO_TENANT })))
    } else {
        (StatusCode::NOT_FOUND, Json(serde_json::json!({ "error": "no_demo", "message": "the demo is not running here; use your tenant's API key" })))
    }
}
