//! A client for the OCI distribution API: references, the bearer-token dance, manifests and
//! verified blob downloads.

use std::path::Path;

use futures::StreamExt;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Response, StatusCode};
use tokio::io::AsyncWriteExt;

use crate::digest::{Digest, Hasher};
use crate::oci::{self, Parsed};
use crate::store::{Assembly, BlobSource, LayerDesc};
use crate::{Credentials, Image, ImageError, ImageStore, PullOptions};

/// Manifests and configs larger than this are refused.
const DOCUMENT_LIMIT: usize = 4 << 20;

/// A parsed `[host[:port]/]name[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub(crate) fn parse(
        input: &str,
        default_registry: Option<&str>,
    ) -> Result<Reference, ImageError> {
        let bad = |reason: &str| ImageError::InvalidReference {
            reference: input.to_owned(),
            reason: reason.to_owned(),
        };
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => (rest, Some(d.parse::<Digest>()?)),
            None => (input, None),
        };
        let (host, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_owned(), path)
            }
            _ => (
                default_registry
                    .ok_or_else(|| bad("it names no registry and no default registry is set"))?
                    .to_owned(),
                rest,
            ),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, Some(tag.to_owned())),
            _ => (path, None),
        };
        let valid_repo = !repository.is_empty()
            && repository.split('/').all(|part| {
                !part.is_empty()
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            });
        if !valid_repo {
            return Err(bad("the repository name is not valid"));
        }
        if let Some(t) = &tag {
            if t.is_empty()
                || t.len() > 128
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(bad("the tag is not valid"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        let repository = if host == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_owned()
        };
        Ok(Reference {
            registry: host,
            repository,
            tag,
            digest,
        })
    }

    /// What to put after `/manifests/`.
    fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// One repository on one registry, with the authorization obtained for it.
pub(crate) struct RegistryClient {
    http: reqwest::Client,
    base: String,
    registry: String,
    /// `host[:port]` the requests go to: credentials go nowhere else.
    authority: String,
    repository: String,
    credentials: Option<Credentials>,
    authorization: tokio::sync::Mutex<Option<HeaderValue>>,
}

fn http_err(url: &str) -> impl FnOnce(reqwest::Error) -> ImageError + '_ {
    move |source| ImageError::Http {
        url: url.to_owned(),
        source,
    }
}

fn size_error(digest: &Digest, len: u64, size: Option<u64>) -> ImageError {
    ImageError::invalid(
        format!("blob {digest}"),
        format!(
            "the registry sent {len} bytes or more, the manifest says {}",
            size.unwrap_or_default()
        ),
    )
}

/// Parse `Bearer realm="…",service="…",scope="…"` into its scheme and parameters.
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.push((key.trim().to_ascii_lowercase(), value));
    }
    (scheme.to_ascii_lowercase(), params)
}

