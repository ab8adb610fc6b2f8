//! Shared harness for snapback's integration tests (each test file does `mod common;`).
//!
//! Everything here drives real components: the real `restic` binary, our real
//! `snapback` binary and a real S3 server (`moto_server`, installed by
//! `.ci/setup`) listening on 127.0.0.1. Secrets (repository password, S3
//! credentials) are only ever passed through the environment, never as
//! command-line arguments.
//!
//! Only `std`, `serde`, `serde_json` and `tempfile` are used.
#![allow(dead_code)]

pub mod fault_proxy;
pub mod services;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

// ---------------------------------------------------------------------------
// Finding programs
// ---------------------------------------------------------------------------

/// Looks `name` up on `PATH` like a shell would; `None` when absent.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// The restic binary: `/usr/bin/restic` (Debian's, what CI installs) or else
/// `restic` on `PATH`.
pub fn restic_path() -> Option<PathBuf> {
    let debian = PathBuf::from("/usr/bin/restic");
    if debian.is_file() {
        return Some(debian);
    }
    find_on_path("restic")
}

/// Whether the real restic binary is installed.
pub fn restic_available() -> bool {
    restic_path().is_some()
}

/// True when running under CI (`CI` set to anything but empty/`false`/`0`).
pub fn on_ci() -> bool {
    matches!(std::env::var("CI"), Ok(v) if !v.is_empty() && v != "false" && v != "0")
}

/// Returns `true` (after printing a loud `SKIPPED` line) when the calling test
/// must be skipped because restic is not installed. On CI a missing restic is a
/// setup bug, so this panics instead of skipping.
///
/// Prefer the [`require_restic!`] macro, which returns from the test for you.
pub fn skip_without_restic(test: &str) -> bool {
    if restic_available() {
        return false;
    }
    if on_ci() {
        panic!("{test}: restic is not installed, but CI must run every test (run .ci/setup)");
    }
    eprintln!("\n*** SKIPPED: restic not installed ({test}); run `bash .ci/setup` ***\n");
    true
}

/// Skips the current test (returns early) with a loud "SKIPPED: restic not
/// installed" message when restic is missing; panics instead on CI.
///
/// ```ignore
/// #[test]
/// fn round_trip() {
///     require_restic!();
///     // ...
/// }
/// ```
#[macro_export]
macro_rules! require_restic {
    () => {
        if $crate::common::skip_without_restic(module_path!()) {
            return;
        }
    };
}

// ---------------------------------------------------------------------------
// A tiny HTTP/1.1 client over std::net (enough to talk to moto without auth)
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one request to `127.0.0.1:port` (`Connection: close`) and reads the
/// whole response. `path` includes the query string.
///
/// The request carries an `Authorization` header naming the test access key
/// with a dummy signature: moto does not verify signatures, but it treats
/// requests without the header as anonymous and refuses them access to
/// objects that restic or snapback wrote with credentials.
pub fn http_request(port: u16, method: &str, path: &str, body: &[u8]) -> io::Result<HttpResponse> {
    aws_request(port, method, path, "s3", body)
}

/// [`http_request`] for AWS service `service` (moto routes a request by the service named in
/// its `Authorization` header); a body is sent as a form (the IAM and STS query APIs).
pub fn aws_request(
    port: u16,
    method: &str,
    path: &str,
    service: &str,
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let content_type = if service == "s3" {
        ""
    } else {
        "Content-Type: application/x-www-form-urlencoded\r\n"
    };
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         User-Agent: snapback-test-harness\r\nConnection: close\r\n{content_type}\
         Authorization: AWS4-HMAC-SHA256 Credential={TEST_ACCESS_KEY}/20200101/us-east-1/{service}/aws4_request, \
         SignedHeaders=host, Signature=0000\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;

    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad(&format!("bad status line {status_line:?}")))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body = decode_chunked(&response.body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(response)
}

fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// ---------------------------------------------------------------------------
// S3 server (moto)
// ---------------------------------------------------------------------------

/// The S3 access key the tests use (moto accepts any).
pub const TEST_ACCESS_KEY: &str = "snapback-test-key";
/// The S3 secret key the tests use (moto accepts any).
pub const TEST_SECRET_KEY: &str = "snapback-test-secret";

/// Unique-per-process counter for bucket and file names.
static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running `moto_server` process.
///
/// It is started through a small `sh` wrapper whose stdin is a pipe from this
/// test process: when the pipe closes — on [`Drop`], or because the test
/// binary exited or was killed — the wrapper kills moto, so no server outlives
/// the tests even when it lives in a `static` that is never dropped.
/// (`PR_SET_PDEATHSIG` is not used: it fires when the spawning *thread* exits,
/// and every Rust test runs on its own thread.)
struct MotoProcess {
    wrapper: Child,
    /// Write end of the wrapper's stdin; closing it stops the server.
    stdin: Option<ChildStdin>,
    /// moto's own pid (a child of the wrapper, which never reaps it early).
    moto_pid: u32,
    port: u16,
    log: PathBuf,
}

