#!/usr/bin/env python3
"""Deterministic "many small files" data set for benches/shapes.sh (issue 13).

  gen_many_files.py OUT [FILES] [--per-dir N]    (default FILES: 300000, N: 1000)

Writes
  OUT/data/gNN/dNNNN/...   FILES regular files, 1,000 per directory (10 directories per group;
                           --per-dir FILES: all in one directory, a mail store's or an upload
                           folder's shape)
  OUT/delta/...            the "changed" variant as a delta: 1% of the files modified (new content,
                           same path) and 1% new files, at the same relative paths as in data/
  OUT/.generated           written last; a data set without it is incomplete

Sizes: 80% are 20–45 bytes, 15% 46–1,024 bytes, 5% 1 KiB–6 KiB. Contents are seeded pseudo-random
bytes (no two files alike, so nothing dedups). Every directory holds a few odd names: spaces,
UTF-8 (accents, CJK, an emoji), a newline, a leading dash; every tenth directory one name with
invalid-UTF-8 bytes (0xff, 0xfe, a lone 0xc3). Odd names differ in their ASCII part too, so a tool
that replaces invalid bytes with U+FFFD (restic 0.14 does, in its JSON trees) cannot make two of
them collide. All mtimes are fixed (data: 2024-01-01, delta: 2024-06-01), directories included.

The changed tree is staged by shapes.sh as a hard-link farm: `cp -al data work`, then every file of
delta/ is linked over work/ (`ln -f`), so unchanged files keep their inode and ctime.
"""
import os
import random
import sys

PER_DIR = 1000
DIRS_PER_GROUP = 10
MTIME_DATA = 1704067200  # 2024-01-01T00:00:00Z
MTIME_DELTA = 1717200000  # 2024-06-01T00:00:00Z

# Odd names placed at fixed indices of every directory (bytes: names are not text on Linux).
ODD = [
    b"with space.txt",
    b" leading and trailing space ",
    "caf\u00e9 cr\u00e8me.txt".encode(),
    "\u65e5\u672c\u8a9e\u306e\u30d5\u30a1\u30a4\u30eb.txt".encode(),
    "emoji \U0001f4be.bin".encode(),
    b"new\nline.txt",
    b"-dash-first",
    b"tab\there",
]
INVALID = [b"invalid-\xff\xfe.bin", b"lone-\xc3-byte.txt"]


def size_for(rng):
    p = rng.random()
    if p < 0.80:
        return rng.randint(20, 45)
    if p < 0.95:
        return rng.randint(46, 1024)
    return rng.randint(1025, 6 * 1024)


def file_name(d, i):
    """Name of file i (0..PER_DIR) in directory d: mostly plain, a few odd ones."""
    if i < len(ODD):
        return b"%04d " % i + ODD[i]
    if d % 10 == 0 and i - len(ODD) < len(INVALID):
        return b"%04d " % i + INVALID[i - len(ODD)]
    return b"f%06d.dat" % (d * PER_DIR + i)


def dir_path(root, d):
    return os.path.join(root, b"g%02d" % (d // DIRS_PER_GROUP), b"d%04d" % d)


def write(path, data, mtime):
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (mtime, mtime))


def fix_dir_times(root, mtime):
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        os.utime(dirpath, (mtime, mtime))


def main():
    global PER_DIR
    args = sys.argv[1:]
    if "--per-dir" in args:
        at = args.index("--per-dir")
        PER_DIR = int(args[at + 1])
        del args[at:at + 2]
    if len(args) not in (1, 2):
        sys.exit("usage: gen_many_files.py OUT [FILES] [--per-dir N]")
    out = os.fsencode(args[0])
    files = int(args[1]) if len(args) == 2 else 300_000
    data = os.path.join(out, b"data")
    delta = os.path.join(out, b"delta")
    marker = os.path.join(out, b".generated")
    if os.path.exists(marker):
        os.remove(marker)
    for p in (data, delta):
        if os.path.exists(p):
            sys.exit(f"{os.fsdecode(p)} exists; remove it first")

    dirs = (files + PER_DIR - 1) // PER_DIR
    rng = random.Random(13)
    made = 0
    for d in range(dirs):
        dp = dir_path(data, d)
        os.makedirs(dp)
        for i in range(min(PER_DIR, files - made)):
            write(os.path.join(dp, file_name(d, i)), rng.randbytes(size_for(rng)), MTIME_DATA)
            made += 1
    fix_dir_times(data, MTIME_DATA)

    # Changed variant: 1% modified, 1% new, chosen by their own seed.
    crng = random.Random(14)
    modified = sorted(crng.sample(range(files), files // 100))
    for n in modified:
        d, i = divmod(n, PER_DIR)
        dp = dir_path(delta, d)
        os.makedirs(dp, exist_ok=True)
        write(os.path.join(dp, file_name(d, i)), crng.randbytes(size_for(crng)), MTIME_DELTA)
    for k in range(files // 100):
        d = crng.randrange(dirs)
        dp = dir_path(delta, d)
        os.makedirs(dp, exist_ok=True)
        write(os.path.join(dp, b"new-%06d.dat" % k), crng.randbytes(size_for(crng)), MTIME_DELTA)
    fix_dir_times(delta, MTIME_DELTA)

    open(marker, "w").close()
    print(f"{made} files in {dirs} directories; delta: {len(modified)} modified, {files // 100} new")


if __name__ == "__main__":
    main()
