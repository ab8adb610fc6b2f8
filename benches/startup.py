#!/usr/bin/env python3
"""Startup: time from exec to the first byte written to the repository, snapback against restic.

  benches/startup.py [--runs N] [--no-s3] [--snapback BIN] [--out DIR]

A sidecar's scheduled backup, or an initContainer-prepared one, pays its start-up cost every
time: open the key (password key derivation, or the warm key file), lock, load the index. This
script backs up a small directory (one new 1 MiB file every run) into an existing repository, local and on a
moto S3 server on 127.0.0.1, with
  snapback --key-file   the initContainer's warm key (no password, no key derivation)
  snapback password     RESTIC_PASSWORD, scrypt as restic calibrated it
  restic password       restic 0.14 (Debian), --no-cache
and reads, from an strace of the process (-f -ttt), the moment of
  first write   S3: the first HTTP PUT/POST sent; local: the first file created in the repository
                (for both tools: the lock)
  first pack    the first write of a pack file (data/): the first backed-up byte uploaded
  exit          the process's exit
both in milliseconds from its execve. strace slows system calls a little, equally for every tool;
key derivation and crypto make none. Medians over N runs, tools alternating. Needs strace.
The table replaces the `startup` section of BENCHMARKS.md (WRITE_DOC=0 to keep it).
"""
import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TOP = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                     check=True, cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
PASSWORD = "startup-bench-password"
POD_UID = "startup-bench-pod"
LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\d+\.\d+)\s+(.*)$")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_moto(log):
    for _ in range(5):
        port = free_port()
        p = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                             stdout=log, stderr=log)
        for _ in range(150):
            if p.poll() is not None:
                break
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                req = urllib.request.Request(f"http://127.0.0.1:{port}/startup", method="PUT")
                urllib.request.urlopen(req, timeout=5)
                return p, port
            except OSError:
                time.sleep(0.2)
        p.kill()
        p.wait()
    sys.exit("moto_server did not start")


