//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of an S3 server (moto).
//!
//! Requests pass through unchanged (one upstream connection per request) unless a [`Rule`]
//! fires for them; then the proxy answers with an S3-style XML error, drops the connection,
//! stalls, or passes the request on but cuts the response body short. [`FaultProxy::set_down`]
//! makes every request fail the same way until cleared ("the server is down").
//!
//! std threads only; every wait is bounded, and dropping the proxy stops it.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the proxy does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and an S3 XML error body (request not forwarded).
    Status(u16),
    /// Read the request, then close the connection without a response.
    Drop,
    /// Hold the request this long without answering, then close the connection.
    Stall(Duration),
    /// Forward the request (the server applies it), send the response head with its full
    /// Content-Length but only half of the body (half of the head when the body is empty),
    /// then close the connection.
    Truncate,
}

impl Fault {
    fn name(&self) -> String {
        match self {
            Fault::Status(s) => format!("HTTP {s}"),
            Fault::Drop => "dropped connection".into(),
            Fault::Stall(d) => format!("stall {:.0}s", d.as_secs_f64()),
            Fault::Truncate => "truncated body".into(),
        }
    }
}

/// Which of the matching requests a rule hits (0-based over the requests it matches).
#[derive(Debug, Clone)]
pub enum When {
    /// Every `n`th matching request (the `n`th, `2n`th, ...).
    Every(usize),
    /// These matching requests.
    At(Vec<usize>),
    /// Every matching request from this one on.
    From(usize),
}

/// A fault schedule entry: requests matching `method` (any when `None`) and whose path
/// contains `path` (any when `None`) are counted; those `when` selects get `fault`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub method: Option<&'static str>,
    pub path: Option<&'static str>,
    pub when: When,
    pub fault: Fault,
}

impl Rule {
    /// `fault` on every `n`th request of `method` (`None`: any method).
    pub fn every(method: Option<&'static str>, n: usize, fault: Fault) -> Rule {
        Rule {
            method,
            path: None,
            when: When::Every(n.max(1)),
            fault,
        }
    }

    /// `fault` on the requests of `method` whose path contains `path`, at these 0-based
    /// positions among them.
    pub fn at(method: &'static str, path: &'static str, positions: &[usize], fault: Fault) -> Rule {
        Rule {
            method: Some(method),
            path: Some(path),
            when: When::At(positions.to_vec()),
            fault,
        }
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        self.method.is_none_or(|m| m.eq_ignore_ascii_case(method))
            && self.path.is_none_or(|p| path.contains(p))
    }

    fn fires(&self, seen: usize) -> bool {
        match &self.when {
            When::Every(n) => (seen + 1) % n == 0,
            When::At(list) => list.contains(&seen),
            When::From(first) => seen >= *first,
        }
    }
}

/// One injected fault, for the test's report.
#[derive(Debug, Clone)]
pub struct Injected {
    pub method: String,
    pub path: String,
    pub fault: Fault,
}

#[derive(Default)]
struct State {
    rules: Vec<(Rule, usize)>,
    down: Option<Fault>,
    requests: usize,
    injected: Vec<Injected>,
}