/// The wrapper. moto's pid stays a zombie (not reaped) until the wrapper's
/// final `wait`, so the harness can tell whether moto is still running through
/// `/proc/PID/stat` without any risk of pid reuse.
const MOTO_WRAPPER: &str = r#"
moto="$1"; port="$2"; log="$3"; shift 3
"$moto" "$@" -H 127.0.0.1 -p "$port" </dev/null >"$log" 2>&1 &
pid=$!
echo "$pid"
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -f "$log"
"#;

impl MotoProcess {
    /// Starts moto on a free 127.0.0.1 port and waits until it answers HTTP.
    /// Retries with another port when the one picked was taken meanwhile.
    fn spawn() -> MotoProcess {
        Self::spawn_with(&[], &[])
    }

    /// [`MotoProcess::spawn`] with extra environment for moto and extra arguments. With
    /// `--ssl-cert` among them, readiness is a TCP connection (the harness speaks no TLS);
    /// otherwise one `GET /` that answers 200.
    fn spawn_with(env: &[(&str, &str)], args: &[&str]) -> MotoProcess {
        let name = if args.first() == Some(&"-c") {
            "python3"
        } else {
            "moto_server"
        };
        let moto = find_on_path(name).unwrap_or_else(|| {
            panic!(
                "{name} not found on PATH; the S3 tests need moto_server (run `bash .ci/setup`, \
                 which does `pip install 'moto[server]'`)"
            )
        });
        let mut last_error = String::new();
        for _attempt in 0..5 {
            match Self::try_spawn(&moto, env, args) {
                Ok(process) => return process,
                Err(e) => {
                    eprintln!("harness: moto_server start failed, retrying: {e}");
                    last_error = e;
                }
            }
        }
        panic!(
            "could not start moto_server ({}): {last_error}",
            moto.display()
        );
    }

