//! The distribution-spec HTTP surface: routing of `/v2/...` paths to the store.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use crate::auth::{authorize, issue_token};
use crate::digest::Digest;
use crate::error::RegistryError;
use crate::manifest::{media_types, MAX_MANIFEST_BYTES};
use crate::names::{validate_name, Route};
use crate::store::Registry;
use crate::uploads::blocking;
use crate::{Access, Identity, RegistryAuth};

#[derive(Clone)]
struct AppState {
    registry: Registry,
    auth: Arc<dyn RegistryAuth>,
}

type Query_ = Query<HashMap<String, String>>;

/// Response headers as (lowercase name, value) pairs.
type Headers = Vec<(&'static str, String)>;

/// The registry's routes, all under `/v2` (merge this router, do not nest it):
/// `/v2/`, `/v2/token`, `/v2/_catalog` and `/v2/<name>/{manifests,blobs,blobs/uploads,tags/list,referrers}/...`.
pub fn router(registry: Registry, auth: Arc<dyn RegistryAuth>) -> Router {
    Router::new()
        .route("/v2/", any(base))
        .route("/v2", any(base))
        .route("/v2/token", get(token))
        .route("/v2/_catalog", get(catalog))
        .route("/v2/{*rest}", any(dispatch))
        .layer(middleware::map_response(
            |mut response: Response| async move {
                response.headers_mut().insert(
                    HeaderName::from_static("docker-distribution-api-version"),
                    HeaderValue::from_static("registry/2.0"),
                );
                response
            },
        ))
        .with_state(AppState { registry, auth })
}

async fn base(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, RegistryError> {
    authorize(st.auth.as_ref(), &headers, None, Access::Pull)?;
    Ok(Json(json!({})).into_response())
}

async fn token(State(st): State<AppState>, headers: HeaderMap) -> Result<Response, RegistryError> {
    Ok(Json(issue_token(st.auth.as_ref(), &headers)?).into_response())
}

fn respond(status: StatusCode, headers: Headers, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

#[tracing::instrument(name = "registry", skip_all, fields(%method, path = %rest))]
async fn dispatch(
    State(st): State<AppState>,
    method: Method,
    Path(rest): Path<String>,
    Query(query): Query_,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, RegistryError> {
    let route = Route::parse(&rest)?;
    let access = match method {
        Method::GET | Method::HEAD => Access::Pull,
        Method::DELETE => Access::Delete,
        _ => Access::Push,
    };
    let identity = authorize(st.auth.as_ref(), &headers, Some(route.name()), access)?;
    let reg = st.registry.clone();
    let head = method == Method::HEAD;
    match (route, method) {
        (Route::Manifest { name, reference }, Method::GET | Method::HEAD) => {
            let m = blocking(move || reg.get_manifest(&name, &reference)).await?;
            let headers = vec![
                ("content-type", m.media_type.clone()),
                ("docker-content-digest", m.digest.to_string()),
                ("content-length", m.body.len().to_string()),
            ];
            Ok(respond(
                StatusCode::OK,
                headers,
                if head {
                    Body::empty()
                } else {
                    Body::from(m.body)
                },
            ))
        }
        (Route::Manifest { name, reference }, Method::PUT) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let bytes = read_manifest_body(&headers, body).await?;
            let n = name.clone();
            let put =
                blocking(move || reg.put_manifest(&n, &reference, content_type.as_deref(), bytes))
                    .await?;
            let mut out = vec![
                ("location", format!("/v2/{name}/manifests/{}", put.digest)),
                ("docker-content-digest", put.digest.to_string()),
            ];
            if let Some(subject) = put.subject {
                out.push(("oci-subject", subject.to_string()));
            }
            Ok(respond(StatusCode::CREATED, out, Body::empty()))
        }
        (Route::Manifest { name, reference }, Method::DELETE) => {
            blocking(move || reg.delete_manifest(&name, &reference)).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Route::Blob { name, digest }, Method::GET | Method::HEAD) => {
            let digest: Digest = digest.parse()?;
            let d = digest.clone();
            let (path, size) = blocking(move || reg.blob_file(&name, &d)).await?;
            serve_blob(path, size, &digest, headers.get(header::RANGE), head).await
        }
        (Route::Blob { name, digest }, Method::DELETE) => {
            let digest: Digest = digest.parse()?;
            blocking(move || reg.delete_blob(&name, &digest)).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Route::Upload { name, uuid: None }, Method::POST) => {
            start_upload(reg, &identity, name, &query, body).await
        }
        (
            Route::Upload {
                name,
                uuid: Some(uuid),
            },
            Method::GET,
        ) => {
            let (n, u) = (name.clone(), uuid.clone());
            let size = blocking(move || reg.upload_size(&n, &u)).await?;
            Ok(upload_progress(StatusCode::NO_CONTENT, &name, &uuid, size))
        }
        (
            Route::Upload {
                name,
                uuid: Some(uuid),
            },
            Method::PATCH,
        ) => {
            let range = match headers.get(header::CONTENT_RANGE) {
                Some(v) => Some(parse_content_range(v)?),
                None => None,
            };
            let size = reg
                .append_upload(&name, &uuid, range, body.into_data_stream())
                .await?;
            Ok(upload_progress(StatusCode::ACCEPTED, &name, &uuid, size))
        }
        (
            Route::Upload {
                name,
                uuid: Some(uuid),
            },
            Method::PUT,
        ) => {
            let digest: Digest = query
                .get("digest")
                .ok_or_else(|| {
                    RegistryError::DigestInvalid(
                        "Upload completion needs a digest query parameter".into(),
                    )
                })?
                .parse()?;
            let range = match headers.get(header::CONTENT_RANGE) {
                Some(v) => Some(parse_content_range(v)?),
                None => None,
            };
            reg.finish_upload(&name, &uuid, &digest, range, body.into_data_stream())
                .await?;
            Ok(blob_created(&name, &digest))
        }
        (
            Route::Upload {
                name,
                uuid: Some(uuid),
            },
            Method::DELETE,
        ) => {
            reg.cancel_upload(&name, &uuid).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Route::Tags { name }, Method::GET) => tags_list(reg, name, &query).await,
        (Route::Referrers { name, digest }, Method::GET) => {
            let digest: Digest = digest.parse()?;
            let filter = query.get("artifactType").cloned();
            let f = filter.clone();
            let manifests = blocking(move || reg.referrers(&name, &digest, f.as_deref())).await?;
            let index = json!({ "schemaVersion": 2, "mediaType": media_types::OCI_INDEX, "manifests": manifests });
            let mut out = vec![("content-type", media_types::OCI_INDEX.to_owned())];
            if filter.is_some() {
                out.push(("oci-filters-applied", "artifactType".to_owned()));
            }
            Ok(respond(StatusCode::OK, out, Body::from(index.to_string())))
        }
        (route, method) => Err(RegistryError::Unsupported(format!(
            "{method} is not supported on /v2/{rest} ({})",
            route.name()
        ))),
    }
}

async fn read_manifest_body(headers: &HeaderMap, body: Body) -> Result<Bytes, RegistryError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > MAX_MANIFEST_BYTES as u64) {
        return Err(RegistryError::ManifestTooLarge(len));
    }
    let mut stream = body.into_data_stream();
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| RegistryError::SizeInvalid(format!("Manifest body ended early: {e}")))?;
        buf.extend_from_slice(&chunk);
        if buf.len() > MAX_MANIFEST_BYTES {
            return Err(RegistryError::ManifestTooLarge(buf.len() as u64));
        }
    }
    Ok(buf.freeze())
}