def first_writes(trace, target, repo):
    """Milliseconds from execve to the first repository write, to the first pack write, and to
    exit, and what the first write was, read from an strace file."""
    t0 = t_first = t_pack = t_end = None
    what = None
    for raw in open(trace, errors="replace"):
        m = LINE.match(raw.strip())
        if not m:
            continue
        t, rest = float(m.group(2)), m.group(3)
        if t0 is None:
            t0 = t
        t_end = t
        if t_pack is not None:
            continue
        path = None
        if target == "s3":
            w = re.search(r'^(?:write|writev|sendto|sendmsg)\(.*?"(?:PUT|POST) (/[^ "\\]*)', rest)
            if w:
                path = w.group(1)
        else:
            o = re.search(r'^openat\(.*?"([^"]+)", [^)]*O_CREAT', rest)
            if o and o.group(1).startswith(repo + "/"):
                path = o.group(1)[len(repo):]
        if path is None:
            continue
        if t_first is None:
            t_first, what = t, path
        if "/data/" in path:
            t_pack = t
    if t0 is None or t_first is None or t_pack is None:
        raise RuntimeError(f"no repository or pack write found in {trace}")
    # Ids and temporary-name suffixes vary from run to run.
    what = re.sub(r"[0-9a-f]{8,}", "<id>", re.sub(r"-tmp-[0-9a-z]+$", "", what))
    return (t_first - t0) * 1000, (t_pack - t0) * 1000, (t_end - t0) * 1000, what


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--snapback", help="binary to use (default: cargo build --release)")
    ap.add_argument("--out", help="work directory (default: a temporary one)")
    args = ap.parse_args()
    for tool in ("strace", "restic"):
        if not shutil.which(tool):
            sys.exit(f"startup.py needs {tool} (apt-get install {tool})")

    if args.snapback:
        snapback = os.path.abspath(args.snapback)
    else:
        subprocess.run(["cargo", "build", "--release", "--bin", "snapback"], cwd=TOP, check=True)
        target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(TOP, "target"))
        snapback = os.path.join(target_dir, "release", "snapback")
    restic = shutil.which("restic")
    work = args.out or tempfile.mkdtemp(prefix="snapback-startup-")
    os.makedirs(work, exist_ok=True)
    data = os.path.join(work, "data")
    os.makedirs(data, exist_ok=True)
    with open(os.path.join(data, "file.bin"), "wb") as f:
        f.write(os.urandom(1 << 20))
    key_file = os.path.join(work, "warm.key")

    env = dict(os.environ, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
               AWS_DEFAULT_REGION="us-east-1", POD_UID=POD_UID,
               # The warm key is sealed to the Pod UID and this (required) key secret.
               SNAPBACK_KEY_SECRET="startup-bench-key-secret")
    env.pop("RESTIC_PASSWORD", None)
    env.pop("SNAPBACK_KEY_FILE", None)
    with_pw = dict(env, RESTIC_PASSWORD=PASSWORD)

    moto = None
    targets = [("local", None)]
    log = open(os.path.join(work, "commands.log"), "ab")
    try:
        if not args.no_s3:
            moto, port = start_moto(log)
            targets.append(("s3", port))
        rows = []
        for target, port in targets:
            def repo(tool):
                if target == "s3":
                    return f"s3:http://127.0.0.1:{port}/startup/{tool}"
                return os.path.join(work, "repos", tool)
            if os.path.exists(os.path.join(work, "repos")) and target == "local":
                shutil.rmtree(os.path.join(work, "repos"))
            if os.path.exists(key_file):
                os.chmod(key_file, 0o600)
                os.remove(key_file)
            # The initContainer's step: create the repository and seal the warm key.
            subprocess.run([snapback, "-q", "-r", repo("snapback"), "init", "--if-missing",
                            "--key-file", key_file], env=with_pw, check=True,
                           stdout=log, stderr=log)
            subprocess.run([restic, "-q", "--no-cache", "-r", repo("restic"), "init"],
                           env=with_pw, check=True, stdout=log, stderr=log)
            variants = [
                ("snapback --key-file", env,
                 [snapback, "-q", "-r", repo("snapback"), "--key-file", key_file, "backup", data],
                 repo("snapback")),
                ("snapback password", with_pw,
                 [snapback, "-q", "-r", repo("snapback"), "backup", data], repo("snapback")),
                ("restic password", with_pw,
                 [restic, "-q", "--no-cache", "-r", repo("restic"), "backup", data],
                 repo("restic")),
            ]
            figures = {name: ([], [], [], set()) for name, *_ in variants}
            for r in range(args.runs):
                order = variants if r % 2 == 0 else list(reversed(variants))
                for name, venv, cmd, rpath in order:
                    trace = os.path.join(work, "trace")
                    strace = ["strace", "-f", "-ttt", "-qq", "-s", "48", "-o", trace,
                              "-e", "trace=execve,openat,write,writev,sendto,sendmsg"]
                    # New content every run, so every backup uploads a pack.
                    with open(os.path.join(data, "file.bin"), "wb") as f:
                        f.write(os.urandom(1 << 20))
                    log.write(f"== {target} {name} run {r}: {' '.join(cmd)}\n".encode())
                    log.flush()
                    subprocess.run(strace + cmd, env=venv, check=True, stdout=log, stderr=log)
                    first, pack, end, what = first_writes(trace, target, rpath)
                    for i, v in enumerate((first, pack, end)):
                        figures[name][i].append(v)
                    figures[name][3].add(what)
                    print(f"{target:5} {name:20} run {r}: first write {first:7.1f} ms "
                          f"({what}), first pack {pack:7.1f} ms, exit {end:7.1f} ms",
                          file=sys.stderr)
            for name, (firsts, packs, ends, whats) in figures.items():
                rows.append((target, name, statistics.median(firsts), statistics.median(packs),
                             statistics.median(ends), ", ".join(sorted(whats))))
    finally:
        if moto:
            moto.kill()
            moto.wait()
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, cwd=TOP).stdout.strip()
    cpu = "unknown CPU"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    lines = [
        f"Machine: {os.cpu_count()} cores, {cpu}. snapback {rev}"
        + ("" if not args.snapback else f" (binary {args.snapback})")
        + f", restic 0.14 (Debian). Medians of {args.runs} runs. "
        "Reproduce: `benches/startup.py --runs 5`",
        "",
        "| target | tool | first write ms | first pack ms | exit ms | first write is |",
        "|---|---|---|---|---|---|",
    ]
    for target, name, first, pack, end, what in rows:
        lines.append(f"| {target} | {name} | {first:.0f} | {pack:.0f} | {end:.0f} | `{what}` |")
    table = "\n".join(lines)
    print(table)
    doc = os.path.join(TOP, "BENCHMARKS.md")
    if os.environ.get("WRITE_DOC", "1") == "1" and os.path.exists(doc):
        b, e = "<!-- startup:begin -->", "<!-- startup:end -->"
        text = open(doc).read()
        if b in text and e in text:
            text = text[:text.index(b) + len(b)] + "\n" + table + "\n" + text[text.index(e):]
            open(doc, "w").write(text)


if __name__ == "__main__":
    main()
