//! restic's REST server protocol (restic's `doc/REST_backend.rst`) as an opendal service, so
//! that the retry and timeout layers and every [`crate::Backend`] operation work on it as on
//! the others. opendal has no such service.
//!
//! The protocol: `GET|HEAD|POST|DELETE <repo>/<type>/<name>` and `<repo>/config`,
//! `GET <repo>/<type>/` lists (version 2 with sizes, asked for by `Accept`), and
//! `POST <repo>/?create=true` creates a repository. Packs are `data/<name>` on the wire, not
//! `data/<xx>/<name>` as in the file layout: [`wire_path`] maps one to the other.

use std::sync::Arc;

use http::{header, Request, Response, StatusCode};
use opendal::raw::{
    format_authorization_by_basic, new_request_build_error, oio, parse_content_length, Access,
    AccessorInfo, HttpBody, OpDelete, OpList, OpRead, OpStat, OpWrite, RpDelete, RpList, RpRead,
    RpStat, RpWrite,
};
use opendal::{Buffer, Capability, EntryMode, Error, ErrorKind, Metadata, Result};

use crate::backend::location::RestUrl;

/// The v2 listing's media type: entries with sizes.
const V2: &str = "application/vnd.x.restic.rest.v2";

/// A repository on a REST server.
#[derive(Debug, Clone)]
pub(crate) struct RestBackend {
    core: Arc<Core>,
}

struct Core {
    info: Arc<AccessorInfo>,
    /// `scheme://host/path/`.
    base: String,
    /// `Basic ...`, when credentials were given.
    authorization: Option<String>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the authorization header.
        f.debug_struct("Core").field("base", &self.base).finish()
    }
}

impl RestBackend {
    /// A backend for `url`; credentials from the URL, else from `RESTIC_REST_USERNAME` and
    /// `RESTIC_REST_PASSWORD` (restic's variables).
    pub(crate) fn new(
        url: &RestUrl,
        env_user: Option<String>,
        env_password: Option<String>,
    ) -> Result<Self> {
        let user = url.user.clone().or(env_user);
        let password = url.password.clone().or(env_password);
        let authorization = match &user {
            Some(u) => Some(format_authorization_by_basic(
                u,
                password.as_deref().unwrap_or_default(),
            )?),
            None => None,
        };
        let info = AccessorInfo::default();
        info.set_scheme("restic-rest")
            .set_root("/")
            .set_name(&url.base())
            .set_native_capability(Capability {
                stat: true,
                read: true,
                write: true,
                write_can_empty: true,
                delete: true,
                list: true,
                // A type's listing is flat on the wire, so "recursive" is what it always is.
                list_with_recursive: true,
                shared: true,
                ..Default::default()
            });
        Ok(RestBackend {
            core: Arc::new(Core {
                info: Arc::new(info),
                base: url.base(),
                authorization,
            }),
        })
    }
}

/// The path on the wire of a repository-relative path: `data/ab/abcd…` → `data/abcd…`.
fn wire_path(path: &str) -> String {
    let path = path.trim_start_matches('/');
    if let Some(rest) = path.strip_prefix("data/") {
        if let Some((dir, name)) = rest.split_once('/') {
            if dir.len() == 2 && !name.is_empty() && !name.contains('/') {
                return format!("data/{name}");
            }
        }
    }
    path.to_string()
}

impl Core {
    fn request(&self, method: http::Method, path: &str) -> http::request::Builder {
        let mut req =
            Request::builder()
                .method(method)
                .uri(format!("{}{}", self.base, wire_path(path)));
        if let Some(auth) = &self.authorization {
            req = req.header(header::AUTHORIZATION, auth);
        }
        req
    }

    async fn send(&self, req: http::request::Builder, body: Buffer) -> Result<Response<Buffer>> {
        let req = req.body(body).map_err(new_request_build_error)?;
        self.info.http_client().send(req).await
    }

    /// Creates the repository on the server (its directories), as restic does before it
    /// writes the config file.
    async fn create(&self) -> Result<()> {
        let req = self.request(http::Method::POST, "?create=true");
        let resp = self.send(req, Buffer::new()).await?;
        match resp.status() {
            StatusCode::OK => Ok(()),
            _ => Err(parse_error(resp.status(), resp.into_body(), "?create=true")),
        }
    }
}

/// An opendal error for an unexpected answer: 404 is "not found", 401/403 "permission
/// denied", 5xx and 429 temporary (retried by the retry layer).
fn parse_error(status: StatusCode, body: Buffer, path: &str) -> Error {
    let kind = match status {
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ErrorKind::PermissionDenied,
        _ => ErrorKind::Unexpected,
    };
    let text = String::from_utf8_lossy(&body.to_bytes()).trim().to_string();
    let text: String = text.chars().take(200).collect();
    let mut e = Error::new(
        kind,
        format!("REST server answered {status} for {path}: {text}"),
    );
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        e = e.set_temporary();
    }
    e
}

impl Access for RestBackend {
    type Reader = HttpBody;
    type Writer = oio::OneShotWriter<Writer>;
    type Lister = oio::PageLister<Lister>;
    type Deleter = oio::OneShotDeleter<Deleter>;

    fn info(&self) -> Arc<AccessorInfo> {
        self.core.info.clone()
    }

