//! S3 as users run it: a server that verifies every request's SigV4 signature (moto with
//! IAM checks on), the AWS credential chain from the environment (static keys, session
//! token, web identity at an STS endpoint, container credentials, shared profile only when
//! asked for), TLS with a private CA (`--cacert`, `--insecure-tls`), `init` creating the
//! bucket, and one-line storage errors. restic reads what snapback wrote with the same keys.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{diff_trees, make_tree, AuthS3Server, Restic, Snapback, TestCa, TlsS3Server};

const PW: &str = "s3-auth-password";

/// The last line of stderr, and a check that the error is one line.
fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("snapback:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected:\n{stderr}");
    assert!(
        !errors[0].contains("context:") && !errors[0].contains("response:"),
        "opendal's context dump in the message: {}",
        errors[0]
    );
    errors[0].to_string()
}

/// Keys for a server that does not check them (moto without IAM checks).
fn any_keys() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), common::TEST_ACCESS_KEY.into()),
        (
            "AWS_SECRET_ACCESS_KEY".into(),
            common::TEST_SECRET_KEY.into(),
        ),
        ("AWS_DEFAULT_REGION".into(), "us-east-1".into()),
    ]
}

fn snapback(url: &str, env: Vec<(String, String)>) -> Snapback {
    let mut s = Snapback::new(url, PW);
    s.set_envs(env);
    s
}