/// `host[:port]` of a token realm URL, as written in the URL.
fn realm_authority(realm: &str) -> Option<String> {
    let url = reqwest::Url::parse(realm).ok()?;
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

impl RegistryClient {
    pub(crate) fn new(
        http: reqwest::Client,
        reference: &Reference,
        opts: &PullOptions,
    ) -> RegistryClient {
        let host = opts.resolve(&reference.registry);
        let access = opts.access(host);
        let scheme = if access.plain_http { "http" } else { "https" };
        // Docker Hub's canonical name is not its API host.
        let api_host = match host {
            "docker.io" | "index.docker.io" => "registry-1.docker.io",
            other => other,
        };
        RegistryClient {
            http,
            base: format!("{scheme}://{api_host}/v2/{}", reference.repository),
            registry: reference.registry.clone(),
            authority: api_host.to_owned(),
            repository: reference.repository.clone(),
            credentials: access.credentials,
            authorization: tokio::sync::Mutex::new(None),
        }
    }

    fn basic(&self) -> Option<HeaderValue> {
        use base64::Engine as _;
        let c = self.credentials.as_ref()?;
        let pair = format!("{}:{}", c.username, c.password);
        let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
        HeaderValue::from_str(&format!("Basic {encoded}")).ok()
    }

    fn auth_err(&self, reason: impl Into<String>) -> ImageError {
        ImageError::Auth {
            registry: self.registry.clone(),
            reason: reason.into(),
        }
    }

    /// Answer a 401 challenge; afterwards requests carry the obtained authorization.
    async fn authenticate(&self, challenge: &str) -> Result<(), ImageError> {
        let (scheme, params) = parse_challenge(challenge);
        let param = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let value = match scheme.as_str() {
            "basic" => self
                .basic()
                .ok_or_else(|| self.auth_err("the registry wants credentials"))?,
            "bearer" => {
                let realm = param("realm")
                    .ok_or_else(|| self.auth_err("the bearer challenge has no realm"))?;
                let scope = param("scope")
                    .unwrap_or_else(|| format!("repository:{}:pull", self.repository));
                let mut query = vec![("scope", scope)];
                query.extend(param("service").map(|s| ("service", s)));
                let mut req = self.http.get(&realm).query(&query);
                // A token service on another host gets no credentials: a registry must not be
                // able to send them wherever its challenge points.
                if realm_authority(&realm).as_deref() == Some(self.authority.as_str()) {
                    if let Some(basic) = self.basic() {
                        req = req.header(AUTHORIZATION, basic);
                    }
                }
                let resp = req.send().await.map_err(http_err(&realm))?;
                if !resp.status().is_success() {
                    return Err(
                        self.auth_err(format!("the token service answered {}", resp.status()))
                    );
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token = resp.json().await.map_err(http_err(&realm))?;
                let token = t
                    .token
                    .or(t.access_token)
                    .ok_or_else(|| self.auth_err("the token service sent no token"))?;
                HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| self.auth_err("the token is not a valid header"))?
            }
            other => return Err(self.auth_err(format!("unsupported challenge scheme {other:?}"))),
        };
        *self.authorization.lock().await = Some(value);
        Ok(())
    }

    /// GET `<base><path>`, answering one authentication challenge if needed.
    async fn get(&self, path: &str, accept: Option<&str>) -> Result<Response, ImageError> {
        let url = format!("{}{path}", self.base);
        let mut challenged = false;
        loop {
            let mut req = self.http.get(&url);
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(auth) = self.authorization.lock().await.clone() {
                req = req.header(AUTHORIZATION, auth);
            }
            let resp = req.send().await.map_err(http_err(&url))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !challenged {
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.auth_err("401 without a WWW-Authenticate challenge"))?
                    .to_owned();
                self.authenticate(&challenge).await?;
                challenged = true;
                continue;
            }
            if !resp.status().is_success() {
                return Err(ImageError::RegistryStatus {
                    url,
                    status: resp.status().as_u16(),
                });
            }
            return Ok(resp);
        }
    }

    async fn bytes_limited(resp: Response, url: &str) -> Result<Vec<u8>, ImageError> {
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk.map_err(http_err(url))?);
            if out.len() > DOCUMENT_LIMIT {
                return Err(ImageError::invalid(url, "document larger than 4 MiB"));
            }
        }
        Ok(out)
    }

    /// A manifest or index by tag or digest, with its digest (verified when asked by digest).
    pub(crate) async fn manifest(&self, reference: &str) -> Result<(Vec<u8>, Digest), ImageError> {
        let accept = [
            oci::OCI_MANIFEST,
            oci::OCI_INDEX,
            oci::DOCKER_MANIFEST,
            oci::DOCKER_LIST,
        ]
        .join(", ");
        let path = format!("/manifests/{reference}");
        let resp = self.get(&path, Some(&accept)).await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = Self::bytes_limited(resp, &path).await?;
        let digest = match reference.parse::<Digest>() {
            Ok(d) => {
                d.verify(&bytes)?;
                d
            }
            Err(_) => Digest::sha256_of(&bytes),
        };
        tracing::debug!(%digest, content_type, "manifest fetched");
        Ok((bytes, digest))
    }

    /// A small blob (a config), verified.
    pub(crate) async fn blob_bytes(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = format!("/blobs/{digest}");
        let resp = self.get(&path, None).await?;
        let bytes = Self::bytes_limited(resp, &path).await?;
        digest.verify(&bytes)?;
        Ok(bytes)
    }

    /// Stream a blob into `dest`, hashing as it arrives; on a digest or size mismatch
    /// `dest` is removed. A blob longer than `size` is cut off as soon as it overflows.
    pub(crate) async fn blob_to_file(
        &self,
        digest: &Digest,
        dest: &Path,
        size: Option<u64>,
    ) -> Result<u64, ImageError> {
        let path = format!("/blobs/{digest}");
        let resp = self.get(&path, None).await?;
        let result = async {
            let mut file = tokio::fs::File::create(dest)
                .await
                .map_err(ImageError::io(dest))?;
            let mut hasher = Hasher::new(digest.algorithm());
            let mut len = 0u64;
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(http_err(&path))?;
                hasher.update(&chunk);
                len += chunk.len() as u64;
                if size.is_some_and(|s| len > s) {
                    return Err(size_error(digest, len, size));
                }
                file.write_all(&chunk).await.map_err(ImageError::io(dest))?;
            }
            file.flush().await.map_err(ImageError::io(dest))?;
            if size.is_some_and(|s| len != s) {
                return Err(size_error(digest, len, size));
            }
            digest.check(&hasher.finish())?;
            Ok(len)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(dest).await;
        }
        result
    }
}