fn blob_created(name: &str, digest: &Digest) -> Response {
    respond(
        StatusCode::CREATED,
        vec![
            ("location", format!("/v2/{name}/blobs/{digest}")),
            ("docker-content-digest", digest.to_string()),
        ],
        Body::empty(),
    )
}

fn upload_progress(status: StatusCode, name: &str, uuid: &str, size: u64) -> Response {
    respond(
        status,
        vec![
            ("location", format!("/v2/{name}/blobs/uploads/{uuid}")),
            ("range", format!("0-{}", size.saturating_sub(1))),
            ("docker-upload-uuid", uuid.to_owned()),
        ],
        Body::empty(),
    )
}

async fn start_upload(
    reg: Registry,
    identity: &Identity,
    name: String,
    query: &HashMap<String, String>,
    body: Body,
) -> Result<Response, RegistryError> {
    if let (Some(mount), Some(from)) = (query.get("mount"), query.get("from")) {
        let digest: Digest = mount.parse()?;
        validate_name(from)?;
        if identity.allows(from, Access::Pull) {
            let (r, n, f, d) = (reg.clone(), name.clone(), from.clone(), digest.clone());
            if blocking(move || r.mount_blob(&n, &f, &d)).await? {
                return Ok(blob_created(&name, &digest));
            }
        }
    }
    if let Some(digest) = query.get("digest") {
        let digest: Digest = digest.parse()?;
        reg.put_blob(&name, &digest, body.into_data_stream())
            .await?;
        return Ok(blob_created(&name, &digest));
    }
    let n = name.clone();
    let uuid = blocking(move || reg.start_upload(&n)).await?;
    Ok(upload_progress(StatusCode::ACCEPTED, &name, &uuid, 0))
}

/// Parses an upload chunk's `Content-Range: <start>-<end>` (a `bytes` prefix is tolerated).
fn parse_content_range(value: &HeaderValue) -> Result<(u64, u64), RegistryError> {
    let text = value.to_str().unwrap_or("");
    let bad = || {
        RegistryError::ContentRangeInvalid(format!("Content-Range {text:?} is not <start>-<end>"))
    };
    let trimmed = text
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches(['=', ' ']);
    let (a, b) = trimmed.split_once('-').ok_or_else(bad)?;
    Ok((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    ))
}

