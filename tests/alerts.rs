//! The alerts and the dashboard in `k8s/` against a real Prometheus (Debian's `prometheus`
//! package: `promtool` and `prometheus`, installed by `.ci/setup`; a missing one fails the test
//! with that hint, nothing is skipped):
//!
//! - `promtool check rules` and `promtool test rules` (cases in `tests/prometheus/`, each alert
//!   with cases that fire and cases that stay quiet) on the PrometheusRule's `spec`;
//! - every metric the rules and the dashboard name is exported by a running sidecar;
//! - end to end: a Prometheus server scrapes a sidecar whose repository becomes unreachable, and
//!   the stale-backup alert fires (and was quiet while backups succeeded).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{find_on_path, free_port, http_request, make_tree, S3Server, Snapback};

const PW: &str = "alerts-password-2b8e4d";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A program of Debian's `prometheus` package.
fn prometheus_tool(name: &str) -> PathBuf {
    find_on_path(name).unwrap_or_else(|| {
        panic!("{name} not found: run .ci/setup (it installs Debian's prometheus package)")
    })
}

/// The rule groups of `k8s/prometheus-rules.yaml`: its `spec:` block, de-indented (the spec of
/// a PrometheusRule is a Prometheus rules file).
fn rules_spec() -> String {
    let text = fs::read_to_string(repo_file("k8s/prometheus-rules.yaml")).unwrap();
    let mut lines = text.lines().skip_while(|l| *l != "spec:");
    assert_eq!(
        lines.next(),
        Some("spec:"),
        "no top-level spec: in the rule file"
    );
    let mut out = String::new();
    for l in lines {
        assert!(
            l.is_empty() || l.starts_with("  "),
            "spec must be the last top-level key: {l:?}"
        );
        out.push_str(l.get(2..).unwrap_or(""));
        out.push('\n');
    }
    out
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

#[test]
fn rules_pass_promtool_check_and_unit_tests() {
    let promtool = prometheus_tool("promtool");
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("snapback-rules.yaml");
    fs::write(&rules, rules_spec()).unwrap();
    let out = run(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(out.contains("SUCCESS: 7 rules found"), "{out}");
    let cases = tmp.path().join("rules_test.yaml");
    fs::copy(repo_file("tests/prometheus/rules_test.yaml"), &cases).unwrap();
    let out = run(Command::new(&promtool).arg("test").arg("rules").arg(&cases));
    assert!(out.contains("SUCCESS"), "{out}");
}

/// A running `snapback sidecar` with its log in a file; killed on drop.
struct Sidecar {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sidecar {
    fn start(sb: &Snapback, args: &[&str], log: PathBuf) -> Sidecar {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut full = vec!["sidecar", "--listen", &listen];
        full.extend_from_slice(args);
        let child = sb
            .command(&full)
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let sc = Sidecar { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !matches!(http_request(port, "GET", "/readyz", b""), Ok(r) if r.status == 200) {
            assert!(Instant::now() < deadline, "not ready:\n{}", sc.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        sc
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn metrics(&self) -> String {
        let r = http_request(self.port, "GET", "/metrics", b"").unwrap();
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).unwrap()
    }

    fn metric(&self, name: &str) -> f64 {
        let text = self.metrics();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `snapback_*` names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("snapback_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_in_the_rules_and_the_dashboard_is_exported() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let data = tmp.path().join("data");
    make_tree(&data);
    let sb = Snapback::new(repo.to_str().unwrap(), PW);
    sb.run_ok(&["init"]);
    let sc = Sidecar::start(
        &sb,
        &[
            "--every",
            "1h",
            "--verify-every",
            "1h",
            data.to_str().unwrap(),
        ],
        tmp.path().join("sidecar.log"),
    );
    let exported: BTreeSet<String> = sc
        .metrics()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect();
    for file in ["k8s/prometheus-rules.yaml", "k8s/grafana-dashboard.json"] {
        let text = fs::read_to_string(repo_file(file)).unwrap();
        let named = metric_names(&text);
        assert!(named.len() >= 5, "{file}: only {named:?}");
        let missing: Vec<_> = named.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{file} names metrics the sidecar does not export: {missing:?}"
        );
    }
    // The dashboard is valid JSON with its queries in panels.
    let dash: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(repo_file("k8s/grafana-dashboard.json")).unwrap())
            .unwrap();
    assert!(dash["panels"].as_array().is_some_and(|p| p.len() >= 5));
}

/// A `prometheus` server on 127.0.0.1, its data in a temporary directory; killed on drop.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &Path, rules: &str, target_port: u16) -> Prometheus {
        let port = free_port();
        fs::write(dir.join("rules.yaml"), rules).unwrap();
        // Scrapes and rule evaluations every second, so the test takes seconds.
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - rules.yaml\n\
             scrape_configs:\n  - job_name: snapback\n    static_configs:\n      \
             - targets: ['127.0.0.1:{target_port}']\n"
        );
        let config_file = dir.join("prometheus.yml");
        fs::write(&config_file, config).unwrap();
        let child = Command::new(prometheus_tool("prometheus"))
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                fs::File::create(dir.join("prometheus.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let p = Prometheus { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(http_request(port, "GET", "/-/ready", b""), Ok(r) if r.status == 200) {
            assert!(Instant::now() < deadline, "prometheus not ready");
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    /// GET `path` of the HTTP API. HTTP/1.0 and no half-close: Prometheus cancels a query
    /// whose client shut its side of the connection (as the harness's client does), and
    /// HTTP/1.0 answers are never chunked.
    fn api(&self, path: &str) -> serde_json::Value {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{path}: {text}"
        );
        serde_json::from_str(body).unwrap()
    }

    /// The state (`pending`, `firing`) of alert `name`, if active.
    fn alert_state(&self, name: &str) -> Option<String> {
        let v = self.api("/api/v1/alerts");
        v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["labels"]["alertname"] == name)
            .map(|a| a["state"].as_str().unwrap_or_default().to_string())
    }

    /// The value of an instant query with one result.
    fn query(&self, q: &str) -> Option<f64> {
        let mut encoded = String::new();
        for b in q.bytes() {
            if b.is_ascii_alphanumeric() || b"_-.".contains(&b) {
                encoded.push(b as char);
            } else {
                encoded.push_str(&format!("%{b:02X}"));
            }
        }
        let v = self.api(&format!("/api/v1/query?query={encoded}"));
        v["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse().ok())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The rules with test thresholds: the stale-backup slack of 30 minutes becomes 10 seconds and
/// no alert waits (`for: 0s`). Each substitution must apply, so a changed rule file fails here
/// instead of silently testing something else.
fn rules_for_test() -> String {
    let mut rules = rules_spec();
    assert!(rules.contains("+ 1800)"), "stale-backup slack not found");
    rules = rules.replace("+ 1800)", "+ 10)");
    let fors = rules.matches("for: ").count();
    assert!(fors >= 7, "{fors} for: clauses");
    rules = rules
        .lines()
        .map(|l| match l.find("for: ") {
            Some(i) => format!("{}for: 0s", &l[..i]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    rules
}

/// Prometheus scrapes a sidecar backing up every 2 s: quiet while backups succeed; once the
/// object store is gone, the newest snapshot ages past 2 intervals + the (test) slack and
/// SnapbackBackupStale fires, with SnapbackRepositoryUnreachable.
#[test]
fn stale_backup_alert_fires_in_prometheus_when_backups_fail() {
    let prometheus_bin = prometheus_tool("prometheus");
    assert!(prometheus_bin.is_file());
    let started = Instant::now();
    let s3 = S3Server::start_dedicated();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    make_tree(&data);
    let mut sb = Snapback::s3(&s3, "alerts", PW);
    sb.set_env("SNAPBACK_HOST", "apps/db-0");
    // One retry, not six: a refused connection then fails a backup in about a second rather
    // than after the whole backoff schedule, and the test stays short.
    sb.set_env("SNAPBACK_RETRIES", "1");
    sb.run_ok(&["init"]);
    let sc = Sidecar::start(
        &sb,
        &["--every", "2s", data.to_str().unwrap()],
        tmp.path().join("sidecar.log"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while sc.metric("snapback_backups_total{result=\"success\"}") < 1.0 {
        assert!(Instant::now() < deadline, "no backup:\n{}", sc.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let prom = Prometheus::start(tmp.path(), &rules_for_test(), sc.port);

    // Healthy: scraped, the snapshot fresh, the alert quiet over several evaluations.
    let deadline = Instant::now() + Duration::from_secs(20);
    while prom
        .query("snapback_latest_snapshot_timestamp_seconds")
        .is_none_or(|v| v <= 0.0)
    {
        assert!(
            Instant::now() < deadline,
            "prometheus has not scraped the sidecar"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    for _ in 0..12 {
        assert_eq!(prom.alert_state("SnapbackBackupStale"), None);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(prom.query("snapback_repository_up"), Some(1.0));

    // The object store goes away: backups fail, the newest snapshot ages.
    drop(s3);
    let deadline = Instant::now() + Duration::from_secs(40);
    while prom.alert_state("SnapbackBackupStale").as_deref() != Some("firing") {
        assert!(
            Instant::now() < deadline,
            "SnapbackBackupStale did not fire; sidecar log:\n{}",
            sc.log_text()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while prom.alert_state("SnapbackRepositoryUnreachable").as_deref() != Some("firing") {
        assert!(
            Instant::now() < deadline,
            "SnapbackRepositoryUnreachable did not fire"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!("end to end in {:.1} s", started.elapsed().as_secs_f64());
}
