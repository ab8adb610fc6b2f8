#!/usr/bin/env python3
"""The sidecar's HTTP API under a connection flood: RSS of `snapback sidecar` while a client on
127.0.0.1 holds many idle connections (connect, send nothing) or slow ones (a request head
dribbled one byte per second), and whether /healthz still answers afterwards.

    benches/http_flood.py [--snapback target/release/snapback] [--count 10000] [--mode idle|slow]

Starts its own sidecar (a local repository in a temporary directory, listening on
127.0.0.1 only), prints one line of figures, and removes everything it created. The client
needs `--count` file descriptors (raise `ulimit -n` if needed).
"""

import argparse
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request


def rss_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthz(port, timeout=2.0):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as r:
            return r.status
    except Exception:
        return None


def wait_ready(port, deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit("sidecar not ready")


def still_open(sock):
    """Whether the server has not closed this connection (non-blocking peek)."""
    try:
        data = sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        return data != b""
    except BlockingIOError:
        return True
    except OSError:
        return False


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--snapback", default="target/release/snapback")
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--mode", choices=["idle", "slow"], default="idle")
    ap.add_argument("--hold", type=float, default=4.0, help="seconds to hold the flood")
    ap.add_argument("--extra", nargs="*", default=[], help="more sidecar arguments")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, args.count + 256)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    work = tempfile.mkdtemp(prefix="snapback-http-flood-")
    sidecar = None
    conns = []
    try:
        repo = os.path.join(work, "repo")
        data = os.path.join(work, "data")
        os.makedirs(data)
        env = dict(os.environ, RESTIC_PASSWORD="http-flood-bench", RESTIC_REPOSITORY=repo)
        subprocess.run([args.snapback, "-q", "init"], env=env, check=True)
        port = free_port()
        log = open(os.path.join(work, "sidecar.log"), "wb")
        sidecar = subprocess.Popen(
            [args.snapback, "sidecar", "--listen", f"127.0.0.1:{port}", *args.extra, data],
            env=env, stdout=subprocess.DEVNULL, stderr=log)
        wait_ready(port, time.monotonic() + 60)
        # The start's peak includes the password's key derivation (scrypt, 32 MiB).
        base, base_hwm = rss_kib(sidecar.pid)

        started = time.monotonic()
        for _ in range(args.count):
            s = socket.socket()
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.setblocking(False)
            if args.mode == "slow":
                try:
                    s.send(b"GET /healthz HTTP/1.1\r\n")
                except OSError:
                    pass
            conns.append(s)
        opened = time.monotonic() - started
        peak = 0
        end = time.monotonic() + args.hold
        while time.monotonic() < end:
            if args.mode == "slow":
                for s in conns:
                    try:
                        s.send(b"X")
                    except OSError:
                        pass
            peak = max(peak, rss_kib(sidecar.pid)[0])
            time.sleep(1.0)
        during, hwm = rss_kib(sidecar.pid)
        alive = sum(1 for s in conns if still_open(s))
        # A fresh connection while the flood is still held.
        during_health = healthz(port, timeout=1.0)
        for s in conns:
            s.close()
        conns = []
        t0 = time.monotonic()
        while healthz(port) != 200 and time.monotonic() - t0 < 30:
            time.sleep(0.1)
        recovered = time.monotonic() - t0
        after, _ = rss_kib(sidecar.pid)
        print(f"{args.mode}: {args.count} connections opened in {opened:.1f}s; "
              f"server kept {alive} open after {args.hold:.0f}s; "
              f"RSS {base / 1024:.1f} MiB before, {peak / 1024:.1f} MiB peak sampled, "
              f"{after / 1024:.1f} MiB after closing; "
              f"VmHWM {base_hwm / 1024:.1f} MiB at start, {hwm / 1024:.1f} MiB at the end; "
              f"/healthz during flood: {during_health}, 200 again {recovered:.1f}s after closing")
    finally:
        for s in conns:
            s.close()
        if sidecar is not None:
            sidecar.send_signal(signal.SIGTERM)
            try:
                sidecar.wait(timeout=30)
            except subprocess.TimeoutExpired:
                sidecar.kill()
                sidecar.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