/// Parses a blob request's `Range: bytes=<a>-<b>|<a>-|-<n>` into an inclusive range.
fn parse_range(text: &str, size: u64) -> Result<(u64, u64), RegistryError> {
    let bad = || RegistryError::RangeNotSatisfiable(text.to_owned());
    let spec = text.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| bad())?;
            if n == 0 {
                return Err(bad());
            }
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (a, "") => (a.parse().map_err(|_| bad())?, size.saturating_sub(1)),
        (a, b) => {
            let end: u64 = b.parse().map_err(|_| bad())?;
            (
                a.parse().map_err(|_| bad())?,
                end.min(size.saturating_sub(1)),
            )
        }
    };
    if size == 0 || start > end || start >= size {
        return Err(bad());
    }
    Ok((start, end))
}

async fn serve_blob(
    path: std::path::PathBuf,
    size: u64,
    digest: &Digest,
    range: Option<&HeaderValue>,
    head: bool,
) -> Result<Response, RegistryError> {
    let mut headers = vec![
        ("content-type", "application/octet-stream".to_owned()),
        ("docker-content-digest", digest.to_string()),
        ("accept-ranges", "bytes".to_owned()),
    ];
    let (status, start, len) = match range.and_then(|r| r.to_str().ok()) {
        Some(text) => {
            let (start, end) = parse_range(text, size)?;
            headers.push(("content-range", format!("bytes {start}-{end}/{size}")));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        None => (StatusCode::OK, 0, size),
    };
    headers.push(("content-length", len.to_string()));
    if head {
        return Ok(respond(status, headers, Body::empty()));
    }
    let mut file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| RegistryError::io(format!("open blob {digest}"), e))?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(|e| RegistryError::io(format!("seek blob {digest}"), e))?;
    }
    let stream = ReaderStream::with_capacity(file.take(len), 1 << 20);
    Ok(respond(status, headers, Body::from_stream(stream)))
}

/// One page of a sorted list after `last`, at most `n` long, with the `Link` header
/// pointing at the next page when there is one.
fn paginate(
    all: Vec<String>,
    query: &HashMap<String, String>,
    path: &str,
) -> Result<(Vec<String>, Headers), RegistryError> {
    let n = match query.get("n") {
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            RegistryError::PaginationInvalid(format!("Page size n={v:?} is not a number"))
        })?),
        None => None,
    };
    let last = query.get("last");
    let mut after = all
        .into_iter()
        .filter(|t| last.is_none_or(|l| t.as_str() > l.as_str()));
    let page: Vec<String> = after.by_ref().take(n.unwrap_or(usize::MAX)).collect();
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let (Some(n), Some(last_shown)) = (n, page.last()) {
        if after.next().is_some() {
            headers.push((
                "link",
                format!("<{path}?n={n}&last={last_shown}>; rel=\"next\""),
            ));
        }
    }
    Ok((page, headers))
}

async fn tags_list(
    reg: Registry,
    name: String,
    query: &HashMap<String, String>,
) -> Result<Response, RegistryError> {
    let all = {
        let name = name.clone();
        blocking(move || reg.tags(&name)).await?
    };
    let (page, headers) = paginate(all, query, &format!("/v2/{name}/tags/list"))?;
    let body = json!({ "name": name, "tags": page });
    Ok(respond(
        StatusCode::OK,
        headers,
        Body::from(body.to_string()),
    ))
}

/// `GET /v2/_catalog`: the repositories the caller may pull, paginated like tags.
async fn catalog(
    State(st): State<AppState>,
    Query(query): Query_,
    headers: HeaderMap,
) -> Result<Response, RegistryError> {
    let identity = authorize(st.auth.as_ref(), &headers, None, Access::Pull)?;
    let reg = st.registry.clone();
    let mut all = blocking(move || reg.repositories()).await?;
    all.retain(|name| identity.allows(name, Access::Pull));
    let (page, headers) = paginate(all, &query, "/v2/_catalog")?;
    let body = json!({ "repositories": page });
    Ok(respond(
        StatusCode::OK,
        headers,
        Body::from(body.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), (0, 9));
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), (90, 99));
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), (50, 99));
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=5-1", 100).is_err());
        assert!(parse_range("items=0-1", 100).is_err());
    }

    #[test]
    fn upload_content_ranges() {
        assert_eq!(
            parse_content_range(&HeaderValue::from_static("0-1023")).unwrap(),
            (0, 1023)
        );
        assert_eq!(
            parse_content_range(&HeaderValue::from_static("bytes=5-9")).unwrap(),
            (5, 9)
        );
        assert!(parse_content_range(&HeaderValue::from_static("x")).is_err());
    }
}
