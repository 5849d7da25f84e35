//! Image references: parsing them (`[registry/]repository[:tag][@digest]`) into an
//! `ImageRef`, and pinning references into the built-in registry to the digest their tag
//! names when a machine is created or updated, so what runs is what was resolved.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use aloft_api::ImageRef;

/// What the built-in registry holds under a reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The manifest's digest (`sha256:…`).
    pub digest: String,
    /// The image config's labels (none for a multi-platform index).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Looks up references in the built-in registry (which the server mounts; the control plane
/// sees it only through this).
pub trait ImageResolver: Send + Sync {
    /// The manifest `repository:reference` names (`reference` a tag or a digest), or `None`
    /// if the registry has no such manifest.
    fn resolve(&self, repository: &str, reference: &str) -> Option<ResolvedImage>;
}

/// Which references are the built-in registry's, and how their tags resolve.
pub struct Images {
    /// The registry's cluster-wide name (`registry.<domain>`).
    registry_name: String,
    resolver: RwLock<Option<Arc<dyn ImageResolver>>>,
    /// Where the server listens: references to these (or to loopback at their port) are ours.
    addresses: RwLock<Vec<SocketAddr>>,
}

impl std::fmt::Debug for Images {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Images")
            .field("registry_name", &self.registry_name)
            .finish_non_exhaustive()
    }
}

impl Images {
    pub fn new(registry_name: impl Into<String>) -> Images {
        Images {
            registry_name: registry_name.into(),
            resolver: RwLock::new(None),
            addresses: RwLock::new(Vec::new()),
        }
    }

    /// Resolves tags in the built-in registry from now on.
    pub fn set_resolver(&self, resolver: Arc<dyn ImageResolver>) {
        *self.resolver.write().unwrap_or_else(|e| e.into_inner()) = Some(resolver);
    }

    /// The server listens here: references naming it are the built-in registry's.
    pub fn note_address(&self, addr: SocketAddr) {
        self.addresses
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(addr);
    }

    /// Whether `registry` (a reference's host\[:port\]) is the built-in registry.
    fn is_builtin(&self, registry: &str) -> bool {
        if registry == self.registry_name {
            return true;
        }
        let addresses = self.addresses.read().unwrap_or_else(|e| e.into_inner());
        let (host, port) = match registry.rsplit_once(':') {
            Some((host, port)) => match port.parse::<u16>() {
                Ok(port) => (host.trim_start_matches('[').trim_end_matches(']'), port),
                Err(_) => return false,
            },
            None => return false,
        };
        let ip = if host == "localhost" {
            Some(std::net::IpAddr::from([127, 0, 0, 1]))
        } else {
            host.parse::<std::net::IpAddr>().ok()
        };
        addresses.iter().any(|a| {
            a.port() == port
                && ip.is_some_and(|ip| ip == a.ip() || ip.is_loopback() || a.ip().is_unspecified())
        })
    }

    /// Parses `reference` for a machine of `app`; one into `app`'s repositories of the
    /// built-in registry (`app` or `app/…`, as the registry scopes app tokens) without a
    /// digest gets its tag's digest and comes back pinned (`registry/repository:tag@sha256:…`).
    /// One into another app's repositories is refused; other registries' references, and
    /// tags the registry does not have (the host reports the missing image), stay as they are.
    ///
    /// A reference that already has a digest keeps it; its labels are filled when the
    /// registry holds it.
    pub fn pin(&self, app: &str, reference: &str) -> Result<(String, ImageRef), ImageRefError> {
        let mut parsed = parse_image_ref(reference)?;
        if !self.is_builtin(&parsed.registry) {
            return Ok((reference.to_owned(), parsed));
        }
        let owner = parsed.repository.split('/').next().unwrap_or_default();
        if owner != app {
            // Hosts pull only their machines' apps' repositories: such a machine could never
            // start, and running another app's private image is what the registry forbids.
            return Err(ImageRefError::OtherApp {
                reference: reference.to_owned(),
                app: app.to_owned(),
                owner: owner.to_owned(),
            });
        }
        let resolver = self
            .resolver
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let lookup = if parsed.digest.is_empty() {
            parsed.tag.clone()
        } else {
            parsed.digest.clone()
        };
        let Some(found) = resolver.and_then(|r| r.resolve(&parsed.repository, &lookup)) else {
            return Ok((reference.to_owned(), parsed));
        };
        parsed.labels = found.labels;
        if !parsed.digest.is_empty() {
            return Ok((reference.to_owned(), parsed));
        }
        let pinned = format!(
            "{}/{}:{}@{}",
            parsed.registry, parsed.repository, parsed.tag, found.digest
        );
        parsed.digest = found.digest;
        Ok((pinned, parsed))
    }
}

/// Why an image reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageRefError {
    #[error("Image reference is empty")]
    Empty,
    #[error("Image reference {0:?} is not valid: {1}")]
    Invalid(String, &'static str),
    #[error("Image {reference} is in app {owner}'s repository; machines of {app} run images of the built-in registry only from {app}'s own repositories (push it as {app}:TAG or {app}/NAME:TAG)")]
    OtherApp {
        reference: String,
        app: String,
        owner: String,
    },
}

const DEFAULT_REGISTRY: &str = "registry-1.docker.io";

