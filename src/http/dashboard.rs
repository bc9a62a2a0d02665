//! The dashboard and the browser SDK: the hand-written files of `static/`, embedded in the
//! binary and served at `/` and `/<name>`.
//!
//! Every asset carries a strong `ETag` (a hash of its bytes, so it changes with each build that
//! changes the file) and `Cache-Control: no-cache`, so browsers revalidate and get a 304 instead
//! of a stale copy after an upgrade. The page's `Content-Security-Policy` allows nothing but this
//! origin: no CDN, no inline script, no external request of any kind.

use std::sync::OnceLock;

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Only this origin, for everything; `data:` images for the inline favicon.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../static/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../static/app.js"),
    },
    Asset {
        path: "/sdk.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../static/sdk.js"),
    },
    Asset {
        path: "/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../static/style.css"),
    },
];

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/", index))
        .service(resource("/sdk.js", sdk))
        .service(resource("/app.js", serve))
        .service(resource("/style.css", serve));
}

/// GET and HEAD of one asset; any other method is a 405.
fn resource<H, Args>(path: &str, handler: H) -> actix_web::Resource
where
    H: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    H::Output: actix_web::Responder + 'static,
{
    web::resource(path)
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
        .default_service(crate::error::method_not_allowed("GET, HEAD"))
}

/// The dashboard.
#[utoipa::path(get, path = "/", tag = "dashboard", responses(
    (status = 200, description = "The dashboard page; its scripts and styles are `/app.js`, `/sdk.js`, `/style.css`", content_type = "text/html"),
    (status = 304, description = "Not modified: the `If-None-Match` ETag is current"),
))]
pub async fn index(req: HttpRequest) -> HttpResponse {
    serve(req).await
}

/// The browser SDK: an ES module (`import { CpodClient } from '/sdk.js'`).
#[utoipa::path(get, path = "/sdk.js", tag = "dashboard", responses(
    (status = 200, description = "The browser SDK", content_type = "text/javascript"),
    (status = 304, description = "Not modified: the `If-None-Match` ETag is current"),
))]
pub async fn sdk(req: HttpRequest) -> HttpResponse {
    serve(req).await
}

/// The quoted strong ETag of each asset, computed once.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{}\"", &hex::encode(Sha256::digest(a.body))[..20]))
            .collect()
    })
}

/// Whether an `If-None-Match` header names this ETag (or `*`).
fn matches_etag(req: &HttpRequest, etag: &str) -> bool {
    req.headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|candidate| candidate.trim().trim_start_matches("W/"))
        .any(|candidate| candidate == etag || candidate == "*")
}

/// Answers the asset at the request's path (every route of this module is one).
async fn serve(req: HttpRequest) -> HttpResponse {
    let Some(index) = ASSETS.iter().position(|a| a.path == req.path()) else {
        return actix_web::ResponseError::error_response(&ApiError::not_found("asset"));
    };
    let asset = &ASSETS[index];
    let etag = &etags()[index];
    let not_modified = matches_etag(&req, etag);
    let mut response = if not_modified {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((header::CONTENT_TYPE, asset.content_type))
        .insert_header((
            header::ETAG,
            HeaderValue::from_str(etag).expect("a hex ETag is a valid header"),
        ))
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY));
    if not_modified {
        response.finish()
    } else {
        response.body(asset.body)
    }
}
