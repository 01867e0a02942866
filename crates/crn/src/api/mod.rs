//! The HTTP API (routes only: parse, call the pool or the about module, map errors).
//!
//! - `* /vm/{ref}[/{path}]` and `* /{path}` on host `{base32(hash)}.{domain}`: the program's app
//! - `/about/usage/system`, `/about/executions/list`, `/v2/about/executions/list`,
//!   `/about/executions/records`, `/about/capability`, `/status/config`, `/status/check/fastapi`
//! - `/control/allocations` (scheduler), `/control/allocation/notify` (official clients,
//!   [`crate::control::notify`]), `/control/machine/{ref}/…` (owner: [`crate::control::machine`])
//!
//! Errors are `{"error": ...}` (with `traceback` when an app failed to start); every
//! response carries `Server: aleph-crn/<version>`.

use crate::about;
use crate::error::ProgramError;
use crate::instances::Instances;
use crate::pool::Pool;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Extension, Json, Router};
use serde_json::json;
use std::sync::Arc;

pub const SERVER: &str = concat!("aleph-crn/", env!("CARGO_PKG_VERSION"));
const ITEM_HASH_HEADER: HeaderName = HeaderName::from_static("aleph-program-itemhash");
const CODE_REF_HEADER: HeaderName = HeaderName::from_static("aleph-program-code-ref");

type Shared = State<Arc<Pool>>;

pub fn router(pool: Arc<Pool>, instances: Arc<Instances>) -> Router {
    Router::new()
        .route("/vm/{reference}", any(vm_root))
        .route("/vm/{reference}/", any(vm_root))
        .route("/vm/{reference}/{*path}", any(vm_path))
        .route("/about/usage/system", get(usage))
        .route("/about/executions/list", get(executions_v1))
        .route("/v2/about/executions/list", get(executions_v2))
        .route("/about/executions/records", get(records))
        .route("/about/capability", get(capability))
        .route("/status/config", get(config))
        .route("/status/check/fastapi", get(check_fastapi))
        .route(
            crate::control::ALLOCATIONS_PATH,
            axum::routing::post(crate::control::allocations),
        )
        .route(
            crate::control::notify::NOTIFY_PATH,
            crate::control::notify::route(),
        )
        .merge(crate::control::machine::router(
            pool.clone(),
            instances.clone(),
        ))
        .fallback(not_found)
        .layer(Extension(instances))
        // Host-based routing comes first: on a program's host name every path is the program's.
        .layer(axum::middleware::from_fn_with_state(pool.clone(), by_host))
        .layer(axum::middleware::map_response(server_header))
        .with_state(pool)
}

async fn server_header(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::SERVER, HeaderValue::from_static(SERVER));
    response
}

pub fn error_response(error: &ProgramError) -> Response {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut body = json!({"error": error.to_string()});
    if let Some(traceback) = error.traceback() {
        body["traceback"] = json!(traceback);
    }
    (status, Json(body)).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": "no such route"})),
    )
        .into_response()
}

async fn by_host(State(pool): Shared, request: Request, next: Next) -> Response {
    let hash = pool.config().domain.as_deref().and_then(|domain| {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().host())?;
        aleph_protocol::hostname::hash_from_host(host, domain)
    });
    match hash {
        Some(hash) => proxy(&pool, &hash, request).await,
        None => next.run(request).await,
    }
}

async fn vm_root(State(pool): Shared, Path(reference): Path<String>, request: Request) -> Response {
    forward_path(&pool, &reference, "", request).await
}

async fn vm_path(
    State(pool): Shared,
    Path((reference, path)): Path<(String, String)>,
    request: Request,
) -> Response {
    forward_path(&pool, &reference, &path, request).await
}

/// Strips `/vm/{ref}` from the path, keeping the query.
async fn forward_path(
    pool: &Arc<Pool>,
    reference: &str,
    path: &str,
    mut request: Request,
) -> Response {
    let target = match request.uri().query() {
        Some(query) => format!("/{path}?{query}"),
        None => format!("/{path}"),
    };
    match target.parse() {
        Ok(uri) => *request.uri_mut() = uri,
        Err(e) => return error_response(&ProgramError::BadReference(format!("bad path: {e}"))),
    }
    proxy(pool, reference, request).await
}

async fn proxy(pool: &Arc<Pool>, reference: &str, request: Request) -> Response {
    match pool.forward(reference, request).await {
        Ok((response, execution)) => {
            let (mut parts, body) = response.into_parts();
            parts.version = http::Version::HTTP_11;
            for (name, value) in [
                (ITEM_HASH_HEADER, &execution.program.item_hash),
                (CODE_REF_HEADER, &execution.prepared.code_ref),
            ] {
                if let Ok(value) = HeaderValue::from_str(value) {
                    parts.headers.insert(name, value);
                }
            }
            Response::from_parts(parts, Body::new(body))
        }
        Err(e) => error_response(&e),
    }
}

async fn usage(State(pool): Shared) -> Response {
    Json(about::system_usage(
        &pool.config().data_dir,
        chrono::Utc::now(),
    ))
    .into_response()
}

type SharedInstances = Extension<Arc<Instances>>;

async fn executions_v1(State(pool): Shared, Extension(instances): SharedInstances) -> Response {
    Json(about::executions_v1(&pool.running(), &instances.statuses())).into_response()
}

async fn executions_v2(State(pool): Shared, Extension(instances): SharedInstances) -> Response {
    Json(about::executions_v2(&pool.running(), &instances.statuses())).into_response()
}

async fn records(State(pool): Shared) -> Response {
    match pool.records().list(1000).await {
        Ok(records) => Json(json!({"records": records})).into_response(),
        Err(e) => error_response(&ProgramError::internal(e)),
    }
}

async fn capability(State(pool): Shared) -> Response {
    let (limit, _) = pool.admission().snapshot();
    Json(about::capability(limit.memory_mib, limit.vcpus)).into_response()
}

async fn config(State(pool): Shared) -> Response {
    let config = pool.config();
    let (limit, used) = pool.admission().snapshot();
    Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ccn_url": config.ccn_url(),
        "domain": config.domain,
        "idle_timeout_seconds": config.idle_timeout_seconds,
        "boot_timeout_seconds": config.boot_timeout_seconds,
        "vcpu_overcommit": config.vcpu_overcommit,
        "accel": config.accel,
        "diagnostic_program": config.diagnostic_program,
        "following_updates": pool.is_following_updates(),
        "draining": pool.is_draining(),
        "capacity": limit,
        "used": used,
        "networking": false,
    }))
    .into_response()
}

async fn check_fastapi(State(pool): Shared) -> Response {
    let Some(hash) = pool.config().diagnostic_program.clone() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "no diagnostic program configured (diagnostic_program)"})),
        )
            .into_response();
    };
    let (all, checks) = about::check::fastapi(&pool, &hash).await;
    let status = if all {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(checks)).into_response()
}
