#!/usr/bin/env python3
"""The sidecar's resident memory around a backup (issue 13): at start-up, peak, and after.

Starts `snapback sidecar` (manual schedule, HTTP API on 127.0.0.1) on a copy of REPO, triggers
one backup of DATA with POST /backup, samples VmRSS every 20 ms while it runs, and reads
VmRSS/VmHWM from /proc once the backup is over (snapback_backup_in_progress 0 and one more
backup counted). Prints one line per figure, in MiB, and splits RSS into anonymous memory
(what the process holds) and file-backed pages (its code, paged in by use).

    benches/sidecar_rss.py SNAPBACK REPO PASSWORD DATA

REPO can be one made by `cargo bench -p snapback-repo --bench index -- gen DIR 1000000`
(DIR/repo, password `bench`): a million blobs in its index, so the index the backup loads is
large next to everything else. The copy is made in /tmp and removed afterwards.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def split(pid):
    """(RssAnon, RssFile + RssShmem) in MiB: memory the process holds, and pages of its binary
    and libraries that the kernel can drop and read back."""
    return status(pid, "RssAnon:"), status(pid, "RssFile:") + status(pid, "RssShmem:")


def metric(port, name):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in body.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.split()[-1])
    return 0.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    snapback, repo, password, data = sys.argv[1:5]
    work = tempfile.mkdtemp(prefix="sidecar-rss-")
    try:
        copy = os.path.join(work, "repo")
        shutil.copytree(repo, copy)
        port = free_port()
        env = dict(os.environ, RESTIC_REPOSITORY=copy, RESTIC_PASSWORD=password)
        log = open(os.path.join(work, "log"), "w")
        proc = subprocess.Popen(
            [snapback, "sidecar", "--listen", f"127.0.0.1:{port}", data],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(500):
                try:
                    if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                        break
                except OSError:
                    time.sleep(0.02)
            time.sleep(0.5)
            start = status(proc.pid, "VmRSS:")
            start_split = split(proc.pid)
            req = urllib.request.Request(f"http://127.0.0.1:{port}/backup", method="POST")
            urllib.request.urlopen(req, timeout=5)
            began = time.time()
            sampled = start
            while True:
                sampled = max(sampled, status(proc.pid, "VmRSS:"))
                if metric(port, "snapback_backup_in_progress") == 0 and time.time() - began > 0.2:
                    break
                time.sleep(0.02)
            took = time.time() - began
            time.sleep(0.5)
            after = status(proc.pid, "VmRSS:")
            after_split = split(proc.pid)
            # tokio's idle blocking threads (and their stacks) exit after 10 s.
            time.sleep(11)
            later = status(proc.pid, "VmRSS:")
            later_split = split(proc.pid)
            if os.environ.get("SHOW_SMAPS"):
                print(subprocess.run(["sh", "-c", f"awk '/^[0-9a-f]+-[0-9a-f]+ /{{m=$0}} /^Rss:/{{if ($2>400) print $2, m}}' /proc/{proc.pid}/smaps"], capture_output=True, text=True).stdout)
            peak = status(proc.pid, "VmHWM:")
            print(f"start-up RSS: {start:.1f} MiB")
            print(f"peak RSS during the backup: {peak:.1f} MiB (sampled max {sampled:.1f})")
            print(f"RSS after the backup: {after:.1f} MiB; 11 s later: {later:.1f} MiB")
            for name, (anon, file_) in [("start-up", start_split), ("after", after_split), ("11 s later", later_split)]:
                print(f"  {name}: anonymous {anon:.1f} MiB, file-backed (code) {file_:.1f} MiB")
            print(f"backup took {took:.1f} s; backups_total {metric(port, 'snapback_backups_total'):.0f}")
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()
            if os.environ.get("SHOW_LOG"):
                print(open(os.path.join(work, "log")).read())
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
