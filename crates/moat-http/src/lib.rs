//! Moat's HTTPS adapter: the REST API under `/api/v1`, its OpenAPI document,
//! health and metrics endpoints, and the connection loop that serves them.
//!
//! It translates HTTP into calls on `moat-core`; access decisions are
//! core's (`authz::authorize`, asked through [`auth::Caller::authorize`]).

pub mod auth;
pub mod extract;
pub mod pki;
pub mod problem;
pub mod routes;
pub mod server;
pub mod state;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{PathItem, RefOr};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

pub use problem::{ApiError, Problem};
pub use state::{AppState, Messaging, Settings};

/// The largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// A request that takes longer is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(OpenApi)]
#[openapi(
    info(title = "Moat API", description = "Identity, access and devices of a Moat IoT platform."),
    modifiers(&Security),
    security(("bearer" = []), ("device" = [])),
    components(schemas(Problem))
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token from /auth/login, or an API key (moat_ak_…)",
                    ))
                    .build(),
            ),
        );
        c.add_security_scheme(
            "device",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Device moat_dk_…`: a device key",
            ))),
        );
    }
}

/// Documents error responses as what they are: `ApiError` serves every
/// `Problem` as `application/problem+json`, while `body = Problem` in a
/// handler's annotation says `application/json`. Fixed here, once, rather
/// than in every annotation.
///
/// It runs on the assembled document: `ApiDoc`'s own modifiers run before
/// the routes (and their responses) are nested into it.
struct ProblemContent;

impl Modify for ProblemContent {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        const PROBLEM: &str = "#/components/schemas/Problem";
        let operations = api.paths.paths.values_mut().flat_map(|item| {
            let PathItem {
                get,
                put,
                post,
                delete,
                options,
                head,
                patch,
                trace,
                ..
            } = item;
            [get, put, post, delete, options, head, patch, trace]
                .into_iter()
                .flatten()
        });
        for op in operations {
            for response in op.responses.responses.values_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                let content = std::mem::take(&mut response.content);
                for (media_type, c) in content {
                    let problem =
                        matches!(&c.schema, Some(RefOr::Ref(r)) if r.ref_location == PROBLEM);
                    let media_type = if problem {
                        "application/problem+json".to_owned()
                    } else {
                        media_type
                    };
                    response.content.insert(media_type, c);
                }
            }
        }
    }
}

/// Writes axum's catch-all parameters (`{*subtopic}`) as OpenAPI's plain
/// ones (`{subtopic}`); the parameter's description says it spans segments.
struct WildcardPaths;

impl Modify for WildcardPaths {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        let wild: Vec<String> = api
            .paths
            .paths
            .keys()
            .filter(|p| p.contains("{*"))
            .cloned()
            .collect();
        for path in wild {
            if let Some(item) = api.paths.paths.remove(&path) {
                api.paths.paths.insert(path.replace("{*", "{"), item);
            }
        }
    }
}

/// The API's routes and the OpenAPI document that describes them.
fn documented_api() -> (Router<Arc<AppState>>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .nest("/api/v1", routes::api())
        .split_for_parts();
    ProblemContent.modify(&mut doc);
    WildcardPaths.modify(&mut doc);
    (router, doc)
}

/// The OpenAPI document, generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented_api().1
}

/// The whole HTTP application; tests can drive it without a socket.
pub fn app(state: Arc<AppState>) -> Router {
    let (api_router, api) = documented_api();
    let spec = Arc::new(
        api.to_pretty_json()
            .expect("the OpenAPI document serializes"),
    );
    api_router
        .route(
            "/api/v1/openapi.json",
            get(move || {
                let spec = Arc::clone(&spec);
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        spec.as_str().to_owned(),
                    )
                }
            }),
        )
        .route("/healthz", get(routes::ops::healthz))
        .route("/readyz", get(routes::ops::readyz))
        .route("/metrics", get(routes::ops::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn(record_metrics))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // Method and route only: never headers (they carry credentials).
            let path = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("-", |p| p.as_str())
                .to_owned();
            tracing::info_span!("http", method = %req.method(), route = %path)
        }))
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                ApiError::internal().into_response()
            },
        ))
        // Outermost, to see every response: timeouts and panics drop a
        // body unread too.
        .layer(middleware::from_fn(close_if_body_unread))
}

/// Says `Connection: close` on an HTTP/1 response sent before its
/// request's body was read to the end.
///
/// A request refused early (an unknown path, a bad credential, a malformed
/// parameter) is answered without its body being read. hyper then reads
/// what of the body has already arrived and, if more is due, stops reading
/// and closes the connection after the response; but it wrote that
/// response's head before it found out, so it did not say so, and a client
/// that sends its next request on the connection meets an EOF. With
/// `Connection: close` the close is announced: hyper closes (as it would
/// have, unless the rest of the body had all arrived already) and every
/// client opens a new connection for its next request.
///
/// Draining the rest of the body instead would keep the connection, but
/// only within bounds (`MAX_BODY`, a short deadline) that a large or slow
/// upload exceeds, back to the silent close; and it would have the server
/// read up to a megabyte for every request it refuses, unauthenticated ones
/// included. Closing is right whatever the client does, and costs it one
/// handshake. It applies to any response, not only errors: a handler that
/// ignores a body (a GET that carries one) leaves it unread just the same.
/// HTTP/2 needs none of this: an unread body ends its own stream, not the
/// connection, and HTTP/2 forbids the header.
async fn close_if_body_unread(req: Request, next: Next) -> Response {
    let http1 = req.version() < Version::HTTP_2;
    let (parts, body) = req.into_parts();
    let read = Arc::new(AtomicBool::new(body.is_end_stream()));
    let body = Body::new(ReadToEnd {
        inner: body,
        read: Arc::clone(&read),
    });
    let mut res = next.run(Request::from_parts(parts, body)).await;
    if http1 && !read.load(Ordering::Relaxed) {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// A request body that records, in `read`, having been read to its end.
struct ReadToEnd {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl HttpBody for ReadToEnd {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.inner).poll_frame(cx);
        if matches!(frame, Poll::Ready(None)) || this.inner.is_end_stream() {
            this.read.store(true, Ordering::Relaxed);
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Counts every request by method, route and status, and times it.
async fn record_metrics(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::counter!("moat_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("moat_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
    res
}