#[test]
fn a_signature_checking_server_takes_init_backup_restore_prune_and_check() {
    require_restic!();
    let s3 = AuthS3Server::start();
    let url = s3.repo_url("signed-bucket", "repo");
    let sb = snapback(&url, s3.env());

    // The bucket does not exist: init creates it, as restic does.
    let out = sb.run_ok(&["init"]);
    assert!(out.contains("created bucket signed-bucket"), "{out}");
    assert!(out.contains("created restic repository"), "{out}");

    let src = tempfile::tempdir().unwrap();
    make_tree(src.path());
    let src_arg = src.path().to_str().unwrap();
    sb.run_ok(&["backup", src_arg]);
    std::fs::write(src.path().join("hello.txt"), b"changed\n").unwrap();
    sb.run_ok(&["backup", src_arg]);
    sb.run_ok(&["forget", "--keep-last", "1"]);
    sb.run_ok(&["prune"]);
    sb.run_ok(&["check", "--read-data"]);
    // Locks are written and removed with the signed key too.
    sb.run_ok(&["unlock"]);
    let dst = tempfile::tempdir().unwrap();
    sb.run_ok(&[
        "restore",
        "latest",
        "--target",
        dst.path().to_str().unwrap(),
    ]);
    let restored = dst.path().join(src.path().strip_prefix("/").unwrap());
    assert_eq!(diff_trees(src.path(), &restored), Vec::<String>::new());

    // restic with the same keys on the same server reads all of it.
    let mut restic = Restic::new(&url, PW);
    restic.set_envs(s3.env());
    restic.run_ok(&["check", "--read-data"]);
    let snaps: Vec<serde_json::Value> = restic.json(&["snapshots", "--json"]);
    assert_eq!(snaps.len(), 1);
    let rdst = tempfile::tempdir().unwrap();
    restic.run_ok(&[
        "restore",
        "latest",
        "--target",
        rdst.path().to_str().unwrap(),
    ]);
    let restored = rdst.path().join(src.path().strip_prefix("/").unwrap());
    assert_eq!(diff_trees(src.path(), &restored), Vec::<String>::new());

    // A wrong secret key: one line naming the key and the problem.
    let mut wrong = s3.env();
    wrong[1].1 = "not-the-secret".into();
    let line = one_line_error(&snapback(&url, wrong).run(&["snapshots"]));
    assert!(
        line.contains(&format!(
            "the secret key for {} does not match",
            s3.access_key
        )),
        "{line}"
    );
    // A key the server does not know.
    let mut unknown = s3.env();
    unknown[0].1 = "AKIAUNKNOWNKEY000000".into();
    let line = one_line_error(&snapback(&url, unknown).run(&["snapshots"]));
    assert!(
        line.contains("access key AKIAUNKNOWNKEY000000 is not known to http://127.0.0.1:"),
        "{line}"
    );
    // A key that may not create buckets: init says so, naming the bucket and the key.
    // (Unsigned requests cannot be tried here: moto answers them with an internal error.)
    let (reader, reader_secret) = s3.read_only_key.clone();
    let mut env = s3.env();
    env[0].1 = reader.clone();
    env[1].1 = reader_secret;
    let other = s3.repo_url("readers-bucket", "");
    let line = one_line_error(&snapback(&other, env).run(&["init"]));
    assert!(
        line.contains(&format!(
            "cannot create bucket `readers-bucket` at {}: access denied for key {reader}",
            s3.endpoint()
        )),
        "{line}"
    );
    // With -v the full detail is there.
    let mut wrong = s3.env();
    wrong[1].1 = "not-the-secret".into();
    let out = snapback(&url, wrong).run(&["-v", "snapshots"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("SignatureDoesNotMatch"));
}

#[test]
fn session_token_from_the_environment_signs_requests() {
    let s3 = AuthS3Server::start();
    let url = s3.repo_url("session-bucket", "");
    let env = |token: bool| {
        let mut env = vec![
            (
                "AWS_ACCESS_KEY_ID".to_string(),
                s3.session.access_key.clone(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_string(),
                s3.session.secret_key.clone(),
            ),
            ("AWS_DEFAULT_REGION".to_string(), "us-east-1".to_string()),
        ];
        if token {
            env.push((
                "AWS_SESSION_TOKEN".to_string(),
                s3.session.session_token.clone(),
            ));
        }
        env
    };
    let sb = snapback(&url, env(true));
    sb.run_ok(&["init"]);
    sb.run_ok_with_stdin(&["backup", "--stdin"], b"temporary keys\n");
    sb.run_ok(&["check"]);
    // Without the token the temporary key id means nothing to the server.
    let line = one_line_error(&snapback(&url, env(false)).run(&["snapshots"]));
    assert!(line.contains("is not known"), "{line}");
}

/// A one-endpoint HTTP server on 127.0.0.1 standing in for an AWS credential service;
/// `answer` gets the request head and body and returns (status line, content type, body).
struct CredServer {
    port: u16,
    calls: Arc<AtomicUsize>,
}

impl CredServer {
    fn start(
        answer: impl Fn(&str, &str) -> (&'static str, &'static str, String) + Send + 'static,
    ) -> CredServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let calls = Arc::new(AtomicUsize::new(0));
        let counter = calls.clone();
        // Lives until the test binary exits; it only ever answers on 127.0.0.1.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    head.push_str(&line);
                }
                let mut body = vec![0u8; len];
                let _ = reader.read_exact(&mut body);
                let (status, ctype, text) = answer(&head, &String::from_utf8_lossy(&body));
                let mut stream = reader.into_inner();
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            }
        });
        CredServer { port, calls }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn rfc3339_in(secs: u64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(secs);
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    chrono_like(secs)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days; tests use only std).
fn chrono_like(t: i64) -> String {
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            // Enough percent-decoding for the values these tests send.
            let mut out = Vec::new();
            let b = v.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    if let Ok(x) = u8::from_str_radix(&v[i + 1..i + 3], 16) {
                        out.push(x);
                        i += 3;
                        continue;
                    }
                }
                out.push(if b[i] == b'+' { b' ' } else { b[i] });
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        })
    })
}

const SA_TOKEN: &str = "the-projected-service-account-token";

