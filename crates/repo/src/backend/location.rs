//! Where a repository lives ([`Location`], parsed from restic's repository strings) and where
//! each of its files lives inside it ([`FileType`]).

use crate::backend::BackendError;
use crate::Id;

/// The kinds of files in a repository and the folder each lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileType {
    /// `keys/`
    Key,
    /// `locks/`
    Lock,
    /// `snapshots/`
    Snapshot,
    /// `index/`
    Index,
    /// `data/xx/`
    Pack,
}

impl FileType {
    /// The folder name.
    pub fn dir(self) -> &'static str {
        match self {
            FileType::Key => "keys",
            FileType::Lock => "locks",
            FileType::Snapshot => "snapshots",
            FileType::Index => "index",
            FileType::Pack => "data",
        }
    }

    /// The path of file `id` of this type, relative to the repository root.
    pub fn path(self, id: &Id) -> String {
        let hex = id.to_hex();
        match self {
            FileType::Pack => format!("data/{}/{hex}", &hex[..2]),
            _ => format!("{}/{hex}", self.dir()),
        }
    }
}

/// Where a repository lives, parsed from restic's URL forms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `/path`, `local:/path` or a relative path.
    Local {
        /// Directory of the repository.
        path: String,
    },
    /// `s3:http(s)://host[:port]/bucket[/prefix]` or `s3:host/bucket[/prefix]` (https).
    S3 {
        /// `http(s)://host[:port]`.
        endpoint: String,
        /// Bucket name.
        bucket: String,
        /// Key prefix inside the bucket (may be empty).
        prefix: String,
    },
    /// `azure:container:/path` (Azure Blob Storage).
    Azure {
        /// Container name.
        container: String,
        /// Blob name prefix inside the container (may be empty).
        prefix: String,
    },
    /// `gs:bucket:/path` (Google Cloud Storage).
    Gcs {
        /// Bucket name.
        bucket: String,
        /// Object name prefix inside the bucket (may be empty).
        prefix: String,
    },
    /// `rest:http(s)://[user:password@]host[:port]/path` (restic's REST server protocol).
    Rest {
        /// The server URL, credentials included when the URL had them.
        url: RestUrl,
    },
}

impl Location {
    /// Parses restic's repository string.
    pub fn parse(repo: &str) -> Result<Self, BackendError> {
        let bad = || BackendError::Location(repo.to_string());
        if let Some(loc) = parse_s3(repo)
            .or_else(|| {
                parse_bucket(repo, "azure:", |container, prefix| Location::Azure {
                    container,
                    prefix,
                })
            })
            .or_else(|| {
                parse_bucket(repo, "gs:", |bucket, prefix| Location::Gcs {
                    bucket,
                    prefix,
                })
            })
            .or_else(|| parse_rest(repo))
        {
            return loc;
        }
        if let Some(path) = repo.strip_prefix("local:") {
            return Ok(Location::Local {
                path: path.to_string(),
            });
        }
        // Any other `scheme:` prefix is a backend we do not support (rest:, sftp:, b2:, ...).
        if let Some((scheme, _)) = repo.split_once(':') {
            if !scheme.contains('/') && scheme.len() > 1 {
                return Err(bad());
            }
        }
        if repo.is_empty() {
            return Err(bad());
        }
        Ok(Location::Local {
            path: repo.to_string(),
        })
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Local { path } => write!(f, "local:{path}"),
            Location::S3 {
                endpoint,
                bucket,
                prefix,
            } => write!(f, "s3:{endpoint}/{bucket}/{prefix}"),
            Location::Azure { container, prefix } => write!(f, "azure:{container}:/{prefix}"),
            Location::Gcs { bucket, prefix } => write!(f, "gs:{bucket}:/{prefix}"),
            Location::Rest { url } => write!(f, "rest:{url}"),
        }
    }
}

/// Parses `s3:http(s)://host[:port]/bucket[/prefix]` and `s3:host/bucket[/prefix]` (https);
/// `None` for any other form.
fn parse_s3(repo: &str) -> Option<Result<Location, BackendError>> {
    let rest = repo.strip_prefix("s3:")?;
    let bad = || BackendError::Location(repo.to_string());
    let (scheme, rest) = if let Some(r) = rest.strip_prefix("http://") {
        ("http", r)
    } else if let Some(r) = rest.strip_prefix("https://") {
        ("https", r)
    } else {
        ("https", rest)
    };
    let mut parts = rest.splitn(3, '/');
    let Some(host) = parts.next().filter(|h| !h.is_empty()) else {
        return Some(Err(bad()));
    };
    let Some(bucket) = parts.next().filter(|b| !b.is_empty()) else {
        return Some(Err(bad()));
    };
    let prefix = parts.next().unwrap_or("").trim_matches('/').to_string();
    Some(Ok(Location::S3 {
        endpoint: format!("{scheme}://{host}"),
        bucket: bucket.to_string(),
        prefix,
    }))
}