/// The running proxy; stopped on drop.
pub struct FaultProxy {
    port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy on a free 127.0.0.1 port forwarding to `127.0.0.1:upstream`.
    pub fn start(upstream: u16, rules: Vec<Rule>) -> FaultProxy {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind proxy");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            rules: rules.into_iter().map(|r| (r, 0)).collect(),
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (state, stop) = (state.clone(), stop.clone());
                            std::thread::spawn(move || {
                                let _ = serve(conn, upstream, &state, &stop);
                            });
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        FaultProxy {
            port,
            state,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Replaces the fault schedule (counters restart).
    pub fn set_rules(&self, rules: Vec<Rule>) {
        self.state.lock().unwrap().rules = rules.into_iter().map(|r| (r, 0)).collect();
    }

    /// Every request gets `fault` (the server is down) until `set_down(None)`.
    pub fn set_down(&self, fault: Option<Fault>) {
        self.state.lock().unwrap().down = fault;
    }

    /// Requests seen so far.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().requests
    }

    /// Faults injected so far.
    pub fn injected(&self) -> Vec<Injected> {
        self.state.lock().unwrap().injected.clone()
    }

    /// "N faults in M requests (HTTP 503 ×a, dropped connection ×b, ...)".
    pub fn summary(&self) -> String {
        let state = self.state.lock().unwrap();
        let mut kinds: Vec<(String, usize)> = Vec::new();
        for i in &state.injected {
            let name = format!("{} {}", i.method, i.fault.name());
            match kinds.iter_mut().find(|(k, _)| *k == name) {
                Some((_, n)) => *n += 1,
                None => kinds.push((name, 1)),
            }
        }
        let detail: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
        format!(
            "{} faults in {} requests ({})",
            state.injected.len(),
            state.requests,
            detail.join(", ")
        )
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

struct Request {
    method: String,
    path: String,
    /// Request line and headers, `Connection` and `Expect` removed, without the blank line.
    head: Vec<String>,
    body: Vec<u8>,
    close: bool,
}

/// Serves one client connection (keep-alive) until it closes or a fault ends it.
fn serve(
    client: TcpStream,
    upstream: u16,
    state: &Mutex<State>,
    stop: &AtomicBool,
) -> io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(120)))?;
    client.set_write_timeout(Some(Duration::from_secs(120)))?;
    let mut writer = client.try_clone()?;
    let mut reader = BufReader::new(client);
    loop {
        let Some(req) = read_request(&mut reader, &mut writer)? else {
            return Ok(());
        };
        let fault = {
            let mut st = state.lock().unwrap();
            st.requests += 1;
            let mut fault = st.down;
            for (rule, seen) in st.rules.iter_mut() {
                if rule.matches(&req.method, &req.path) {
                    if fault.is_none() && rule.fires(*seen) {
                        fault = Some(rule.fault);
                    }
                    *seen += 1;
                }
            }
            if let Some(f) = fault {
                st.injected.push(Injected {
                    method: req.method.clone(),
                    path: req.path.clone(),
                    fault: f,
                });
            }
            fault
        };
        match fault {
            None => {
                let (head, body) = forward(upstream, &req)?;
                writer.write_all(&head)?;
                writer.write_all(&body)?;
                writer.flush()?;
            }
            Some(Fault::Status(code)) => {
                let (s3code, reason) = match code {
                    503 => ("SlowDown", "Service Unavailable"),
                    500 => ("InternalError", "Internal Server Error"),
                    _ => ("InternalError", "Error"),
                };
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{s3code}</Code>\
                     <Message>injected by the test's fault proxy</Message>\
                     <Resource>{}</Resource><RequestId>fault</RequestId></Error>",
                    req.path
                );
                write!(
                    writer,
                    "HTTP/1.1 {code} {reason}\r\nContent-Type: application/xml\r\n\
                     Content-Length: {}\r\n{}\r\n{body}",
                    body.len(),
                    if req.close {
                        "Connection: close\r\n"
                    } else {
                        ""
                    }
                )?;
                writer.flush()?;
            }
            Some(Fault::Drop) => {
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Stall(d)) => {
                let until = Instant::now() + d;
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
            Some(Fault::Truncate) => {
                let (head, body) = forward(upstream, &req)?;
                if body.is_empty() {
                    writer.write_all(&head[..head.len() / 2])?;
                } else {
                    writer.write_all(&head)?;
                    writer.write_all(&body[..body.len() / 2])?;
                }
                writer.flush()?;
                let _ = writer.shutdown(Shutdown::Both);
                return Ok(());
            }
        }
        if req.close || stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Reads one request; `None` when the client closed the connection between requests.
fn read_request(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
) -> io::Result<Option<Request>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(bad("eof in request head"))
            };
        }
        let line = line.trim_end_matches(['\r', '\n']).to_string();
        if line.is_empty() {
            if lines.is_empty() {
                continue;
            }
            break;
        }
        lines.push(line);
        if lines.len() > 200 {
            return Err(bad("too many header lines"));
        }
    }
    let mut parts = lines[0].split_whitespace();
    let method = parts.next().ok_or_else(|| bad("no method"))?.to_string();
    let path = parts.next().ok_or_else(|| bad("no path"))?.to_string();
    let header = |name: &str| {
        lines[1..].iter().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    };
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
        writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let mut body = Vec::new();
    if chunked {
        // Passed on as it came (chunked), up to and including the last chunk's trailer.
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line)?;
            body.extend_from_slice(size_line.as_bytes());
            let size =
                usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                loop {
                    let mut t = String::new();
                    reader.read_line(&mut t)?;
                    body.extend_from_slice(t.as_bytes());
                    if t.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let mut chunk = vec![0u8; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk);
        }
    } else if let Some(len) = header("content-length") {
        let len: usize = len.parse().map_err(|_| bad("bad content-length"))?;
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    }
    let head = lines
        .into_iter()
        .filter(|l| {
            let name = l.split(':').next().unwrap_or("").trim();
            !name.eq_ignore_ascii_case("connection") && !name.eq_ignore_ascii_case("expect")
        })
        .collect();
    Ok(Some(Request {
        method,
        path,
        head,
        body,
        close,
    }))
}

/// Sends `req` to the upstream server on a connection of its own and returns the response
/// head (re-framed with a Content-Length) and body.
fn forward(upstream: u16, req: &Request) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    up.set_write_timeout(Some(Duration::from_secs(120)))?;
    let mut out = Vec::with_capacity(req.body.len() + 1024);
    for l in &req.head {
        out.extend_from_slice(l.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&req.body);
    up.write_all(&out)?;
    up.flush()?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;

    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad("upstream sent no response head"))?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let mut head_lines: Vec<&str> = head_text.split("\r\n").collect();
    let is_chunked = head_lines.iter().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let has_length = head_lines.iter().any(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
    });
    if is_chunked {
        body = super::decode_chunked(&body).ok_or_else(|| bad("bad chunked response"))?;
    }
    head_lines.retain(|l| {
        let name = l.split(':').next().unwrap_or("").trim();
        let dropped = name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("transfer-encoding")
            || (is_chunked && name.eq_ignore_ascii_case("content-length"));
        !dropped
    });
    let mut head = head_lines.join("\r\n");
    if is_chunked || !has_length {
        head.push_str(&format!("\r\nContent-Length: {}", body.len()));
    }
    head.push_str("\r\n\r\n");
    Ok((head.into_bytes(), body))
}