    fn try_spawn(moto: &Path, env: &[(&str, &str)], args: &[&str]) -> Result<MotoProcess, String> {
        let tls = args.contains(&"--ssl-cert");
        let port = free_port();
        let log = std::env::temp_dir().join(format!("snapback-moto-{}.log", unique_suffix()));
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(MOTO_WRAPPER)
            .arg("snapback-moto-wrapper")
            .arg(moto)
            .arg(port.to_string())
            .arg(&log)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let stdin = wrapper.stdin.take();
        let mut pid_line = String::new();
        {
            let mut out = wrapper.stdout.take().expect("piped stdout");
            let mut byte = [0u8; 1];
            while out.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
                pid_line.push(byte[0] as char);
            }
        }
        let moto_pid: u32 = pid_line
            .trim()
            .parse()
            .map_err(|_| format!("wrapper printed no pid ({pid_line:?})"))?;
        let process = MotoProcess {
            wrapper,
            stdin,
            moto_pid,
            port,
            log,
        };

        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if !process.moto_running() {
                let log = process.log_text();
                return Err(format!("moto_server exited during startup; log:\n{log}"));
            }
            if tls {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() && process.moto_running() {
                    return Ok(process);
                }
            } else if let Ok(resp) = http_request(port, "GET", "/", b"") {
                // moto answers ListBuckets on `/`. Check moto is still ours and
                // alive: another process might hold the port we picked.
                if resp.status == 200 && process.moto_running() {
                    return Ok(process);
                }
            }
            if Instant::now() > deadline {
                let log = process.log_text();
                return Err(format!(
                    "moto_server did not answer on 127.0.0.1:{port} within 90 s; log:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether moto itself (not the wrapper) is still running.
    fn moto_running(&self) -> bool {
        pid_running(self.moto_pid)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Stops moto and waits for the wrapper; idempotent.
    fn shutdown(&mut self) {
        // EOF on the wrapper's stdin makes it kill moto, reap it and exit.
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match self.wrapper.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() > deadline => break,
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        // moto ignored SIGTERM: force it.
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.moto_pid.to_string())
            .status();
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
        let _ = fs::remove_file(&self.log);
    }
}

impl Drop for MotoProcess {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Picks a currently free TCP port on 127.0.0.1 (bind port 0, read, release).
pub fn free_port() -> u16 {
    TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// The moto server shared by all tests of one test binary; started on first
/// use, stopped when the test binary exits (see [`MotoProcess`]).
static SHARED_MOTO: OnceLock<MotoProcess> = OnceLock::new();

/// An S3 bucket on a moto server listening on 127.0.0.1.
///
/// [`S3Server::start`] gives a fresh, empty bucket on a server shared by the
/// whole test binary (fast; tests running in parallel never share a bucket).
/// [`S3Server::start_dedicated`] starts a server of its own, killed on `Drop`
/// (for tests that stop the server or want its memory back).
pub struct S3Server {
    port: u16,
    bucket: String,
    /// `Some` for a dedicated server: dropping it kills the process.
    own: Option<MotoProcess>,
}

impl S3Server {
    /// A fresh, uniquely named bucket on the shared moto server.
    pub fn start() -> S3Server {
        let port = SHARED_MOTO.get_or_init(MotoProcess::spawn).port;
        Self::with_new_bucket(port, None)
    }

    /// A moto server of its own (killed when this value is dropped) with a
    /// fresh bucket.
    pub fn start_dedicated() -> S3Server {
        let process = MotoProcess::spawn();
        Self::with_new_bucket(process.port, Some(process))
    }

    fn with_new_bucket(port: u16, own: Option<MotoProcess>) -> S3Server {
        let server = S3Server {
            port,
            bucket: format!("snapback-test-{}", unique_suffix()),
            own,
        };
        server.create_bucket(&server.bucket);
        server
    }

    /// Creates another bucket on the same server (`PUT /name`).
    pub fn create_bucket(&self, name: &str) {
        let resp = http_request(self.port, "PUT", &format!("/{name}"), b"")
            .unwrap_or_else(|e| panic!("PUT /{name} on moto: {e}"));
        assert_eq!(
            resp.status,
            200,
            "creating bucket {name}: {}",
            String::from_utf8_lossy(&resp.body)
        );
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// This server handle's bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The repository URL in restic's form: `s3:http://127.0.0.1:PORT/BUCKET/PREFIX`
    /// (just `.../BUCKET` when `prefix` is empty).
    pub fn repo_url(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3:{}/{}", self.endpoint(), self.bucket)
        } else {
            format!("s3:{}/{}/{}", self.endpoint(), self.bucket, prefix)
        }
    }

    /// Environment for restic / snapback to reach this server: test AWS
    /// credentials (moto accepts any) and `AWS_DEFAULT_REGION=us-east-1`.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), TEST_ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), TEST_SECRET_KEY.into()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
        ]
    }

    /// All object keys in this bucket starting with `prefix`, sorted
    /// (ListObjectsV2, following continuation tokens).
    pub fn object_keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut path = format!(
                "/{}?list-type=2&max-keys=1000&prefix={}",
                self.bucket,
                url_encode(prefix)
            );
            if let Some(t) = &token {
                path.push_str(&format!("&continuation-token={}", url_encode(t)));
            }
            let resp = http_request(self.port, "GET", &path, b"")
                .unwrap_or_else(|e| panic!("listing {}: {e}", self.bucket));
            let xml = String::from_utf8_lossy(&resp.body).into_owned();
            assert_eq!(resp.status, 200, "listing {}: {xml}", self.bucket);
            keys.extend(
                xml_values(&xml, "Key")
                    .into_iter()
                    .map(|k| xml_unescape(&k)),
            );
            token = xml_values(&xml, "NextContinuationToken").into_iter().next();
            if xml_values(&xml, "IsTruncated").first().map(String::as_str) != Some("true")
                || token.is_none()
            {
                break;
            }
        }
        keys.sort();
        keys
    }

    /// The object's bytes, or `None` when it does not exist.
    pub fn get_object(&self, key: &str) -> Option<Vec<u8>> {
        let path = format!("/{}/{}", self.bucket, url_encode_path(key));
        let resp = http_request(self.port, "GET", &path, b"")
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        match resp.status {
            200 => Some(resp.body),
            404 => None,
            s => panic!(
                "GET {path}: HTTP {s}: {}",
                String::from_utf8_lossy(&resp.body)
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// S3 servers that check signatures, and TLS
// ---------------------------------------------------------------------------

/// moto_server, with one fix to its signature check: moto rebuilds the canonical request
/// from the query string as its web framework decoded it, so every request whose query holds
/// a character SigV4 encodes (the `/` of `prefix=repo/` in each listing) fails with
/// SignatureDoesNotMatch, from boto3 as from restic or snapback. The fix encodes the query
/// again, as the signer did, before moto computes the signature; everything else (keys,
/// IAM policies, the signature itself) is moto's own check.
const MOTO_SIGV4_FIX: &str = r#"
import sys
from urllib.parse import parse_qsl, quote, urlencode
import moto.iam.access_control as ac
original = ac.IAMRequestBase._create_aws_request
def create_aws_request(self):
    path, sep, query = self._path.partition("?")
    if sep:
        pairs = parse_qsl(query, keep_blank_values=True)
        self._path = path + "?" + urlencode(pairs, quote_via=quote, safe="-_.~")
    return original(self)
ac.IAMRequestBase._create_aws_request = create_aws_request
from moto.server import main
main(sys.argv[1:])
"#;

/// Requests moto serves before it starts checking signatures: the readiness probe and the
/// nine IAM/STS calls of [`AuthS3Server::start`].
const AUTH_SETUP_ACTIONS: &str = "10";

/// Temporary keys (with a session token) moto's STS issued.
#[derive(Debug, Clone)]
pub struct TempKeys {
    pub access_key: String,
    pub secret_key: String,
    pub session_token: String,
}

/// A moto server of its own that verifies every request's SigV4 signature against its IAM
/// users (moto's `INITIAL_NO_AUTH_ACTION_COUNT` mode): set up with an IAM user whose key may
/// do everything, and temporary keys of a role. No bucket exists at first.
pub struct AuthS3Server {
    process: MotoProcess,
    /// The IAM user's access key id.
    pub access_key: String,
    /// The IAM user's secret key.
    pub secret_key: String,
    /// The role's ARN.
    pub role_arn: String,
    /// Keys of the role from STS AssumeRole (valid 15 minutes).
    pub session: TempKeys,
    /// A second user's key that may only list buckets and read objects.
    pub read_only_key: (String, String),
}

impl AuthS3Server {
    /// Starts the server and makes the user, its key, the role and its temporary keys.
    pub fn start() -> AuthS3Server {
        let process = MotoProcess::spawn_with(
            &[("INITIAL_NO_AUTH_ACTION_COUNT", AUTH_SETUP_ACTIONS)],
            &["-c", MOTO_SIGV4_FIX],
        );
        let port = process.port;
        let call = |service: &str, body: String| -> String {
            let resp = aws_request(port, "POST", "/", service, body.as_bytes())
                .unwrap_or_else(|e| panic!("{body} on moto: {e}"));
            let text = String::from_utf8_lossy(&resp.body).into_owned();
            assert_eq!(resp.status, 200, "{body}: {text}");
            text
        };
        let iam = |action: &str| call("iam", format!("Action={action}&Version=2010-05-08"));
        let policy = url_encode(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
        );
        iam("CreateUser&UserName=snapback");
        iam(&format!(
            "PutUserPolicy&UserName=snapback&PolicyName=all&PolicyDocument={policy}"
        ));
        let key = iam("CreateAccessKey&UserName=snapback");
        let role = iam(&format!(
            "CreateRole&RoleName=snapback-role&AssumeRolePolicyDocument={}",
            url_encode("{}")
        ));
        iam(&format!(
            "PutRolePolicy&RoleName=snapback-role&PolicyName=all&PolicyDocument={policy}"
        ));
        let role_arn = xml_values(&role, "Arn").remove(0);
        let assumed = call(
            "sts",
            format!(
                "Action=AssumeRole&RoleArn={}&RoleSessionName=snapback-test&DurationSeconds=900&Version=2011-06-15",
                url_encode(&role_arn)
            ),
        );
        let read_only = url_encode(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["s3:ListBucket","s3:GetObject"],"Resource":"*"}]}"#,
        );
        iam("CreateUser&UserName=reader");
        iam(&format!(
            "PutUserPolicy&UserName=reader&PolicyName=read&PolicyDocument={read_only}"
        ));
        let reader = iam("CreateAccessKey&UserName=reader");
        let one = |xml: &str, tag: &str| xml_values(xml, tag).remove(0);
        let server = AuthS3Server {
            access_key: one(&key, "AccessKeyId"),
            secret_key: one(&key, "SecretAccessKey"),
            role_arn,
            read_only_key: (one(&reader, "AccessKeyId"), one(&reader, "SecretAccessKey")),
            session: TempKeys {
                access_key: one(&assumed, "AccessKeyId"),
                secret_key: one(&assumed, "SecretAccessKey"),
                session_token: one(&assumed, "SessionToken"),
            },
            process,
        };
        // From here on signatures count: the harness's dummy one must be refused.
        let resp = http_request(port, "GET", "/", b"").expect("GET / on moto");
        assert_eq!(
            resp.status,
            403,
            "moto does not check signatures after the set-up: {}",
            String::from_utf8_lossy(&resp.body)
        );
        server
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.process.port)
    }

    /// `s3:http://127.0.0.1:PORT/BUCKET/PREFIX`
    pub fn repo_url(&self, bucket: &str, prefix: &str) -> String {
        format!("s3:{}/{bucket}/{prefix}", self.endpoint())
    }

    /// The IAM user's key and the region, for restic or snapback.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
        ]
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with the `openssl` command in a
/// temporary directory.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA's certificate (PEM), for `--cacert`.
    pub ca_cert: PathBuf,
    /// The server's certificate and key (PEM).
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestCa {
    /// Makes the CA and the server certificate (subjectAltName IP:127.0.0.1).
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("run openssl (apt-get install openssl)");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=snapback test CA",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ]);
        fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .expect("write ext.cnf");
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        TestCa {
            ca_cert: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            dir,
        }
    }
}

