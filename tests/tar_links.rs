//! Hard links in a long tar stream resolve to their target's content even when the target's
//! directory finished long before, and neither tar streams, path backups nor restores hold
//! memory per linked file (the guard for any change to how linked files are remembered, issue
//! 13).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Child, Stdio};

use common::{Restic, Snapback};

const PW: &str = "tar-memory-password";

/// A ustar header block (names under 100 bytes).
fn header(name: &str, kind: u8, size: u64, link: &str) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let mode: &[u8] = if kind == b'5' {
        b"0000755\0"
    } else {
        b"0000644\0"
    };
    h[100..108].copy_from_slice(mode);
    h[108..116].copy_from_slice(b"0001750\0");
    h[116..124].copy_from_slice(b"0001750\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"14000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// Writes one member (content padded to whole blocks).
fn member(out: &mut impl Write, name: &str, kind: u8, data: &[u8], link: &str) {
    out.write_all(&header(name, kind, data.len() as u64, link))
        .unwrap();
    out.write_all(data).unwrap();
    let pad = (512 - data.len() % 512) % 512;
    out.write_all(&vec![0; pad]).unwrap();
}

/// A tar stream of `files` tiny files, `per_dir` per directory, all with the same content (so
/// the repository index stays one data blob: what grows is the archiver's own memory).
/// `links` adds, at the end, hard links to the first file, to one in a directory finished long
/// ago and to one in the last directory.
fn stream(out: &mut impl Write, files: usize, per_dir: usize, links: bool) {
    members(out, files, per_dir, links);
    out.write_all(&[0; 1024]).unwrap();
}

/// [`stream`] without its end-of-archive blocks.
fn members(out: &mut impl Write, files: usize, per_dir: usize, links: bool) {
    member(out, "early/", b'5', b"", "");
    member(out, "early/first", b'0', b"the very first member\n", "");
    for i in 0..files {
        if i % per_dir == 0 {
            member(out, &format!("d{:04}/", i / per_dir), b'5', b"", "");
            if links && i == 0 {
                member(out, "d0000/unique", b'0', b"in an early directory\n", "");
            }
        }
        member(
            out,
            &format!("d{:04}/f{i:07}", i / per_dir),
            b'0',
            b"x\n",
            "",
        );
    }
    if links {
        let last = format!("d{:04}", (files - 1) / per_dir);
        member(
            out,
            &format!("{last}/unique"),
            b'0',
            b"in the last one\n",
            "",
        );
        member(out, "links/", b'5', b"", "");
        member(out, "links/to-first", b'1', b"", "early/first");
        member(out, "links/to-early-dir", b'1', b"", "d0000/unique");
        member(
            out,
            "links/to-last-dir",
            b'1',
            b"",
            &format!("{last}/unique"),
        );
    }
}

/// Peak RSS (KiB) of a finished child, from `wait4`'s resource usage.
fn wait_peak_kib(child: Child) -> (std::process::ExitStatus, i64) {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain integers, for which all zero bytes are a valid value. (wait4 is
    // called directly because no crate in the tree returns a child's resource usage.)
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `pid` is our own unwaited child; `status` and `usage` are valid out-pointers.
    let got = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(got, pid, "wait4: {}", std::io::Error::last_os_error());
    std::mem::forget(child); // already reaped
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss)
}

/// Backs up a generated stream of `files` members, `per_dir` per directory, into `sb`'s
/// repository; returns peak RSS.
fn backup_peak(sb: &Snapback, files: usize, per_dir: usize, links: bool) -> i64 {
    backup_stream_peak(sb, &format!("{files} members"), move |out| {
        stream(out, files, per_dir, links)
    })
}

/// Backs up the tar stream `write` produces (fed through a pipe while the backup reads it)
/// into `sb`'s repository; asserts it succeeded and returns peak RSS.
fn backup_stream_peak(
    sb: &Snapback,
    what: &str,
    write: impl FnOnce(&mut std::io::BufWriter<std::process::ChildStdin>) + Send + 'static,
) -> i64 {
    let mut child = sb
        .command(&["backup", "--stdin", "--stdin-filename", "gen.tar"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let mut out = std::io::BufWriter::with_capacity(1 << 20, stdin);
        write(&mut out);
        out.flush().unwrap();
    });
    let (status, peak) = wait_peak_kib(child);
    writer.join().unwrap();
    assert!(status.success(), "backup of {what}: {status}");
    peak
}

fn init(dir: &Path) -> Snapback {
    let sb = Snapback::new(dir.to_str().unwrap(), PW);
    sb.run_ok(&["init"]);
    sb
}

#[test]
fn hard_links_to_members_of_long_finished_directories_restore_with_their_content() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let sb = init(&repo);
    // 60,000 files: their listings (~15 MiB encoded) pass the 2 MiB cache of finished ones.
    backup_peak(&sb, 60_000, 1000, true);
    let out = sb.run_ok(&["dump", "latest", "links/to-first"]);
    assert_eq!(out, LINKS[0].1);
    restore_links(&sb, &tmp.path().join("sb-restore"), &LINKS, "snapback");
    if common::skip_without_restic("hard_links_to_members_of_long_finished_directories") {
        return;
    }
    restic_restores_the_links(&repo, &tmp.path().join("restic-restore"));
}