impl ImageStore {
    /// Pull `reference` (`[host[:port]/]name[:tag][@digest]`) from its registry: resolve an
    /// index to its linux/amd64 manifest, then fetch the config and every missing layer.
    #[tracing::instrument(skip(self, opts), err(Display))]
    pub async fn pull(&self, reference: &str, opts: &PullOptions) -> Result<Image, ImageError> {
        let parsed = Reference::parse(reference, opts.default_registry.as_deref())?;
        let client = RegistryClient::new(self.inner.http.clone(), &parsed, opts);
        let (mut bytes, mut digest) = client.manifest(&parsed.manifest_ref()).await?;
        let (config, layers) = loop {
            match oci::parse_document(&bytes, &format!("manifest {digest}"))? {
                Parsed::Index(list) => {
                    let chosen = oci::pick_platform(&list, &digest.to_string())?.digest()?;
                    (bytes, digest) = client.manifest(&chosen.to_string()).await?;
                }
                Parsed::Manifest { config, layers } => break (config, layers),
            }
        };
        let config_digest = config.digest()?;
        let _pin = self.pin(&config_digest);
        let config_bytes = self
            .ensure_blob(&config_digest, BlobSource::Remote(&client))
            .await?;
        let layers = layers
            .iter()
            .map(|l| {
                Ok(LayerDesc {
                    digest: l.digest()?,
                    media_type: l.media_type.clone(),
                    size: l.size,
                })
            })
            .collect::<Result<Vec<_>, ImageError>>()?;
        let mut references = vec![parsed.to_string()];
        if reference != references[0] {
            references.push(reference.to_owned());
        }
        let assembly = Assembly {
            references,
            manifest_digest: digest,
            manifest_bytes: bytes,
            config_digest,
            config_bytes,
            layers,
        };
        self.assemble(assembly, |_| Ok(BlobSource::Remote(&client)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_and_without_registry() {
        let r = Reference::parse("127.0.0.1:5000/team/app:v1", None).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("127.0.0.1:5000", "team/app")
        );
        assert_eq!(r.tag.as_deref(), Some("v1"));
        let r = Reference::parse("app", Some("registry.local")).unwrap();
        assert_eq!(r.to_string(), "registry.local/app:latest");
        let d = format!("sha256:{}", "0".repeat(64));
        let r = Reference::parse(&format!("localhost/app@{d}"), None).unwrap();
        assert_eq!(r.manifest_ref(), d);
        assert!(Reference::parse("app", None).is_err());
        let hub = Reference::parse("docker.io/alpine", None).unwrap();
        assert_eq!(hub.to_string(), "docker.io/library/alpine:latest");
        assert!(Reference::parse("host.io/App", None).is_err());
    }

    #[test]
    fn bearer_challenge_parameters() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(
            params[0],
            ("realm".into(), "https://auth.example/token".into())
        );
        assert_eq!(params[1], ("service".into(), "registry.example".into()));
        assert_eq!(
            params[2],
            ("scope".into(), "repository:a/b:pull,push".into())
        );
    }
}
