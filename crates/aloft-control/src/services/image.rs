//! Parsing image references (`[registry/]repository[:tag][@digest]`) into an `ImageRef`.

use aloft_api::ImageRef;

/// Why an image reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageRefError {
    #[error("Image reference is empty")]
    Empty,
    #[error("Image reference {0:?} is not valid: {1}")]
    Invalid(String, &'static str),
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