/// Parses `<scheme>container:/path` (restic's form for `azure:` and `gs:`); `None` for any
/// other scheme.
fn parse_bucket(
    repo: &str,
    scheme: &str,
    make: impl Fn(String, String) -> Location,
) -> Option<Result<Location, BackendError>> {
    let rest = repo.strip_prefix(scheme)?;
    Some(
        split_bucket(rest)
            .map(|(bucket, prefix)| make(bucket, prefix))
            .ok_or_else(|| BackendError::Location(repo.to_string())),
    )
}

/// Parses `rest:<url>`; `None` for any other form.
fn parse_rest(repo: &str) -> Option<Result<Location, BackendError>> {
    let rest = repo.strip_prefix("rest:")?;
    Some(
        RestUrl::parse(rest)
            .map(|url| Location::Rest { url })
            .ok_or_else(|| BackendError::Location(repo.to_string())),
    )
}

/// `container:/path` or `container:path` (restic's form for `azure:` and `gs:`) into the
/// container and the prefix without surrounding slashes.
fn split_bucket(rest: &str) -> Option<(String, String)> {
    let (bucket, path) = rest.split_once(':').unwrap_or((rest, ""));
    if bucket.is_empty() || bucket.contains('/') {
        return None;
    }
    Some((bucket.to_string(), path.trim_matches('/').to_string()))
}

/// The URL of a REST server repository. Its password never shows in `Display` or `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct RestUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host[:port]`.
    pub host: String,
    /// Path of the repository on the server, without surrounding slashes (may be empty).
    pub path: String,
    /// User name from the URL, if any.
    pub user: Option<String>,
    /// Password from the URL, if any.
    pub password: Option<String>,
}

impl RestUrl {
    /// Parses `http(s)://[user[:password]@]host[:port][/path]`.
    pub fn parse(s: &str) -> Option<RestUrl> {
        let (scheme, rest) = if let Some(r) = s.strip_prefix("http://") {
            ("http", r)
        } else if let Some(r) = s.strip_prefix("https://") {
            ("https", r)
        } else {
            return None;
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        if host.is_empty() {
            return None;
        }
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (Some(percent_decode(u)?), Some(percent_decode(p)?)),
                None => (Some(percent_decode(u)?), None),
            },
        };
        Some(RestUrl {
            scheme: scheme.to_string(),
            host: host.to_string(),
            path: path.trim_matches('/').to_string(),
            user,
            password,
        })
    }

    /// `scheme://host/path/` (no credentials): the base every request URL extends.
    pub fn base(&self) -> String {
        if self.path.is_empty() {
            format!("{}://{}/", self.scheme, self.host)
        } else {
            format!("{}://{}/{}/", self.scheme, self.host, self.path)
        }
    }
}

impl std::fmt::Display for RestUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.user, &self.password) {
            (Some(u), Some(_)) => {
                write!(f, "{}://{u}:***@{}/{}", self.scheme, self.host, self.path)
            }
            (Some(u), None) => write!(f, "{}://{u}@{}/{}", self.scheme, self.host, self.path),
            _ => write!(f, "{}://{}/{}", self.scheme, self.host, self.path),
        }
    }
}

impl std::fmt::Debug for RestUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RestUrl({self})")
    }
}

/// `%XX` escapes of a URL's user information, decoded.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_restic_location_forms() {
        assert_eq!(
            Location::parse("/srv/repo").unwrap(),
            Location::Local {
                path: "/srv/repo".into()
            }
        );
        assert_eq!(
            Location::parse("local:/srv/r").unwrap(),
            Location::Local {
                path: "/srv/r".into()
            }
        );
        assert_eq!(
            Location::parse("s3:http://127.0.0.1:9000/bucket/some/prefix").unwrap(),
            Location::S3 {
                endpoint: "http://127.0.0.1:9000".into(),
                bucket: "bucket".into(),
                prefix: "some/prefix".into()
            }
        );
        assert_eq!(
            Location::parse("s3:s3.amazonaws.com/b").unwrap(),
            Location::S3 {
                endpoint: "https://s3.amazonaws.com".into(),
                bucket: "b".into(),
                prefix: String::new()
            }
        );
        assert!(Location::parse("sftp:host:/x").is_err());
        assert!(Location::parse("s3:http://host").is_err());
        assert!(Location::parse("").is_err());
    }

    #[test]
    fn pack_paths_use_two_hex_digit_folders() {
        let id = Id::hash(b"x");
        assert_eq!(
            FileType::Pack.path(&id),
            format!("data/{}/{}", &id.to_hex()[..2], id)
        );
        assert_eq!(FileType::Snapshot.path(&id), format!("snapshots/{id}"));
    }
}
