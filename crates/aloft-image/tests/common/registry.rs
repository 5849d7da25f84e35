//! A minimal OCI distribution server over real HTTP: serves manifests and blobs it was given,
//! counts blob requests, and optionally demands a bearer token from its own token endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::BuiltImage;

#[derive(Default)]
pub struct Content {
    /// (repository, tag or digest) -> (bytes, media type)
    pub manifests: HashMap<(String, String), (Vec<u8>, String)>,
    pub blobs: HashMap<String, Vec<u8>>,
    /// Required basic credentials for the token endpoint; `None` means no auth at all.
    pub auth: Option<(String, String)>,
}

impl Content {
    pub fn add_image(&mut self, repo: &str, tag: &str, img: &BuiltImage) {
        let mt = "application/vnd.oci.image.manifest.v1+json".to_owned();
        self.manifests.insert(
            (repo.into(), tag.into()),
            (img.manifest.clone(), mt.clone()),
        );
        self.manifests.insert(
            (repo.into(), img.manifest_digest.clone()),
            (img.manifest.clone(), mt),
        );
        for (d, b) in img.blobs() {
            self.blobs.insert(d, b);
        }
    }

    pub fn add_index(&mut self, repo: &str, tag: &str, index: Vec<u8>) {
        let mt = "application/vnd.oci.image.index.v1+json".to_owned();
        let digest = super::sha256(&index);
        self.manifests
            .insert((repo.into(), digest), (index.clone(), mt.clone()));
        self.manifests
            .insert((repo.into(), tag.into()), (index, mt));
    }
}

pub struct Fixture {
    pub addr: SocketAddr,
    state: Arc<Shared>,
}

struct Shared {
    content: Content,
    blob_gets: Mutex<HashMap<String, usize>>,
    addr: Mutex<Option<SocketAddr>>,
}

const TOKEN: &str = "fixture-token";

impl Fixture {
    pub async fn start(content: Content) -> Fixture {
        let state = Arc::new(Shared {
            content,
            blob_gets: Mutex::default(),
            addr: Mutex::default(),
        });
        let app = Router::new()
            .route("/token", get(token))
            .route("/v2/{*rest}", get(v2))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        *state.addr.lock().unwrap() = Some(addr);
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Fixture { addr, state }
    }

    /// How many times each blob was served with 200.
    pub fn blob_gets(&self) -> HashMap<String, usize> {
        self.state.blob_gets.lock().unwrap().clone()
    }
}

async fn token(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    use base64::Engine as _;
    let Some((user, pass)) = &s.content.auth else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given != Some(want.as_str()) || q.get("service").map(String::as_str) != Some("fixture") {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    axum::Json(serde_json::json!({ "token": TOKEN })).into_response()
}

async fn v2(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(rest): Path<String>,
) -> Response {
    let (repo, kind, reference) = if let Some((repo, r)) = rest.split_once("/manifests/") {
        (repo, "manifests", r)
    } else if let Some((repo, r)) = rest.split_once("/blobs/") {
        (repo, "blobs", r)
    } else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if s.content.auth.is_some() {
        let ok = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"));
        if !ok {
            let addr = s.addr.lock().unwrap().unwrap();
            let challenge = format!(
                r#"Bearer realm="http://{addr}/token",service="fixture",scope="repository:{repo}:pull""#
            );
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, challenge)],
            )
                .into_response();
        }
    }
    match kind {
        "manifests" => match s
            .content
            .manifests
            .get(&(repo.to_owned(), reference.to_owned()))
        {
            Some((bytes, mt)) => {
                ([(header::CONTENT_TYPE, mt.clone())], bytes.clone()).into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        },
        _ => match s.content.blobs.get(reference) {
            Some(bytes) => {
                *s.blob_gets
                    .lock()
                    .unwrap()
                    .entry(reference.to_owned())
                    .or_default() += 1;
                bytes.clone().into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        },
    }
}