/// A stream may return to a directory it left long before (its listing evicted from the cache
/// of finished ones): the directory's saved tree is read back and the new member joins it, so
/// the snapshot has one `early` with both files (before, this stopped the backup with an error).
#[test]
fn a_stream_returning_to_a_long_finished_directory_adds_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let sb = init(&repo);
    backup_stream_peak(&sb, "a stream returning to early/", |out| {
        member(out, "early/", b'5', b"", "");
        member(out, "early/first", b'0', b"first\n", "");
        // 50,000 files in 50 directories: ~12 MiB of listings, past the cache (8 MiB before).
        for i in 0..50_000 {
            if i % 1000 == 0 {
                member(out, &format!("d{:02}/", i / 1000), b'5', b"", "");
            }
            member(out, &format!("d{:02}/f{i:05}", i / 1000), b'0', b"x\n", "");
        }
        member(out, "early/second", b'0', b"second\n", "");
        out.write_all(&[0; 1024]).unwrap();
    });
    assert_eq!(sb.run_ok(&["dump", "latest", "early/first"]), "first\n");
    assert_eq!(sb.run_ok(&["dump", "latest", "early/second"]), "second\n");
    if common::skip_without_restic("a_stream_returning_to_a_long_finished_directory") {
        return;
    }
    let restic = Restic::new(repo.to_str().unwrap(), PW);
    restic.run_ok(&["check"]);
    let listed = restic.run_ok(&["ls", "latest", "/early"]);
    let early: Vec<&str> = listed.lines().filter(|l| l.starts_with("/early")).collect();
    assert_eq!(
        early,
        ["/early", "/early/first", "/early/second"],
        "{listed}"
    );
}

/// Makes `files` files under `dir/data` (100 per directory), each with a second link outside
/// `data` when `outside`, or else a link in `dir/data/zz-links` (walked after all of them).
fn linked_tree(dir: &Path, files: usize, outside: bool) {
    let data = dir.join("data");
    let other = if outside {
        dir.join("other")
    } else {
        data.join("zz-links")
    };
    std::fs::create_dir_all(&other).unwrap();
    for i in 0..files {
        let sub = data.join(format!("d{:04}", i / 100));
        if i % 100 == 0 {
            std::fs::create_dir_all(&sub).unwrap();
        }
        let file = sub.join(format!("f{i:06}"));
        std::fs::write(&file, format!("file {i}\n")).unwrap();
        std::fs::hard_link(&file, other.join(format!("l{i:06}"))).unwrap();
    }
}

