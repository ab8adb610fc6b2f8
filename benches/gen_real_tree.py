#!/usr/bin/env python3
"""A "real tree" data set for benches/shapes.sh, made of the machine's own files (issue 13).

  gen_real_tree.py OUT

Links (hard links when OUT is on the same file system, else copies) a deterministic selection
of system files into OUT/data, keeping the directory structure, symlinks as symlinks:

  /usr/include   up to 150 MB     (headers: many small text files)
  /usr/share     up to 300 MB     (docs, locales, icons, data files)
  /usr/lib       up to 350 MB     (shared objects, Python, compilers: larger binaries)
  RUST_SRC       up to 200 MB     (the toolchain's library sources, when rust-src is installed:
                                   `rustc --print sysroot`/lib/rustlib/src)

Each root is walked in sorted (byte) order, depth first, and taken until its cap of regular-file
bytes is reached; devices, sockets and fifos are skipped, as are files the walk cannot read.
The figures depend on the machine's installed packages; OUT/manifest.txt records the roots,
the counts and the last path taken from each root so that a run can be compared with another.

OUT/delta holds the changed variant as in gen_many_files.py: 1% of the regular files modified
(their content with 64 bytes appended, written as new files) and 1% new files (copies of other
files under new names), at fixed mtime 2024-06-01. Nothing under /usr is ever written: the farm's
files are only ever replaced (ln -f) in the staged copy.
"""
import os
import random
import shutil
import stat
import subprocess
import sys

CAPS = [
    (b"/usr/include", 150_000_000),
    (b"/usr/share", 300_000_000),
    (b"/usr/lib", 350_000_000),
]
RUST_CAP = 200_000_000
MTIME_DELTA = 1717200000


def rust_src():
    try:
        root = subprocess.run(["rustc", "--print", "sysroot"], capture_output=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    src = os.path.join(root, b"lib", b"rustlib", b"src")
    return src if os.path.isdir(src) else None


def walk_sorted(root):
    """(path, lstat) of everything beneath root, sorted depth first, not following symlinks."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return
    for n in names:
        p = os.path.join(root, n)
        try:
            st = os.lstat(p)
        except OSError:
            continue
        yield p, st
        if stat.S_ISDIR(st.st_mode):
            yield from walk_sorted(p)


def place(src, dst, st, dev):
    if stat.S_ISDIR(st.st_mode):
        os.makedirs(dst, exist_ok=True)
        return True
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
        return True
    if not stat.S_ISREG(st.st_mode) or not os.access(src, os.R_OK):
        return False
    if st.st_dev == dev:
        try:
            os.link(src, dst)
            return True
        except OSError:
            pass
    shutil.copy2(src, dst)
    return True


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: gen_real_tree.py OUT")
    out = os.fsencode(sys.argv[1])
    data = os.path.join(out, b"data")
    delta = os.path.join(out, b"delta")
    marker = os.path.join(out, b".generated")
    if os.path.exists(marker):
        os.remove(marker)
    for p in (data, delta):
        if os.path.exists(p):
            sys.exit(f"{os.fsdecode(p)} exists; remove it first")
    os.makedirs(data)
    dev = os.stat(data).st_dev
    roots = list(CAPS)
    rs = rust_src()
    if rs:
        roots.append((rs, RUST_CAP))

    manifest = []
    regular = []
    totals = [0, 0, 0]  # entries, regular files, bytes
    for root, cap in roots:
        if not os.path.isdir(root):
            manifest.append(f"{os.fsdecode(root)}: absent")
            continue
        taken = entries = files = 0
        last = b""
        for p, st in walk_sorted(root):
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            if taken + size > cap:
                if size > cap // 10:
                    continue  # one huge file: skip it, keep filling with smaller ones
                break
            dst = os.path.join(data, root.lstrip(b"/"), os.path.relpath(p, root))
            if not place(p, dst, st, dev):
                continue
            entries += 1
            last = p
            if stat.S_ISREG(st.st_mode):
                files += 1
                taken += size
                regular.append(os.path.relpath(dst, data))
        manifest.append(f"{os.fsdecode(root)}: {entries} entries, {files} files, {taken} bytes, "
                        f"last {os.fsdecode(last)!r}")
        totals[0] += entries
        totals[1] += files
        totals[2] += taken

    rng = random.Random(15)
    n = max(1, len(regular) // 100)
    for rel in sorted(rng.sample(regular, n)):
        dst = os.path.join(delta, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(os.path.join(data, rel), "rb") as f:
            content = f.read()
        with open(dst, "wb") as f:
            f.write(content + rng.randbytes(64))
        os.utime(dst, (MTIME_DELTA, MTIME_DELTA))
    for k, rel in enumerate(sorted(rng.sample(regular, n))):
        dst = os.path.join(delta, os.path.dirname(rel), b"new-%05d-" % k + os.path.basename(rel))
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(os.path.join(data, rel), dst)
        os.utime(dst, (MTIME_DELTA, MTIME_DELTA))

    manifest.append(f"total: {totals[0]} entries, {totals[1]} regular files, {totals[2]} bytes; "
                    f"delta: {n} modified, {n} new")
    with open(os.path.join(out, b"manifest.txt"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    open(marker, "w").close()
    print("\n".join(manifest))


if __name__ == "__main__":
    main()