/// STS as AWS runs it: an unsigned form POST, which must carry the configured role and
/// [`SA_TOKEN`]; it hands out the role's temporary keys claiming they expire in `lifetime`
/// seconds. While the returned flag is set it answers 503.
fn fake_sts(s3: &AuthS3Server, lifetime: u64) -> (CredServer, Arc<AtomicBool>) {
    let role = s3.role_arn.clone();
    let keys = s3.session.clone();
    let failing = Arc::new(AtomicBool::new(false));
    let fail = failing.clone();
    let sts = CredServer::start(move |head, body| {
        if fail.load(Ordering::SeqCst) {
            return ("503 Service Unavailable", "text/plain", "down".into());
        }
        let ok = head.starts_with("POST ")
            && form_value(body, "Action").as_deref() == Some("AssumeRoleWithWebIdentity")
            && form_value(body, "RoleArn").as_deref() == Some(role.as_str())
            && form_value(body, "WebIdentityToken").as_deref() == Some(SA_TOKEN)
            && !head.to_ascii_lowercase().contains("authorization:");
        if !ok {
            return (
                "403 Forbidden",
                "text/xml",
                "<ErrorResponse><Error><Code>AccessDenied</Code><Message>Not authorized to perform sts:AssumeRoleWithWebIdentity</Message></Error></ErrorResponse>".into(),
            );
        }
        let xml = format!(
            "<AssumeRoleWithWebIdentityResponse><AssumeRoleWithWebIdentityResult><Credentials>\
             <AccessKeyId>{}</AccessKeyId><SecretAccessKey>{}</SecretAccessKey>\
             <SessionToken>{}</SessionToken><Expiration>{}</Expiration>\
             </Credentials></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>",
            keys.access_key,
            keys.secret_key,
            keys.session_token,
            rfc3339_in(lifetime)
        );
        ("200 OK", "text/xml", xml)
    });
    (sts, failing)
}

fn irsa_env(s3: &AuthS3Server, sts: &CredServer, token_file: &Path) -> Vec<(String, String)> {
    vec![
        ("AWS_DEFAULT_REGION".to_string(), "us-east-1".to_string()),
        ("AWS_ROLE_ARN".to_string(), s3.role_arn.clone()),
        (
            "AWS_WEB_IDENTITY_TOKEN_FILE".to_string(),
            token_file.to_string_lossy().into_owned(),
        ),
        ("AWS_ENDPOINT_URL_STS".to_string(), sts.url("/")),
    ]
}

#[test]
fn a_failed_refresh_keeps_signing_with_the_current_keys_until_they_expire() {
    let s3 = AuthS3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, SA_TOKEN).unwrap();
    // Keys for 12 s: refreshed from 6 s on.
    let (sts, failing) = fake_sts(&s3, 12);
    let url = s3.repo_url("sts-outage-bucket", "");
    let sb = snapback(&url, irsa_env(&s3, &sts, &token_file));
    sb.run_ok(&["init"]);
    let before = sts.calls();
    let mut child = sb
        .command(&["backup", "--stdin", "--stdin-filename", "outage.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first part ").unwrap();
    // Once the backup has its keys, STS goes down.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sts.calls() == before {
        assert!(
            std::time::Instant::now() < deadline,
            "the backup never asked STS"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    failing.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(7));
    stdin.write_all(b"and the rest\n").unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("refreshing S3 credentials failed"),
        "no refresh was tried: {stderr}"
    );
    assert!(sts.calls() > before + 1);
}