/// Peak RSS (KiB) of a path backup of `dir/data`.
fn path_backup_peak(sb: &Snapback, dir: &Path) -> i64 {
    let child = sb
        .command(&["backup", dir.join("data").to_str().unwrap()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let (status, peak) = wait_peak_kib(child);
    assert!(
        status.success(),
        "path backup of {}: {status}",
        dir.display()
    );
    peak
}

/// Files whose other link lies outside the backup (a hard-link farm, a mail store linking
/// messages between folders) never see their last link: what the walker and the archiver
/// remember of them is bounded, so 60,000 of them cost about what 6,000 do (before, each
/// stayed remembered to the end: ~10 MiB more for the larger tree).
#[test]
fn files_linked_from_outside_the_backup_do_not_grow_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let sb = init(&tmp.path().join("repo"));
    let small = tmp.path().join("small");
    let large = tmp.path().join("large");
    linked_tree(&small, 6_000, true);
    linked_tree(&large, 60_000, true);
    let small_peak = path_backup_peak(&sb, &small);
    let small_restore = restore_peak(&sb, &tmp.path().join("small-restore"), 6_000);
    let large_peak = path_backup_peak(&sb, &large);
    let large_restore = restore_peak(&sb, &tmp.path().join("large-restore"), 60_000);
    eprintln!("peak RSS: 6,000 linked files {small_peak} KiB, 60,000 {large_peak} KiB");
    eprintln!("restore peak RSS: 6,000 {small_restore} KiB, 60,000 {large_restore} KiB");
    assert!(
        large_peak - small_peak < 6 * 1024,
        "peak RSS grew from {small_peak} KiB to {large_peak} KiB for 54,000 more linked files"
    );
    // Restore remembers up to 32,768 open link groups (~4 MiB), 6,000 of them in the small one.
    assert!(
        large_restore - small_restore < 6 * 1024,
        "restore peak RSS grew from {small_restore} KiB to {large_restore} KiB for 54,000 more \
         linked files"
    );
}

/// Peak RSS (KiB) of restoring the latest snapshot into `target`; checks it restored `files`.
fn restore_peak(sb: &Snapback, target: &Path, files: usize) -> i64 {
    let mut child = sb
        .command(&["restore", "latest", "--target", target.to_str().unwrap()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // One summary line: it fits the pipe, so the child does not block before it is reaped.
    let mut stdout = child.stdout.take().unwrap();
    let (status, peak) = wait_peak_kib(child);
    let mut out = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut out).unwrap();
    assert!(
        status.success(),
        "restore into {}: {status}",
        target.display()
    );
    assert!(out.contains(&format!("restored {files} files")), "{out}");
    peak
}

/// Links within the backup that come after the bound on remembered files forgot their first
/// link are read again: every link still has its file's content, and restic agrees.
#[test]
fn links_past_the_bound_on_remembered_files_keep_their_content() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let sb = init(&repo);
    // 10,000 > the 8,192 files remembered: the first links' targets were forgotten.
    linked_tree(tmp.path(), 10_000, false);
    path_backup_peak(&sb, tmp.path());
    let data = tmp.path().join("data");
    for i in [0usize, 1_000, 9_999] {
        let link = data.join(format!("zz-links/l{i:06}"));
        let snap_path = link.to_str().unwrap().to_string();
        assert_eq!(
            sb.run_ok(&["dump", "latest", &snap_path]),
            format!("file {i}\n")
        );
    }
    // Restore keeps the groups (its bound, 32,768, is not reached): links stay links.
    let target = tmp.path().join("restored");
    restore_peak(&sb, &target, 20_000);
    let restored = target.join(data.strip_prefix("/").unwrap());
    for i in [0usize, 1_000, 9_999] {
        use std::os::unix::fs::MetadataExt;
        let file = restored.join(format!("d{:04}/f{i:06}", i / 100));
        let link = restored.join(format!("zz-links/l{i:06}"));
        assert_eq!(
            std::fs::read_to_string(&link).unwrap(),
            format!("file {i}\n")
        );
        let (f, l) = (file.metadata().unwrap(), link.metadata().unwrap());
        assert_eq!(
            (f.ino(), f.nlink()),
            (l.ino(), 2),
            "{} and its link",
            file.display()
        );
    }
    if common::skip_without_restic("links_past_the_bound_on_remembered_files") {
        return;
    }
    let restic = Restic::new(repo.to_str().unwrap(), PW);
    restic.run_ok(&["check", "--read-data"]);
    for i in [0usize, 5_000, 9_999] {
        let link = data.join(format!("zz-links/l{i:06}"));
        let out = restic.run_ok(&["dump", "latest", link.to_str().unwrap()]);
        assert_eq!(out, format!("file {i}\n"), "restic dump of link {i}");
    }
}

/// The links [`stream`] adds at the end, and the content each must restore with.
const LINKS: [(&str, &str); 3] = [
    ("links/to-first", "the very first member\n"),
    ("links/to-early-dir", "in an early directory\n"),
    ("links/to-last-dir", "in the last one\n"),
];

/// restic checks the repository and restores [`LINKS`] with their content into `target`.
fn restic_restores_the_links(repo: &Path, target: &Path) {
    let restic = Restic::new(repo.to_str().unwrap(), PW);
    restic.run_ok(&["check"]);
    restore_links(&restic, target, &LINKS, "restic");
}

/// Restores `/links` of the latest snapshot with `tool` into `target` and checks each file.
fn restore_links(tool: &common::Tool, target: &Path, expect: &[(&str, &str)], who: &str) {
    tool.run_ok(&[
        "restore",
        "latest",
        "--target",
        target.to_str().unwrap(),
        "--include",
        "/links",
    ]);
    for (path, content) in expect {
        assert_eq!(
            &std::fs::read_to_string(target.join(path)).unwrap(),
            content,
            "{who} restore of {path}"
        );
    }
}

/// Issue 13: a tar member costs no memory once its directory is finished, so peak RSS of a
/// stream of 200,000 members stays within a few MiB of one of 20,000 (measured: +0.5 MiB;
/// keeping each member's path and content ids for later hard links made it grow by 19 MiB).
/// The links at the end still resolve, through the saved trees.
#[test]
fn memory_of_a_tar_stream_does_not_grow_with_its_members() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let sb = init(&repo);
    let small = backup_peak(&sb, 20_000, 1000, false);
    let large = backup_peak(&sb, 200_000, 1000, true);
    eprintln!("peak RSS: 20,000 members {small} KiB, 200,000 members {large} KiB");
    assert!(
        large - small < 6 * 1024,
        "peak RSS grew from {small} KiB to {large} KiB for 180,000 more members"
    );
    if common::skip_without_restic("memory_of_a_tar_stream_does_not_grow_with_its_members") {
        return;
    }
    restic_restores_the_links(&repo, &tmp.path().join("restic-restore"));
}

