//! Tar writer and reader against each other and against GNU tar (`/usr/bin/tar`).

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use snapback_stream::{
    write_tar, EntryKind, EntrySource, Error, Metadata, TarSource, WalkOptions, Walker,
};

/// A tree with every entry type tar can hold and awkward names.
fn build_tree(root: &Path) {
    fs::create_dir_all(root.join("nested/deeper/deepest")).unwrap();
    fs::write(root.join("empty"), b"").unwrap();
    fs::write(root.join("nested/deeper/deepest/leaf.txt"), b"leaf\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(root.join("big.bin"), &big).unwrap();
    let long = "n".repeat(150);
    fs::write(root.join(&long), b"long name").unwrap();
    let mut deep = root.to_path_buf();
    for i in 0..4 {
        deep.push(format!("{i}{}", "d".repeat(70)));
    }
    fs::create_dir_all(&deep).unwrap();
    fs::write(deep.join("f"), b"deep").unwrap();
    fs::write(root.join("ünïcødé ✓.txt"), "unicode").unwrap();
    std::os::unix::fs::symlink("nested/deeper", root.join("link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(120), root.join("longlink")).unwrap();
    fs::write(root.join("hard1"), b"hard").unwrap();
    fs::hard_link(root.join("hard1"), root.join("hard2")).unwrap();
    let fifo = root.join("fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    fs::set_permissions(root.join("empty"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("hard1"), fs::Permissions::from_mode(0o4755)).unwrap();
    xattr::set(root.join("big.bin"), "user.note", b"multi\nline=value").unwrap();
    touch(&root.join("big.bin"), "1700000000.123456789");
    touch(&root.join("empty"), "1600000000.5");
}

fn touch(p: &Path, at: &str) {
    let ok = Command::new("touch")
        .arg("-h")
        .arg("-d")
        .arg(format!("@{at}"))
        .arg(p)
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// An entry as comparable data: everything except what a tar stream cannot carry.
#[derive(Debug, PartialEq)]
struct Seen {
    path: PathBuf,
    kind: EntryKind,
    meta: Metadata,
    data: Vec<u8>,
}

fn drain(source: &mut dyn EntrySource) -> Result<Vec<Seen>, Error> {
    let mut out = Vec::new();
    while let Some(mut e) = source.next_entry()? {
        let mut data = Vec::new();
        if let Some(r) = e.data.as_mut() {
            r.read_to_end(&mut data).map_err(Error::ReadTar)?;
        }
        let mut meta = e.meta.clone();
        meta.inode = 0;
        meta.dev = 0;
        meta.nlink = 0;
        meta.atime = None;
        meta.ctime = None;
        out.push(Seen {
            path: e.path.clone(),
            kind: e.kind.clone(),
            meta,
            data,
        });
    }
    Ok(out)
}

fn our_tar(root: &Path) -> Vec<u8> {
    let mut w = Walker::new([root], WalkOptions::default()).unwrap();
    let mut out = Vec::new();
    let summary = write_tar(&mut w, &mut out).unwrap();
    assert!(summary.warnings.is_empty(), "{:?}", summary.warnings);
    out
}

#[test]
fn writer_then_reader_round_trips_every_entry() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    build_tree(&root);
    let walked = drain(&mut Walker::new([&root], WalkOptions::default()).unwrap()).unwrap();
    let stream = our_tar(&root);
    let read = drain(&mut TarSource::new(stream.as_slice())).unwrap();
    assert_eq!(read.len(), walked.len());
    for (r, w) in read.iter().zip(&walked) {
        assert_eq!(r, w);
    }
    // The tree really exercised the interesting cases.
    assert!(walked
        .iter()
        .any(|e| matches!(e.kind, EntryKind::HardLink { .. })));
    assert!(walked.iter().any(|e| e.meta.mtime.nanos == 123_456_789));
    assert!(walked.iter().any(|e| !e.meta.xattrs.is_empty()));
    assert!(walked.iter().any(|e| e.path.as_os_str().len() > 255));
}

#[test]
fn writer_output_is_byte_identical_for_an_unchanged_tree() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    build_tree(&root);
    let a = our_tar(&root);
    let b = our_tar(&root);
    assert_eq!(a.len() % 512, 0);
    assert!(a == b, "two runs differ");
}

/// Runs GNU tar with `args`, returning stdout.
fn gnu_tar(args: &[&str], cwd: &Path) -> Vec<u8> {
    let out = Command::new("/usr/bin/tar")
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn reader_yields_what_gnu_tar_wrote_in_gnu_and_posix_formats() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    build_tree(&root);
    let walked = drain(&mut Walker::new([&root], WalkOptions::default()).unwrap()).unwrap();
    for format in ["--format=gnu", "--format=posix"] {
        let stream = gnu_tar(
            &[
                "-c",
                format,
                "--xattrs",
                "--sort=name",
                "-f",
                "-",
                root.to_str().unwrap(),
            ],
            t.path(),
        );
        let read = drain(&mut TarSource::new(stream.as_slice())).unwrap();
        let paths = |v: &[Seen]| v.iter().map(|e| e.path.clone()).collect::<Vec<_>>();
        assert_eq!(paths(&read), paths(&walked), "{format}");
        for (r, w) in read.iter().zip(&walked) {
            assert_eq!(r.kind, w.kind, "{format} {:?}", r.path);
            assert_eq!(r.data, w.data, "{format} {:?}", r.path);
            assert_eq!(r.meta.mode, w.meta.mode, "{format} {:?}", r.path);
            assert_eq!(
                r.meta.mtime.secs, w.meta.mtime.secs,
                "{format} {:?}",
                r.path
            );
            assert_eq!(r.meta.user, w.meta.user, "{format} {:?}", r.path);
            if format == "--format=posix" {
                assert_eq!(r.meta.mtime, w.meta.mtime, "{format} {:?}", r.path);
                assert_eq!(r.meta.xattrs, w.meta.xattrs, "{format} {:?}", r.path);
            }
        }
    }
}

#[test]
fn gnu_tar_lists_and_extracts_our_stream_identically() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    build_tree(&root);
    let stream = our_tar(&root);
    let out = t.path().join("out");
    fs::create_dir(&out).unwrap();
    let mut child = Command::new("/usr/bin/tar")
        .args(["-xpf", "-", "--xattrs", "--xattrs-include=*", "-C"])
        .arg(&out)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&stream).unwrap();
    assert!(child.wait().unwrap().success());
    let extracted = out.join(root.strip_prefix("/").unwrap());
    // diff cannot compare fifos; that one is checked by type below.
    let diff = Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "fifo"])
        .arg(&root)
        .arg(&extracted)
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(fs::symlink_metadata(extracted.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert_eq!(
        xattr::get(extracted.join("big.bin"), "user.note")
            .unwrap()
            .as_deref(),
        Some(&b"multi\nline=value"[..])
    );
}

#[test]
fn truncated_stream_is_an_error_wherever_it_is_cut() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    build_tree(&root);
    let stream = our_tar(&root);
    // Before the end marker, inside a header, inside file content.
    for cut in [
        stream.len() - 1024,
        512 + 100,
        1_000_000,
        stream.len() - 1536 - 7,
    ] {
        let r = drain(&mut TarSource::new(&stream[..cut]));
        assert!(
            matches!(r, Err(Error::Truncated { .. }) | Err(Error::ReadTar(_))),
            "cut at {cut}: {:?}",
            r.map(|v| v.len())
        );
    }
    assert!(drain(&mut TarSource::new(&stream[..])).is_ok());
}