/// A moto server of its own serving https with `ca`'s server certificate (signatures are
/// not checked). No bucket exists at first.
pub struct TlsS3Server {
    process: MotoProcess,
}

impl TlsS3Server {
    /// Starts it.
    pub fn start(ca: &TestCa) -> TlsS3Server {
        let (cert, key) = (
            ca.server_cert.to_string_lossy().into_owned(),
            ca.server_key.to_string_lossy().into_owned(),
        );
        let process = MotoProcess::spawn_with(&[], &["--ssl-cert", &cert, "--ssl-key", &key]);
        TlsS3Server { process }
    }

    /// `https://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.process.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.process.port
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn url_encode_path(s: &str) -> String {
    s.split('/').map(url_encode).collect::<Vec<_>>().join("/")
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        rest = &rest[start + open.len()..];
        let Some(end) = rest.find(&close) else { break };
        out.push(rest[..end].to_string());
        rest = &rest[end + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

// ---------------------------------------------------------------------------
// Running restic and snapback
// ---------------------------------------------------------------------------

/// A command-line program run against one repository. The repository and
/// password go into `RESTIC_REPOSITORY` / `RESTIC_PASSWORD` (never argv);
/// inherited `RESTIC_*`, `AWS_*`, `SNAPBACK_*`, `AZURE_*`, `GOOGLE_*` and
/// `STORAGE_EMULATOR_HOST` variables are removed so a developer's own settings cannot leak
/// into tests.
///
/// Used through [`Restic`] and [`Snapback`], which deref to it.
#[derive(Clone, Debug)]
pub struct Tool {
    program: PathBuf,
    /// Arguments put before every call's own (e.g. restic's `--no-cache`).
    base_args: Vec<String>,
    envs: Vec<(String, String)>,
    current_dir: Option<PathBuf>,
}

impl Tool {
    fn new(program: PathBuf, base_args: &[&str], repo: &str, password: &str) -> Tool {
        Tool {
            program,
            base_args: base_args.iter().map(|s| s.to_string()).collect(),
            envs: vec![
                ("RESTIC_REPOSITORY".into(), repo.into()),
                ("RESTIC_PASSWORD".into(), password.into()),
            ],
            current_dir: None,
        }
    }

    /// Sets (or replaces) one environment variable for every later run.
    pub fn set_env(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let key = key.into();
        self.envs.retain(|(k, _)| *k != key);
        self.envs.push((key, value.into()));
        self
    }

    /// Sets several environment variables (e.g. [`S3Server::env`]).
    pub fn set_envs(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> &mut Self {
        for (k, v) in vars {
            self.set_env(k, v);
        }
        self
    }

    /// Runs every later command in `dir`.
    pub fn set_current_dir(&mut self, dir: impl Into<PathBuf>) -> &mut Self {
        self.current_dir = Some(dir.into());
        self
    }

    /// The program this runs.
    pub fn program(&self) -> &Path {
        &self.program
    }

    /// A ready-to-spawn `Command` (environment, base arguments and `args`
    /// applied; stdin null) for tests that need to stream, time or kill it.
    pub fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = Command::new(&self.program);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("RESTIC_")
                || k.starts_with("AWS_")
                || k.starts_with("SNAPBACK_")
                || k.starts_with("AZURE_")
                || k.starts_with("GOOGLE_")
                || k == "STORAGE_EMULATOR_HOST"
            {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        cmd.args(&self.base_args);
        cmd.args(args);
        if let Some(dir) = &self.current_dir {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Runs with `args` and returns the output, whatever the exit status.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()))
    }

    /// Runs with `args`, feeding `input` on stdin (e.g. `backup --stdin`).
    pub fn run_with_stdin<S: AsRef<OsStr>>(&self, args: &[S], input: &[u8]) -> Output {
        self.feed(args, input, None)
            .expect("no time limit, so the process exited")
    }

    /// Like [`Tool::run_with_stdin`], but kills the process and returns `None` if it has not
    /// exited after `limit` (a test of something that could hang must not hang CI).
    pub fn run_with_stdin_within<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        input: &[u8],
        limit: std::time::Duration,
    ) -> Option<Output> {
        self.feed(args, input, Some(limit))
    }

    fn feed<S: AsRef<OsStr>>(
        &self,
        args: &[S],
        input: &[u8],
        limit: Option<std::time::Duration>,
    ) -> Option<Output> {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.program.display()));
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::thread::scope(|s| {
            // Write from another thread so a child that fills its stdout
            // before reading all of stdin cannot deadlock us.
            s.spawn(move || {
                let _ = stdin.write_all(input);
            });
            if let Some(limit) = limit {
                let started = std::time::Instant::now();
                while child.try_wait().expect("poll child").is_none() {
                    if started.elapsed() > limit {
                        let _ = child.kill();
                        let _ = child.wait();
                        return None;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
            }
            Some(child.wait_with_output().expect("wait for child"))
        })
    }

    /// Runs with `args`; panics with the command line, stdout and stderr
    /// unless it exits 0. Returns stdout.
    pub fn run_ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let output = self.run(args);
        self.expect_success(args, &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Like [`Tool::run_ok`] with stdin input.
    pub fn run_ok_with_stdin<S: AsRef<OsStr>>(&self, args: &[S], input: &[u8]) -> String {
        let output = self.run_with_stdin(args, input);
        self.expect_success(args, &output);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs with `args` plus `--json` (added unless present) and parses stdout
    /// as one JSON document.
    pub fn json<T: serde::de::DeserializeOwned, S: AsRef<OsStr>>(&self, args: &[S]) -> T {
        let args = with_json_flag(args);
        let stdout = self.run_ok(&args);
        serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "{} {:?}: stdout is not the expected JSON ({e}):\n{stdout}",
                self.program.display(),
                args
            )
        })
    }

    /// Runs with `args` plus `--json` and parses stdout as JSON lines (e.g.
    /// restic's `backup --json` status and summary messages).
    pub fn json_lines<S: AsRef<OsStr>>(&self, args: &[S]) -> Vec<serde_json::Value> {
        let args = with_json_flag(args);
        let stdout = self.run_ok(&args);
        stdout
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}\nstdout:\n{stdout}"))
            })
            .collect()
    }

    /// Panics with a full report unless `output` is a success.
    pub fn expect_success<S: AsRef<OsStr>>(&self, args: &[S], output: &Output) {
        if !output.status.success() {
            panic!(
                "{} {:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.program.display(),
                self.base_args
                    .iter()
                    .map(|a| a.as_str().into())
                    .chain(args.iter().map(|a| a.as_ref().to_string_lossy()))
                    .collect::<Vec<_>>(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

fn with_json_flag<S: AsRef<OsStr>>(args: &[S]) -> Vec<String> {
    let mut out: Vec<String> = args
        .iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect();
    if !out.iter().any(|a| a == "--json") {
        out.insert(0, "--json".into());
    }
    out
}

/// The real restic (`/usr/bin/restic` or `restic` on `PATH`) on one
/// repository; `--no-cache` is always passed so it leaves nothing behind.
/// Derefs to [`Tool`] for `run`, `run_ok`, `json`, ...
#[derive(Clone, Debug)]
pub struct Restic(Tool);

impl Restic {
    /// restic on `repo` (a path or `s3:...` URL) with `password`.
    /// Panics when restic is not installed (guard tests with [`require_restic!`]).
    pub fn new(repo: impl AsRef<str>, password: &str) -> Restic {
        let program = restic_path().expect("restic not installed (run `bash .ci/setup`)");
        Restic(Tool::new(program, &["--no-cache"], repo.as_ref(), password))
    }

    /// restic on `server`'s bucket under `prefix`, with the S3 credentials set.
    pub fn s3(server: &S3Server, prefix: &str, password: &str) -> Restic {
        let mut restic = Restic::new(server.repo_url(prefix), password);
        restic.set_envs(server.env());
        restic
    }
}

impl Deref for Restic {
    type Target = Tool;
    fn deref(&self) -> &Tool {
        &self.0
    }
}

impl DerefMut for Restic {
    fn deref_mut(&mut self) -> &mut Tool {
        &mut self.0
    }
}

/// Our binary (`CARGO_BIN_EXE_snapback`) on one repository, configured like
/// restic through `RESTIC_REPOSITORY` / `RESTIC_PASSWORD`. Derefs to [`Tool`].
#[derive(Clone, Debug)]
pub struct Snapback(Tool);

impl Snapback {
    /// snapback on `repo` (a path or `s3:...` URL) with `password`.
    pub fn new(repo: impl AsRef<str>, password: &str) -> Snapback {
        let program = PathBuf::from(env!("CARGO_BIN_EXE_snapback"));
        Snapback(Tool::new(program, &[], repo.as_ref(), password))
    }

    /// snapback on `server`'s bucket under `prefix`, with the S3 credentials set.
    pub fn s3(server: &S3Server, prefix: &str, password: &str) -> Snapback {
        let mut snapback = Snapback::new(server.repo_url(prefix), password);
        snapback.set_envs(server.env());
        snapback
    }
}

impl Deref for Snapback {
    type Target = Tool;
    fn deref(&self) -> &Tool {
        &self.0
    }
}

impl DerefMut for Snapback {
    fn deref_mut(&mut self) -> &mut Tool {
        &mut self.0
    }
}

/// A scratch directory with a local repository `repo` in it, initialised by restic, and both
/// tools pointed at it. `root` is the directory's canonical path (snapshots record real paths,
/// so no symlinked /tmp surprises); the directory goes when `dir` is dropped.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub restic: Restic,
    pub snapback: Snapback,
}

impl Scratch {
    /// A new scratch directory and repository with `password`.
    pub fn init(password: &str) -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let repo = root.join("repo");
        let restic = Restic::new(repo.to_str().unwrap(), password);
        restic.run_ok(&["init"]);
        let snapback = Snapback::new(repo.to_str().unwrap(), password);
        Scratch {
            dir,
            root,
            restic,
            snapback,
        }
    }
}

// ---------------------------------------------------------------------------
// Test trees
// ---------------------------------------------------------------------------

/// `len` pseudo-random (incompressible) bytes from `seed`: xorshift64*,
/// identical on every run and machine.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    if state == 0 {
        state = 1;
    }
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Size of `random.bin` in [`make_tree`]: just over 3 MiB, not a round number.
pub const MAKE_TREE_RANDOM_LEN: usize = 3 * 1024 * 1024 + 12_345;

/// Sets the mtime (and atime) of a regular file or directory to `secs` +
/// `nanos` after the epoch (follows symlinks: not for symlinks themselves).
pub fn set_mtime(path: &Path, secs: u64, nanos: u32) {
    let time = UNIX_EPOCH + Duration::new(secs, nanos);
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.set_times(fs::FileTimes::new().set_accessed(time).set_modified(time))
        .unwrap_or_else(|e| panic!("set times of {}: {e}", path.display()));
}

/// Builds a small but varied tree in `dir` (created if missing), identical on
/// every call:
///
/// ```text
/// hello.txt              "hello, snapback\n"
/// empty                  empty file
/// with space ü.txt       non-ASCII name
/// private.txt            mode 0o640
/// run.sh                 mode 0o755
/// random.bin             MAKE_TREE_RANDOM_LEN pseudo-random bytes (seed 42)
/// link-to-hello -> hello.txt   symlink
/// empty-dir/
/// nested/lines.txt       2,000 numbered lines (compressible)
/// nested/a/b/deep.txt
/// ```
///
/// Regular files get mode 0o644 unless noted, directories 0o755; every file and
/// directory (not the symlink, not `dir` itself) gets a fixed mtime, distinct
/// per entry, with a non-zero sub-second part.
pub fn make_tree(dir: &Path) {
    let files: Vec<(&str, Vec<u8>, u32)> = vec![
        ("hello.txt", b"hello, snapback\n".to_vec(), 0o644),
        ("empty", Vec::new(), 0o644),
        (
            "with space \u{fc}.txt",
            "non-ASCII name \u{2713}\n".as_bytes().to_vec(),
            0o644,
        ),
        ("private.txt", b"secret-ish content\n".to_vec(), 0o640),
        ("run.sh", b"#!/bin/sh\necho hi\n".to_vec(), 0o755),
        (
            "random.bin",
            pseudo_random_bytes(42, MAKE_TREE_RANDOM_LEN),
            0o644,
        ),
        (
            "nested/lines.txt",
            (0..2000)
                .map(|i| format!("line {i:05} of a compressible text file\n"))
                .collect::<String>()
                .into_bytes(),
            0o644,
        ),
        ("nested/a/b/deep.txt", b"deep\n".to_vec(), 0o644),
    ];
    let dirs = ["empty-dir", "nested", "nested/a", "nested/a/b"];

    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    for d in dirs {
        let p = dir.join(d);
        fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
    }
    let base = 1_600_000_000u64;
    for (i, (name, content, mode)) in files.iter().enumerate() {
        let p = dir.join(name);
        fs::write(&p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        set_mtime(&p, base + 1000 * i as u64, 123_456_789);
    }
    let link = dir.join("link-to-hello");
    if fs::symlink_metadata(&link).is_ok() {
        fs::remove_file(&link).unwrap();
    }
    std::os::unix::fs::symlink("hello.txt", &link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    // Directories last and deepest first: creating entries changes a
    // directory's mtime.
    for (i, d) in dirs.iter().enumerate().rev() {
        let p = dir.join(d);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
        set_mtime(&p, base + 500_000 + 1000 * i as u64, 987_654_321);
    }
}

/// Compares two trees and returns their differences, empty when equal.
///
/// Runs `diff -r --no-dereference A B` for contents (its summary lines are reported
/// as they are), then walks both trees without following symlinks and
/// compares, for every entry below the roots (the roots themselves are not
/// compared): presence, file type, permission bits (`mode & 0o7777`, not for
/// symlinks), mtime in whole seconds (not for symlinks), symlink targets and
/// regular-file sizes.
pub fn diff_trees(a: &Path, b: &Path) -> Vec<String> {
    let mut diffs = Vec::new();

    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(a)
        .arg(b)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run diff (diffutils)");
    match out.status.code() {
        Some(0) => {}
        Some(1) => {
            // Keep diff's summary lines ("diff -r ...", "Only in ...", "Binary
            // files ... differ", "Symbolic links ... differ", "File ... is a
            // ..."), not hunk headers ("3c3") or content ("<", ">", "---").
            let before = diffs.len();
            diffs.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()))
                    .map(|l| format!("diff: {l}")),
            );
            if diffs.len() == before {
                diffs.push("diff -r reported differences".to_string());
            }
        }
        _ => diffs.push(format!(
            "diff -r failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )),
    }

    let (ta, tb) = (walk_tree(a), walk_tree(b));
    for (rel, ma) in &ta {
        let Some(mb) = tb.get(rel) else {
            diffs.push(format!("only in {}: {}", a.display(), rel.display()));
            continue;
        };
        let (fa, fb) = (ma.file_type(), mb.file_type());
        let kind = |m: &fs::Metadata| {
            let t = m.file_type();
            if t.is_symlink() {
                "symlink"
            } else if t.is_dir() {
                "directory"
            } else if t.is_file() {
                "file"
            } else {
                "special file"
            }
        };
        if kind(ma) != kind(mb) {
            diffs.push(format!(
                "{}: type {} vs {}",
                rel.display(),
                kind(ma),
                kind(mb)
            ));
            continue;
        }
        if fa.is_symlink() && fb.is_symlink() {
            let (la, lb) = (
                fs::read_link(a.join(rel)).ok(),
                fs::read_link(b.join(rel)).ok(),
            );
            if la != lb {
                diffs.push(format!(
                    "{}: symlink target {:?} vs {:?}",
                    rel.display(),
                    la,
                    lb
                ));
            }
            continue;
        }
        let (pa, pb) = (ma.mode() & 0o7777, mb.mode() & 0o7777);
        if pa != pb {
            diffs.push(format!("{}: mode {pa:o} vs {pb:o}", rel.display()));
        }
        if ma.mtime() != mb.mtime() {
            diffs.push(format!(
                "{}: mtime {} vs {}",
                rel.display(),
                ma.mtime(),
                mb.mtime()
            ));
        }
        if fa.is_file() && ma.len() != mb.len() {
            diffs.push(format!(
                "{}: size {} vs {}",
                rel.display(),
                ma.len(),
                mb.len()
            ));
        }
    }
    for rel in tb.keys() {
        if !ta.contains_key(rel) {
            diffs.push(format!("only in {}: {}", b.display(), rel.display()));
        }
    }
    diffs
}

/// Every entry below `root` (not following symlinks) by relative path.
fn walk_tree(root: &Path) -> BTreeMap<PathBuf, fs::Metadata> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => panic!("read_dir {}: {e}", dir.display()),
        };
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()));
            let child = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(root.join(&child))
                .unwrap_or_else(|e| panic!("lstat {}: {e}", root.join(&child).display()));
            if meta.is_dir() {
                stack.push(child.clone());
            }
            out.insert(child, meta);
        }
    }
    out
}

/// Seconds since the epoch of a path's mtime (not following symlinks).
pub fn mtime_secs(path: &Path) -> i64 {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    meta.mtime()
}

/// The current time as seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// Whether process `pid` runs (is neither gone nor a zombie). A server's pid stays a zombie
/// until its wrapper reaps it, so this cannot be fooled by pid reuse.
pub fn pid_running(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3, after the parenthesised command name, is the state.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => false,
        },
        Err(_) => false,
    }
}
