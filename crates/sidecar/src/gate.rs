//! The consistency gate around each backup: the application must say it is safe to copy its
//! files (`--ready-url` answers 2xx, `--pre-command` exits 0) before the backup starts, and the
//! post-command undoes whatever the pre-command did (unfreeze, end backup mode) afterwards.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper::Uri;
use hyper_util::rt::TokioIo;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

/// Environment variables never handed to hook and producer commands: the commands talk to
/// the application, not to the repository, and must not see its secrets, nor what the warm key
/// is sealed to (`POD_UID` and the key secret), nor where those and the API token are kept.
/// (They run as the same user, so a file the sidecar can read they can read too: this keeps
/// secrets out of what a command prints or passes on by accident, it is no sandbox.)
pub const SECRET_VARS: [&str; 16] = [
    "RESTIC_PASSWORD",
    "RESTIC_PASSWORD_FILE",
    "RESTIC_PASSWORD_COMMAND",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "POD_UID",
    "SNAPBACK_POD_UID_FILE",
    "SNAPBACK_KEY_SECRET",
    "SNAPBACK_KEY_SECRET_FILE",
    "SNAPBACK_KEY_FILE",
    "SNAPBACK_API_TOKEN",
    "SNAPBACK_API_TOKEN_FILE",
];

/// An `http://` URL to probe (no TLS: the application is expected in the same Pod).
#[derive(Debug, Clone)]
pub struct ReadyUrl {
    uri: Uri,
    host: String,
    port: u16,
}

impl ReadyUrl {
    /// Parses and checks `url`.
    pub fn parse(url: &str) -> Result<ReadyUrl> {
        let bad = |reason: &str| Error::ReadyUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.scheme_str() != Some("http") {
            return Err(bad(
                "only http:// is supported (the application runs in the same Pod)",
            ));
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?.to_string();
        let port = uri.port_u16().unwrap_or(80);
        Ok(ReadyUrl { uri, host, port })
    }

    /// `GET`s the URL; `Ok` for a 2xx answer within `timeout`.
    pub async fn probe(&self, timeout: Duration) -> std::result::Result<(), String> {
        match tokio::time::timeout(timeout, self.get()).await {
            Ok(Ok(status)) if (200..300).contains(&status) => Ok(()),
            Ok(Ok(status)) => Err(format!("{} answered HTTP {status}", self.uri)),
            Ok(Err(e)) => Err(format!("{}: {e}", self.uri)),
            Err(_) => Err(format!("{}: no answer within {timeout:?}", self.uri)),
        }
    }

    async fn get(&self) -> std::result::Result<u16, Box<dyn std::error::Error + Send + Sync>> {
        let host = self.host.trim_start_matches('[').trim_end_matches(']');
        let stream = tokio::net::TcpStream::connect((host, self.port)).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        let conn = tokio::spawn(conn);
        let path = self
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let authority = self
            .uri
            .authority()
            .map_or(self.host.clone(), |a| a.to_string());
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::USER_AGENT, "snapback-sidecar")
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        conn.abort();
        Ok(resp.status().as_u16())
    }
}

/// The checks before and the command after each backup.
#[derive(Debug, Clone)]
pub struct Gate {
    /// Must answer 2xx before a backup.
    pub ready_url: Option<ReadyUrl>,
    /// Run with `sh -c`; must exit 0 before a backup.
    pub pre_command: Option<String>,
    /// Run with `sh -c` after a backup whose pre-command succeeded, whatever its result.
    pub post_command: Option<String>,
    /// Limit for each probe and command; a command still running then is killed.
    pub timeout: Duration,
}

impl Gate {
    /// A gate that lets every backup through.
    pub fn open_always() -> Gate {
        Gate {
            ready_url: None,
            pre_command: None,
            post_command: None,
            timeout: Duration::from_secs(300),
        }
    }

    /// Runs the readiness probe and the pre-command. `Err` says why the backup must not run.
    pub async fn enter(&self, cancel: &CancellationToken) -> std::result::Result<(), String> {
        if let Some(url) = &self.ready_url {
            tokio::select! {
                r = url.probe(self.timeout) => r.map_err(|e| format!("--ready-url: {e}"))?,
                _ = cancel.cancelled() => return Err("cancelled during --ready-url".into()),
            }
        }
        if let Some(cmd) = &self.pre_command {
            run_hook("pre-command", cmd, self.timeout, Some(cancel)).await?;
        }
        Ok(())
    }

    /// Runs the post-command, if any (not cancellable: it must undo the pre-command).
    pub async fn leave(&self) -> std::result::Result<(), String> {
        match &self.post_command {
            Some(cmd) => run_hook("post-command", cmd, self.timeout, None).await,
            None => Ok(()),
        }
    }

    /// Whether [`Gate::leave`] has something to do.
    pub fn has_post_command(&self) -> bool {
        self.post_command.is_some()
    }
}

fn hook_command(cmd: &str) -> Command {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(cmd)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for var in SECRET_VARS {
        command.env_remove(var);
    }
    command
}

/// Runs `sh -c cmd` with the secrets removed from its environment and its output passed
/// through to ours (the container log).
async fn run_hook(
    what: &str,
    cmd: &str,
    timeout: Duration,
    cancel: Option<&CancellationToken>,
) -> std::result::Result<(), String> {
    let mut child = hook_command(cmd)
        .spawn()
        .map_err(|e| format!("{what}: cannot run sh: {e}"))?;
    let never = CancellationToken::new();
    let cancel = cancel.unwrap_or(&never);
    tracing::info!(hook = what, "running {what}");
    tokio::select! {
        status = child.wait() => match status {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("{what} failed ({s})")),
            Err(e) => Err(format!("{what}: {e}")),
        },
        _ = tokio::time::sleep(timeout) => {
            let _ = child.kill().await;
            Err(format!("{what} still running after {timeout:?}: killed"))
        }
        _ = cancel.cancelled() => {
            let _ = child.kill().await;
            Err(format!("{what} cancelled"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_url_parsing() {
        let u = ReadyUrl::parse("http://127.0.0.1:5432/ready?x=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("127.0.0.1", 5432));
        assert_eq!(ReadyUrl::parse("http://localhost/").unwrap().port, 80);
        assert!(ReadyUrl::parse("https://localhost/").is_err());
        assert!(ReadyUrl::parse("localhost:80").is_err());
    }

    #[tokio::test]
    async fn pre_command_status_decides() {
        let never = CancellationToken::new();
        let mut gate = Gate::open_always();
        assert!(gate.enter(&never).await.is_ok());
        gate.pre_command = Some("exit 0".into());
        assert!(gate.enter(&never).await.is_ok());
        gate.pre_command = Some("exit 3".into());
        let err = gate.enter(&never).await.unwrap_err();
        assert!(err.contains("pre-command failed"), "{err}");
        gate.pre_command = Some("sleep 30".into());
        gate.timeout = Duration::from_millis(200);
        let err = gate.enter(&never).await.unwrap_err();
        assert!(err.contains("killed"), "{err}");
    }

    #[test]
    fn hooks_do_not_see_secrets() {
        let cmd = hook_command("true");
        let removed: Vec<_> = cmd
            .as_std()
            .get_envs()
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        for var in SECRET_VARS {
            assert!(removed.iter().any(|r| r == var), "{var} not removed");
        }
    }

    #[tokio::test]
    async fn ready_url_probe_against_local_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let url = ReadyUrl::parse(&format!("http://127.0.0.1:{port}/ready")).unwrap();
        assert!(url.probe(Duration::from_secs(5)).await.is_ok());
        let err = url.probe(Duration::from_secs(5)).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        server.await.unwrap();
    }
}