#[test]
fn corrupt_header_is_a_malformed_error() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    build_tree(&root);
    let mut stream = our_tar(&root);
    stream[10] ^= 0x20; // inside the first header's name
    let r = drain(&mut TarSource::new(stream.as_slice()));
    assert!(
        matches!(r, Err(Error::Malformed { .. })),
        "{:?}",
        r.map(|v| v.len())
    );
}

#[test]
fn reader_skips_dotdot_members_with_a_warning_and_strips_leading_slash() {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [("/abs/file", &b"a"[..]), ("./rel/file", b"b")] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    let mut h = tar::Header::new_ustar();
    h.set_size(4);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    let evil = b"../evil";
    h.as_old_mut().name[..evil.len()].copy_from_slice(evil);
    h.set_cksum();
    b.append(&h, &b"evil"[..]).unwrap();
    let stream = b.into_inner().unwrap();
    let mut src = TarSource::new(stream.as_slice());
    let got = drain(&mut src).unwrap();
    let paths: Vec<_> = got.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        paths,
        vec![PathBuf::from("abs/file"), PathBuf::from("rel/file")]
    );
    assert_eq!(got[1].data, b"b");
    assert_eq!(src.warnings().len(), 1);
    assert_eq!(src.warnings()[0].path, PathBuf::from("../evil"));
}

#[test]
fn unread_content_is_skipped_before_the_next_entry() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    build_tree(&root);
    let stream = our_tar(&root);
    let mut src = TarSource::new(stream.as_slice());
    let mut n = 0;
    while let Some(mut e) = src.next_entry().unwrap() {
        if let Some(r) = e.data.as_mut() {
            let mut first = [0u8; 1];
            let _ = r.read(&mut first).unwrap();
        }
        n += 1;
    }
    let walked = drain(&mut Walker::new([&root], WalkOptions::default()).unwrap()).unwrap();
    assert_eq!(n, walked.len());
}

#[test]
fn every_gnu_tar_format_is_detected_and_read() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    fs::create_dir_all(root.join("d")).unwrap();
    fs::write(root.join("d/f.txt"), b"content").unwrap();
    std::os::unix::fs::symlink("d/f.txt", root.join("s")).unwrap();
    for format in ["v7", "ustar", "gnu", "posix", "oldgnu"] {
        let stream = gnu_tar(
            &[
                "-c",
                &format!("--format={format}"),
                "--sort=name",
                "-f",
                "-",
                "tree",
            ],
            t.path(),
        );
        assert!(snapback_stream::looks_like_tar(&stream[..512]), "{format}");
        let got = drain(&mut TarSource::new(stream.as_slice())).unwrap();
        let summary: Vec<(String, EntryKind, Vec<u8>)> = got
            .into_iter()
            .map(|e| (e.path.display().to_string(), e.kind, e.data))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("tree".into(), EntryKind::Dir, vec![]),
                ("tree/d".into(), EntryKind::Dir, vec![]),
                ("tree/d/f.txt".into(), EntryKind::File, b"content".to_vec()),
                (
                    "tree/s".into(),
                    EntryKind::Symlink {
                        target: "d/f.txt".into()
                    },
                    vec![]
                ),
            ],
            "{format}"
        );
    }
    assert!(!snapback_stream::looks_like_tar(b"#!/bin/sh\n"));
}