/// Parses an image reference the way Docker does, defaulting the registry to Docker Hub
/// and the tag to `latest` (unless a digest is given).
pub fn parse_image_ref(reference: &str) -> Result<ImageRef, ImageRefError> {
    let reference = reference.trim();
    if reference.is_empty() {
        return Err(ImageRefError::Empty);
    }
    let bad = |why| ImageRefError::Invalid(reference.to_owned(), why);
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => {
            let (algo, hex) = digest
                .split_once(':')
                .ok_or_else(|| bad("digest must be algorithm:hex"))?;
            if algo.is_empty() || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(bad("digest must be algorithm:hex"));
            }
            (name, digest.to_owned())
        }
        None => (reference, String::new()),
    };
    let (registry, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_owned(), rest)
        }
        _ => (DEFAULT_REGISTRY.to_owned(), name),
    };
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((_, "")) => return Err(bad("tag after ':' is empty")),
        Some((repo, tag)) if !tag.contains('/') => (repo, tag.to_owned()),
        _ => (rest, String::new()),
    };
    if repository.is_empty() {
        return Err(bad("repository name is empty"));
    }
    let component_ok = |c: &str| {
        !c.is_empty()
            && c.chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "._-".contains(ch))
            && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
    };
    if !repository.split('/').all(component_ok) {
        return Err(bad(
            "repository must be lowercase letters, digits, '.', '_', '-' and '/'",
        ));
    }
    if !tag.is_empty()
        && (tag.len() > 128
            || !tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            || !tag
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(bad(
            "tag must be letters, digits, '.', '_' and '-' (at most 128)",
        ));
    }
    if registry.contains(|c: char| c.is_whitespace() || c == '@') {
        return Err(bad("registry host is not valid"));
    }
    let repository = if registry == DEFAULT_REGISTRY && !repository.contains('/') {
        format!("library/{repository}")
    } else {
        repository.to_owned()
    };
    let tag = if tag.is_empty() && digest.is_empty() {
        "latest".to_owned()
    } else {
        tag
    };
    Ok(ImageRef {
        registry,
        repository,
        tag,
        digest,
        labels: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_short_names_get_library_and_latest() {
        let r = parse_image_ref("nginx").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_str()),
            (DEFAULT_REGISTRY, "library/nginx", "latest")
        );
    }

    #[test]
    fn registry_with_port_tag_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_image_ref(&format!("localhost:5000/team/app:v1.2@{d}")).unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "team/app");
        assert_eq!(r.tag, "v1.2");
        assert_eq!(r.digest, d);
    }

    struct OneTag;

    impl ImageResolver for OneTag {
        fn resolve(&self, repository: &str, reference: &str) -> Option<ResolvedImage> {
            let digest = format!("sha256:{}", "b".repeat(64));
            let known = repository == "web/app" && (reference == "v1" || reference == digest);
            known.then(|| ResolvedImage {
                digest,
                labels: [("version".to_owned(), "1".to_owned())].into(),
            })
        }
    }

    #[test]
    fn builtin_tags_are_pinned_and_other_references_kept() {
        let images = Images::new("registry.example.test");
        images.note_address("0.0.0.0:4280".parse().unwrap());
        images.set_resolver(Arc::new(OneTag));
        let digest = format!("sha256:{}", "b".repeat(64));
        for ours in [
            "registry.example.test/web/app:v1",
            "127.0.0.1:4280/web/app:v1",
            "localhost:4280/web/app:v1",
        ] {
            let (pinned, r) = images.pin("web", ours).unwrap();
            let host = ours.split('/').next().unwrap();
            assert_eq!(pinned, format!("{host}/web/app:v1@{digest}"));
            assert_eq!((r.tag.as_str(), r.digest.as_str()), ("v1", digest.as_str()));
            assert_eq!(r.labels.get("version").map(String::as_str), Some("1"));
        }
        // Already pinned to what the registry holds: kept, labels filled.
        let pinned = format!("localhost:4280/web/app:v1@{digest}");
        let (same, r) = images.pin("web", &pinned).unwrap();
        assert_eq!((same.as_str(), r.labels.len()), (pinned.as_str(), 1));
        // Another app's repository is refused for this one, without resolving it.
        let err = images.pin("api", "127.0.0.1:4280/web/app:v1").unwrap_err();
        assert!(
            matches!(&err, ImageRefError::OtherApp { owner, .. } if owner == "web"),
            "{err}"
        );
        // Elsewhere, an unknown tag, or already pinned: unchanged.
        let other = format!("sha256:{}", "c".repeat(64));
        for kept in [
            "127.0.0.1:5000/web/app:v1".to_owned(),
            "registry.example.test/web/app:v2".to_owned(),
            format!("registry.example.test/web/app:v1@{other}"),
            "docker.io/web/app:v1".to_owned(),
        ] {
            let (same, r) = images.pin("web", &kept).unwrap();
            assert_eq!(same, kept);
            assert_eq!(r.digest, kept.split_once('@').map_or("", |(_, d)| d));
        }
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "UPPER/case",
            "nginx:bad tag",
            "nginx@sha256:xyz",
            "a//b",
            "nginx:",
        ] {
            assert!(parse_image_ref(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
