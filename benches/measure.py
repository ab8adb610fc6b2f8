#!/usr/bin/env python3
"""Runs one command under GNU time and prints one JSON line of its cost.

  measure.py [--stdin-cmd 'SHELL PIPELINE'] [--log FILE] -- CMD ARGS...

Figures are those of CMD only (not of the producer feeding its stdin):
  wall   seconds from start until CMD exited (a producer runs concurrently)
  user, sys, cpu   CPU seconds of CMD (GNU time %U %S)
  rss_mib          peak RSS of CMD (GNU time %M)
  write_bytes      bytes CMD caused to be written to local storage (/proc/<pid>/io)
CMD runs as a child of /usr/bin/time; time reaps it before exiting, and the kernel adds a
reaped child's I/O counters to its parent's, so /proc/<time's pid>/io read while time is a
zombie (os.waitid with WNOWAIT) covers everything CMD did up to its exit. Then we reap.
time writes its figures into a pipe (-o /dev/fd/N), not a file: a file would count 4 KiB.
Exit status: CMD's (or the producer's when CMD succeeded and the producer failed).
"""
import json
import os
import subprocess
import sys
import time


def main():
    args = sys.argv[1:]
    stdin_cmd, log = None, None
    while args and args[0] != "--":
        if args[0] == "--stdin-cmd":
            stdin_cmd = args[1]
            args = args[2:]
        elif args[0] == "--log":
            log = args[1]
            args = args[2:]
        else:
            sys.exit(f"measure.py: unknown option {args[0]}")
    if not args:
        sys.exit("usage: measure.py [--stdin-cmd CMD] [--log FILE] -- CMD ARGS...")
    cmd = args[1:]
    out = open(log, "ab") if log else subprocess.DEVNULL
    rfd, wfd = os.pipe()
    if True:
        producer = None
        stdin = subprocess.DEVNULL
        if stdin_cmd:
            producer = subprocess.Popen(["bash", "-o", "pipefail", "-c", stdin_cmd],
                                        stdout=subprocess.PIPE, stderr=out)
            stdin = producer.stdout
        t0 = time.monotonic()
        p = subprocess.Popen(["/usr/bin/time", "-f", "%e %U %S %M", "-o", f"/dev/fd/{wfd}"] + cmd,
                             stdin=stdin, stdout=out, stderr=out, pass_fds=(wfd,))
        os.close(wfd)
        if producer:
            producer.stdout.close()  # only CMD holds the read end now
        os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT)
        wall = time.monotonic() - t0
        io = {}
        with open(f"/proc/{p.pid}/io") as f:
            for line in f:
                k, v = line.split(":")
                io[k.strip()] = int(v)
        rc = p.wait()
        prc = producer.wait() if producer else 0
        with os.fdopen(rfd) as tf:
            fields = tf.read().split()
        # GNU time writes "Command exited with non-zero status N" first when CMD failed.
        e, u, s, m = fields[-4:] if len(fields) >= 4 else ("0", "0", "0", "0")
    res = {
        "wall": round(wall, 3),
        "user": float(u),
        "sys": float(s),
        "cpu": round(float(u) + float(s), 2),
        "rss_mib": round(int(m) / 1024, 1),
        "write_bytes": io.get("write_bytes", -1),
        "read_bytes": io.get("read_bytes", -1),
        "cancelled_write_bytes": io.get("cancelled_write_bytes", -1),
        "rc": rc,
        "producer_rc": prc,
    }
    print(json.dumps(res))
    sys.exit(rc if rc else (1 if prc else 0))


if __name__ == "__main__":
    main()