    async fn stat(&self, path: &str, _: OpStat) -> Result<RpStat> {
        if path.ends_with('/') {
            // Type folders always exist on a server's repository.
            return Ok(RpStat::new(Metadata::new(EntryMode::DIR)));
        }
        let resp = self
            .core
            .send(self.core.request(http::Method::HEAD, path), Buffer::new())
            .await?;
        match resp.status() {
            StatusCode::OK => {
                let mut meta = Metadata::new(EntryMode::FILE);
                if let Some(n) = parse_content_length(resp.headers())? {
                    meta.set_content_length(n);
                }
                Ok(RpStat::new(meta))
            }
            s => Err(parse_error(s, resp.into_body(), path)),
        }
    }

    async fn read(&self, path: &str, args: OpRead) -> Result<(RpRead, HttpBody)> {
        let mut req = self.core.request(http::Method::GET, path);
        let range = args.range();
        if !range.is_full() {
            req = req.header(header::RANGE, range.to_header());
        }
        let req = req.body(Buffer::new()).map_err(new_request_build_error)?;
        let resp = self.core.info.http_client().fetch(req).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                Ok((RpRead::default(), resp.into_body()))
            }
            s => {
                let (_, mut body) = resp.into_parts();
                let buf = body.to_buffer().await?;
                Err(parse_error(s, buf, path))
            }
        }
    }

    async fn write(&self, path: &str, _: OpWrite) -> Result<(RpWrite, Self::Writer)> {
        Ok((
            RpWrite::default(),
            oio::OneShotWriter::new(Writer {
                core: self.core.clone(),
                path: path.to_string(),
            }),
        ))
    }

    async fn delete(&self) -> Result<(RpDelete, Self::Deleter)> {
        Ok((
            RpDelete::default(),
            oio::OneShotDeleter::new(Deleter {
                core: self.core.clone(),
            }),
        ))
    }

    async fn list(&self, path: &str, _: OpList) -> Result<(RpList, Self::Lister)> {
        Ok((
            RpList::default(),
            oio::PageLister::new(Lister {
                core: self.core.clone(),
                path: path.to_string(),
            }),
        ))
    }
}

/// Uploads a whole file in one POST.
pub(crate) struct Writer {
    core: Arc<Core>,
    path: String,
}

impl oio::OneShotWrite for Writer {
    async fn write_once(&self, bs: Buffer) -> Result<Metadata> {
        if self.path.trim_start_matches('/') == "config" {
            self.core.create().await?;
        }
        let len = bs.len();
        let req = self
            .core
            .request(http::Method::POST, &self.path)
            .header(header::CONTENT_LENGTH, len)
            .header(header::CONTENT_TYPE, "application/octet-stream");
        let resp = self.core.send(req, bs).await?;
        match resp.status() {
            StatusCode::OK | StatusCode::CREATED | StatusCode::NO_CONTENT => {
                Ok(Metadata::new(EntryMode::FILE).with_content_length(len as u64))
            }
            s => Err(parse_error(s, resp.into_body(), &self.path)),
        }
    }
}

/// Deletes one file; a missing file is no error.
pub(crate) struct Deleter {
    core: Arc<Core>,
}

impl oio::OneShotDelete for Deleter {
    async fn delete_once(&self, path: String, _: OpDelete) -> Result<()> {
        let resp = self
            .core
            .send(
                self.core.request(http::Method::DELETE, &path),
                Buffer::new(),
            )
            .await?;
        match resp.status() {
            StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            s => Err(parse_error(s, resp.into_body(), &path)),
        }
    }
}

/// Lists one type folder in one request (the protocol has no pages).
pub(crate) struct Lister {
    core: Arc<Core>,
    path: String,
}

#[derive(serde::Deserialize)]
struct V2Entry {
    name: String,
    size: u64,
}

impl oio::PageList for Lister {
    async fn next_page(&self, ctx: &mut oio::PageContext) -> Result<()> {
        ctx.done = true;
        let dir = self.path.trim_start_matches('/').trim_end_matches('/');
        // `data/` and its `data/xx/` subfolders are one flat listing on the wire.
        let (wire, sub) = match dir.strip_prefix("data/") {
            Some(xx) => ("data", Some(xx)),
            None => (dir, None),
        };
        let req = self
            .core
            .request(http::Method::GET, &format!("{wire}/"))
            .header(header::ACCEPT, V2);
        let resp = self.core.send(req, Buffer::new()).await?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        if status != StatusCode::OK {
            return Err(parse_error(status, resp.into_body(), &self.path));
        }
        let body = resp.into_body().to_bytes();
        let entries: Vec<V2Entry> = serde_json::from_slice(&body).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("REST server's listing of {wire}/ is not restic's v2 JSON"),
            )
            .set_source(e)
        })?;
        for entry in entries {
            if entry.name.contains('/') || entry.name.is_empty() {
                continue;
            }
            let path = if wire == "data" {
                let xx = entry.name.get(..2).unwrap_or("");
                if sub.is_some_and(|s| s != xx) {
                    continue;
                }
                format!("data/{xx}/{}", entry.name)
            } else {
                format!("{wire}/{}", entry.name)
            };
            let meta = Metadata::new(EntryMode::FILE).with_content_length(entry.size);
            ctx.entries.push_back(oio::Entry::new(&path, meta));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::wire_path;

    #[test]
    fn packs_lose_their_two_digit_folder_on_the_wire() {
        assert_eq!(wire_path("data/ab/abcdef"), "data/abcdef");
        assert_eq!(wire_path("/keys/abcdef"), "keys/abcdef");
        assert_eq!(wire_path("config"), "config");
        assert_eq!(wire_path("data/"), "data/");
    }
}
