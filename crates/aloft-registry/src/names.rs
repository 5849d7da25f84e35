//! Repository names, references and the parsing of `/v2/<name>/...` paths.

use crate::digest::Digest;
use crate::error::RegistryError;

/// A manifest reference: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub(crate) fn parse(s: &str) -> Result<Reference, RegistryError> {
        if s.contains(':') {
            return Ok(Reference::Digest(s.parse()?));
        }
        validate_tag(s)?;
        Ok(Reference::Tag(s.to_owned()))
    }
}

/// What a path under `/v2/` addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Manifest {
        name: String,
        reference: String,
    },
    Blob {
        name: String,
        digest: String,
    },
    /// `uuid` is `None` for `POST /v2/<name>/blobs/uploads/`.
    Upload {
        name: String,
        uuid: Option<String>,
    },
    Tags {
        name: String,
    },
    Referrers {
        name: String,
        digest: String,
    },
}

impl Route {
    pub(crate) fn name(&self) -> &str {
        match self {
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Upload { name, .. }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => name,
        }
    }

    /// Parses the part of the path after `/v2/`. The repository name is validated; the
    /// trailing reference, digest or upload id is only split off.
    pub(crate) fn parse(rest: &str) -> Result<Route, RegistryError> {
        let route = if let Some(name) = rest.strip_suffix("/tags/list") {
            Route::Tags {
                name: name.to_owned(),
            }
        } else if let Some((name, tail)) = split_last(rest, "/manifests/") {
            Route::Manifest {
                name,
                reference: tail,
            }
        } else if let Some((name, tail)) = split_last(rest, "/referrers/") {
            Route::Referrers { name, digest: tail }
        } else if let Some(name) = rest.strip_suffix("/blobs/uploads") {
            Route::Upload {
                name: name.to_owned(),
                uuid: None,
            }
        } else if let Some((name, tail)) = split_last(rest, "/blobs/uploads/") {
            let uuid = (!tail.is_empty()).then_some(tail);
            Route::Upload { name, uuid }
        } else if let Some((name, tail)) = split_last(rest, "/blobs/") {
            Route::Blob { name, digest: tail }
        } else {
            return Err(RegistryError::NameInvalid(format!(
                "Path /v2/{rest} is not a registry endpoint"
            )));
        };
        validate_name(route.name())?;
        Ok(route)
    }
}

/// Splits at the last `sep` when what follows it has no further `/`.
fn split_last(rest: &str, sep: &str) -> Option<(String, String)> {
    let (name, tail) = rest.rsplit_once(sep)?;
    (!tail.contains('/')).then(|| (name.to_owned(), tail.to_owned()))
}

/// Checks a repository name against the distribution-spec grammar
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
pub(crate) fn validate_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty() && name.len() <= 255 && name.split('/').all(valid_component);
    if ok {
        Ok(())
    } else {
        Err(RegistryError::NameInvalid(format!(
            "Repository name {name:?} is not valid (lowercase letters, digits and separators . _ __ - between them, components joined by /)"
        )))
    }
}

fn valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    loop {
        // One run of [a-z0-9]+.
        let start = i;
        while i < bytes.len() && alnum(bytes[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        // One separator: ".", "_", "__" or "-+".
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// Checks a tag against `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
pub(crate) fn validate_tag(tag: &str) -> Result<(), RegistryError> {
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes[1..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::TagInvalid(format!(
            "Tag {tag:?} is not valid"
        )))
    }
}

/// Checks an upload id (32 lowercase hex characters, as the registry issues them).
pub(crate) fn validate_upload_id(uuid: &str) -> Result<(), RegistryError> {
    let ok = uuid.len() == 32
        && uuid
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RegistryError::BlobUploadUnknown(uuid.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_spec_grammar() {
        for good in ["a", "app", "app/sub", "a.b_c__d---e/f0", "my-app/web/v2"] {
            assert!(validate_name(good).is_ok(), "{good} rejected");
        }
        for bad in [
            "", "App", "../etc", "a/../b", "a//b", "/a", "a/", "a___b", "a.-b", "-a", "a-", "a b",
            "a%2fb",
        ] {
            assert!(validate_name(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn routes_split_nested_names() {
        assert_eq!(
            Route::parse("app/sub/manifests/latest").unwrap(),
            Route::Manifest {
                name: "app/sub".into(),
                reference: "latest".into()
            }
        );
        assert_eq!(
            Route::parse("app/blobs/uploads/").unwrap(),
            Route::Upload {
                name: "app".into(),
                uuid: None
            }
        );
        assert_eq!(
            Route::parse("app/blobs/uploads").unwrap(),
            Route::Upload {
                name: "app".into(),
                uuid: None
            }
        );
        assert_eq!(
            Route::parse("a/blobs/b/blobs/uploads/abc").unwrap(),
            Route::Upload {
                name: "a/blobs/b".into(),
                uuid: Some("abc".into())
            }
        );
        assert_eq!(
            Route::parse("x/y/blobs/sha256:00").unwrap(),
            Route::Blob {
                name: "x/y".into(),
                digest: "sha256:00".into()
            }
        );
        assert_eq!(
            Route::parse("x/tags/list").unwrap(),
            Route::Tags { name: "x".into() }
        );
        assert_eq!(
            Route::parse("x/referrers/sha256:1").unwrap(),
            Route::Referrers {
                name: "x".into(),
                digest: "sha256:1".into()
            }
        );
        assert!(matches!(
            Route::parse("../../etc/blobs/sha256:00"),
            Err(RegistryError::NameInvalid(_))
        ));
        assert!(matches!(
            Route::parse("whatever"),
            Err(RegistryError::NameInvalid(_))
        ));
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        assert!(validate_tag("v1.2_3-rc").is_ok());
        assert!(validate_tag(".hidden").is_err());
        assert!(validate_tag(&"a".repeat(129)).is_err());
        assert!(Reference::parse("sha256:zz").is_err());
    }
}