#[test]
fn web_identity_is_exchanged_at_sts_and_refreshed_before_it_expires() {
    require_restic!();
    let s3 = AuthS3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("token");
    std::fs::write(&token_file, format!("{SA_TOKEN}\n")).unwrap();
    // The keys STS hands out claim to expire within 4 s, so a backup outlives them.
    let (sts, _) = fake_sts(&s3, 4);
    let url = s3.repo_url("irsa-bucket", "");
    let env = |file: &Path| irsa_env(&s3, &sts, file);
    let sb = snapback(&url, env(&token_file));
    sb.run_ok(&["init"]);
    let before = sts.calls();
    assert!(before >= 1);

    // A backup that runs past the keys' expiry: stdin delivers half, pauses, then the rest.
    let mut child = sb
        .command(&["backup", "--stdin", "--stdin-filename", "slow.bin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let data = common::pseudo_random_bytes(7, 3 << 20);
    stdin.write_all(&data[..1 << 20]).unwrap();
    std::thread::sleep(Duration::from_secs(5));
    stdin.write_all(&data[1 << 20..]).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let during = sts.calls() - before;
    assert!(
        during >= 2,
        "the keys were not exchanged again before they expired ({during} STS calls)"
    );
    let mut restic = Restic::new(&url, PW);
    restic.set_envs(s3.env());
    restic.run_ok(&["check", "--read-data"]);

    // A token STS refuses: one line naming the source and STS's reason.
    let bad = tmp.path().join("bad-token");
    std::fs::write(&bad, "forged").unwrap();
    let mut sb = snapback(&url, env(&bad));
    sb.set_env("SNAPBACK_RETRIES", "0");
    let line = one_line_error(&sb.run(&["snapshots"]));
    assert!(
        line.contains("cannot get S3 credentials from web identity")
            && line.contains("Not authorized to perform sts:AssumeRoleWithWebIdentity"),
        "{line}"
    );
    assert!(
        !line.contains("forged"),
        "the token is in the message: {line}"
    );
}

#[test]
fn container_credentials_are_fetched_with_the_authorization_token_file() {
    let s3 = AuthS3Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("eks-pod-identity-token");
    std::fs::write(&token_file, "pod-identity-token\n").unwrap();
    let (id, secret) = (s3.access_key.clone(), s3.secret_key.clone());
    let agent = CredServer::start(move |head, _| {
        let authorized = head.starts_with("GET /v1/credentials ")
            && head
                .lines()
                .any(|l| l.eq_ignore_ascii_case("authorization: pod-identity-token"));
        if !authorized {
            return ("401 Unauthorized", "text/plain", "bad token".into());
        }
        let json = format!(
            r#"{{"AccessKeyId":"{id}","SecretAccessKey":"{secret}","Token":"","Expiration":"{}"}}"#,
            rfc3339_in(3600)
        );
        ("200 OK", "application/json", json)
    });
    let url = s3.repo_url("pod-identity-bucket", "");
    let env = |file: &Path| {
        vec![
            ("AWS_DEFAULT_REGION".to_string(), "us-east-1".to_string()),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".to_string(),
                agent.url("/v1/credentials"),
            ),
            (
                "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE".to_string(),
                file.to_string_lossy().into_owned(),
            ),
        ]
    };
    let sb = snapback(&url, env(&token_file));
    sb.run_ok(&["init"]);
    sb.run_ok_with_stdin(&["backup", "--stdin"], b"pod identity\n");
    let fetches = calls_during(&agent, || {
        sb.run_ok(&["check"]);
    });
    // Keys valid for an hour are fetched once per process, not per request.
    assert_eq!(fetches, 1);

    let bad = tmp.path().join("wrong");
    std::fs::write(&bad, "stale").unwrap();
    let mut sb = snapback(&url, env(&bad));
    sb.set_env("SNAPBACK_RETRIES", "0");
    let line = one_line_error(&sb.run(&["snapshots"]));
    assert!(
        line.contains(&format!(
            "cannot get S3 credentials from container credentials at {}",
            agent.url("/v1/credentials")
        )) && line.contains("401"),
        "{line}"
    );
}

fn calls_during(server: &CredServer, run: impl FnOnce()) -> usize {
    let before = server.calls();
    run();
    server.calls() - before
}

#[test]
fn the_shared_profile_is_read_only_when_aws_profile_is_set() {
    let s3 = AuthS3Server::start();
    let home = tempfile::tempdir().unwrap();
    let creds = home.path().join("credentials");
    std::fs::write(
        &creds,
        format!(
            "[backup]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3.access_key, s3.secret_key
        ),
    )
    .unwrap();
    let url = s3.repo_url("profile-bucket", "");
    let mut sb = snapback(
        &url,
        vec![
            ("AWS_DEFAULT_REGION".to_string(), "us-east-1".to_string()),
            (
                "HOME".to_string(),
                home.path().to_string_lossy().into_owned(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE".to_string(),
                creds.to_string_lossy().into_owned(),
            ),
            (
                "AWS_CONFIG_FILE".to_string(),
                home.path().join("config").to_string_lossy().into_owned(),
            ),
        ],
    );
    // Not asked for: the file is not read, the requests go unsigned and fail (moto answers
    // unsigned requests with an internal error rather than AWS's 403).
    sb.set_env("SNAPBACK_RETRIES", "0");
    let line = one_line_error(&sb.run(&["init"]));
    assert!(!line.contains(&s3.access_key), "{line}");
    sb.set_env("AWS_PROFILE", "backup");
    sb.run_ok(&["init"]);
    sb.run_ok(&["snapshots"]);
    sb.set_env("AWS_PROFILE", "missing");
    let line = one_line_error(&sb.run(&["snapshots"]));
    assert!(
        line.contains("profile missing has no aws_access_key_id"),
        "{line}"
    );
}

#[test]
fn a_private_ca_is_trusted_with_cacert_and_refused_without() {
    require_restic!();
    let ca = TestCa::new();
    let s3 = TlsS3Server::start(&ca);
    let url = format!("s3:{}/tls-bucket/repo", s3.endpoint());
    let env = any_keys();
    let cacert = ca.ca_cert.to_str().unwrap();

    let mut plain = snapback(&url, env.clone());
    plain.set_env("SNAPBACK_RETRIES", "0");
    let line = one_line_error(&plain.run(&["init"]));
    assert!(
        line.contains("TLS: unknown certificate authority"),
        "{line}"
    );
    assert!(line.contains(&s3.endpoint()), "{line}");

    let sb = snapback(&url, env.clone());
    let out = sb.run_ok(&["--cacert", cacert, "init"]);
    assert!(out.contains("created bucket tls-bucket"), "{out}");
    sb.run_ok_with_stdin(&["--cacert", cacert, "backup", "--stdin"], b"over TLS\n");
    // RESTIC_CACERT as restic reads it.
    let mut by_env = snapback(&url, env.clone());
    by_env.set_env("RESTIC_CACERT", cacert);
    by_env.run_ok(&["check", "--read-data"]);

    // --insecure-tls works, and says what it costs.
    let out = sb.run(&["--insecure-tls", "snapshots"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not verified"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A file that is not a certificate is its own clear error.
    let junk = ca.dir.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let line = one_line_error(&sb.run(&["--cacert", junk.to_str().unwrap(), "snapshots"]));
    assert!(line.contains("holds no PEM certificate"), "{line}");

    let mut restic = Restic::new(&url, PW);
    restic.set_envs(env);
    restic.run_ok(&["--cacert", cacert, "check", "--read-data"]);
}

#[test]
fn storage_errors_say_what_and_where_in_one_line() {
    let s3 = common::S3Server::start();
    let endpoint = s3.endpoint();
    let url = format!("s3:{endpoint}/no-such-bucket-here/repo");
    let line = one_line_error(&snapback(&url, s3.env()).run(&["snapshots"]));
    assert!(
        line.contains(&format!(
            "bucket `no-such-bucket-here` does not exist at {endpoint}"
        )),
        "{line}"
    );

    // Nothing listens on this port.
    let port = common::free_port();
    let url = format!("s3:http://127.0.0.1:{port}/bucket/repo");
    let mut sb = snapback(&url, s3.env());
    sb.set_env("SNAPBACK_RETRIES", "0");
    let line = one_line_error(&sb.run(&["snapshots"]));
    assert!(
        line.contains(&format!(
            "cannot connect to http://127.0.0.1:{port}: connection refused"
        )),
        "{line}"
    );
}