/// A directory of 200,000 members costs less than its tree blob's size while it is open (its
/// children are held in compressed runs past a few MiB), not a decoded node per member; so
/// does reading it back for the hard links into it (the tree blob is ~230 B per member here),
/// and returning to it at the end of the stream.
#[test]
fn an_open_directory_costs_less_than_its_encoded_listing() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let sb = init(&repo);
    let members = 200_000;
    // Debug build: 674 B before the compact listing, 391 after, 159 with compressed runs (the
    // peak was then the hard link's read-back of the closed directory's tree blob, decoded
    // whole), 0 with the tree read back a node at a time into compressed runs.
    const BOUND: i64 = 64;
    let spread = backup_peak(&sb, members, 1000, false);
    let wide = backup_stream_peak(&sb, "one wide directory", move |out| {
        members_of(out, members);
    });
    let per_member = (wide - spread) * 1024 / members as i64;
    eprintln!("peak RSS: {members} members in 200 directories {spread} KiB, in one {wide} KiB: {per_member} B per member");
    assert!(
        per_member < BOUND,
        "one directory of {members} members costs {per_member} B per member (bound {BOUND})"
    );
    let out = sb.run_ok(&["dump", "latest", "links/to-last-dir"]);
    assert_eq!(out, "in the last one\n");
    if common::skip_without_restic("an_open_directory_costs_less_than_its_encoded_listing") {
        return;
    }
    // restic reads the tree merged from runs: every member once, in order, and of the name
    // given twice ("unique", first in an early run, again at the end) the last.
    let restic = Restic::new(repo.to_str().unwrap(), PW);
    restic.run_ok(&["check", "--read-data"]);
    let listed = restic.run_ok(&["ls", "latest", "/d0000"]);
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.strip_prefix("/d0000/"))
        .collect();
    assert_eq!(names.len(), members + 2, "restic ls of the wide directory");
    assert!(
        names.windows(2).all(|w| w[0] < w[1]),
        "sorted, each name once"
    );
    assert_eq!(
        restic.run_ok(&["dump", "latest", "/d0000/unique"]),
        "in the last one\n"
    );
    assert_eq!(restic.run_ok(&["dump", "latest", "/d0000/f0123456"]), "x\n");
    assert_eq!(
        restic.run_ok(&["dump", "latest", "/d0000/late"]),
        "back again\n"
    );
}

/// `members` files in one directory, the links of [`stream`] (two of them into that directory,
/// finished by then), then one more file in it: the stream returns to it.
fn members_of(out: &mut impl Write, members: usize) {
    self::members(out, members, members, true);
    member(out, "d0000/late", b'0', b"back again\n", "");
    out.write_all(&[0; 1024]).unwrap();
}

/// Every open directory's listing stays in memory until the directory closes (restic's tree
/// blob is one sorted document), and a stream can describe a directory of any number of
/// entries, or wide directories inside each other. Past `--listing-memory`, for all open
/// listings together, the backup stops with one message naming the directory, saves no
/// snapshot, and leaves a repository restic checks clean.
#[test]
fn listings_past_their_memory_limit_stop_the_backup_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("repo");
    let sb = init(&repo);
    let backup = |mib: &str, input: &[u8]| {
        sb.run_with_stdin(
            &[
                "backup",
                "--stdin",
                "--stdin-filename",
                "gen.tar",
                "--listing-memory",
                mib,
            ],
            input,
        )
    };
    let stopped = |out: &std::process::Output, dir: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "backup past the limit succeeded");
        assert!(
            err.contains(&format!("directory {dir}: ")) && err.contains("--listing-memory"),
            "no clear message naming {dir}: {err}"
        );
        assert_eq!(
            err.lines()
                .filter(|l| l.contains("--listing-memory"))
                .count(),
            1,
            "one message: {err}"
        );
    };
    // One directory of 30,000 members (a run's buffer, one compressed run) fits in 8 MiB.
    let mut wide = Vec::new();
    stream(&mut wide, 30_000, 30_000, false);
    let out = backup("8", &wide);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two such directories, one inside the other, are open at once: together over 8 MiB.
    let mut nested = Vec::new();
    for dir in ["a", "a/b"] {
        member(&mut nested, &format!("{dir}/"), b'5', b"", "");
        for i in 0..30_000 {
            member(&mut nested, &format!("{dir}/f{i:07}"), b'0', b"x\n", "");
        }
    }
    nested.extend_from_slice(&[0; 1024]);
    stopped(&backup("8", &nested), "/a/b");
    // One directory whose compressed runs alone grow past the limit.
    let mut wider = Vec::new();
    stream(&mut wider, 100_000, 100_000, false);
    stopped(&backup("5", &wider), "/d0000");
    let snapshots: Vec<serde_json::Value> = sb.json(&["snapshots", "--json"]);
    assert_eq!(snapshots.len(), 1, "a stopped backup saved a snapshot");
    if common::skip_without_restic("listings_past_their_memory_limit_stop_the_backup_cleanly") {
        return;
    }
    let restic = Restic::new(repo.to_str().unwrap(), PW);
    restic.run_ok(&["check", "--read-data"]);
    assert_eq!(restic.run_ok(&["dump", "latest", "/d0000/f0029999"]), "x\n");
}
