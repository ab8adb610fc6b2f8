#!/usr/bin/env python3
"""Markdown of benches/shapes.sh results: per shape and step, both tools, and issue 13's targets.

  shapes_table.py RESULTS.jsonl RUNS MACHINE REV REPO_BLOBS BENCH_DIR
"""
import json
import os
import statistics
import sys

path, runs, machine, rev, repo_blobs, bench = sys.argv[1:7]
repo_blobs = int(repo_blobs)
rows = [json.loads(l) for l in open(path) if l.strip()]
meas = [r for r in rows if "m" in r]
restored = [r for r in rows if r["step"] == "restored"]
stored = [r for r in rows if r["step"] == "stored"]
MIB = 1 << 20


def med(shape, tool, step, key):
    v = [r["m"][key] for r in meas if (r["shape"], r["tool"], r["step"]) == (shape, tool, step)]
    return statistics.median(v) if v else None


def loads(shape, step):
    """Load averages at the start of snapback's runs, then restic's."""
    v = [[f"{r['load']:.1f}" for r in meas if (r["shape"], r["tool"], r["step"]) == (shape, t, step)]
         for t in ("snapback", "restic")]
    return "–" if not any(v) else " / ".join(",".join(x) or "–" for x in v)


def one(shape, step, key):
    for r in meas:
        if (r["shape"], r["step"]) == (shape, step):
            return r[key]
    return None


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def speedup(shape, step):
    s, r = med(shape, "snapback", step, "wall"), med(shape, "restic", step, "wall")
    return None if s is None or r is None or s == 0 else r / s


out = [f"Machine: {machine}. snapback {rev}, restic 0.14 (Debian). RUNS={runs} (medians), local "
       "repositories, both tools with default compression, restic with --no-cache. "
       "\"speed-up\" is restic wall / snapback wall (above 1: snapback faster); \"load\" is the "
       "1-minute load average when each tool's step started (snapback / restic) (the machine is shared, so figures "
       "taken under load are slower than on an idle machine, for both tools alike).", ""]

names = {"many": "Many small files (benches/gen_many_files.py)",
         "wide": "One wide directory (benches/gen_many_files.py --per-dir FILES)",
         "real": "Real tree (benches/gen_real_tree.py)",
         "repo": f"Repository size: {repo_blobs:,} blobs already indexed"}
steps = {"many": ["first", "changed", "tar-first", "tar-file", "restore"],
         "wide": ["first", "changed", "tar-first", "tar-file", "restore"],
         "real": ["first", "first-cold", "changed", "tar-first", "tar-file", "restore"],
         "repo": ["empty-repo", "big-repo"]}
for shape in ["many", "wide", "real", "repo"]:
    if not any(r["shape"] == shape for r in meas):
        continue
    files, size = one(shape, steps[shape][0], "files"), one(shape, steps[shape][0], "bytes")
    out.append(f"**{names[shape]}**: {files:,} regular files, {size / MIB:,.1f} MiB.")
    man = os.path.join(bench, f"{shape}-manifest.txt")
    if os.path.exists(man):
        out.append("")
        out.append("```text")
        out.extend(open(man).read().rstrip("\n").splitlines())
        out.append("```")
    out.append("")
    out.append("| step | snapback wall s | restic wall s | speed-up | snapback CPU s | restic CPU s "
               "| snapback RSS MiB | restic RSS MiB | snapback files/s | load |")
    out.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--|")
    for step in steps[shape]:
        sw = med(shape, "snapback", step, "wall")
        nfiles = one(shape, step, "files")
        fps = None if not sw or nfiles is None else nfiles / sw
        out.append(f"| {step} | {fmt(sw, 2)} | {fmt(med(shape, 'restic', step, 'wall'), 2)} "
                   f"| {fmt(speedup(shape, step), 2)} | {fmt(med(shape, 'snapback', step, 'cpu'), 2)} "
                   f"| {fmt(med(shape, 'restic', step, 'cpu'), 2)} "
                   f"| {fmt(med(shape, 'snapback', step, 'rss_mib'))} "
                   f"| {fmt(med(shape, 'restic', step, 'rss_mib'))} | {fmt(fps, 0)} "
                   f"| {loads(shape, step)} |")
    sizes = []
    for after, what in [("first", "the first path backup"), ("tar-first", "the first tar stream")]:
        v = {t: [r["stored"] for r in stored if (r["shape"], r["tool"], r["after"]) == (shape, t, after)]
             for t in ("snapback", "restic")}
        if v["snapback"] and v["restic"]:
            sizes.append(f"after {what} snapback {statistics.median(v['snapback']) / MIB:,.1f} MiB, "
                         f"restic {statistics.median(v['restic']) / MIB:,.1f} MiB")
    if sizes:
        out.append("")
        out.append("Repository size (every file, `du -sb`): " + "; ".join(sizes) + ".")
    alone = med(shape, "gnu-tar", "tar-alone", "wall")
    if alone:
        out.append("")
        out.append(f"GNU tar alone, writing the same stream into a pipe: {alone:.2f} s "
                   f"({one(shape, 'tar-first', 'files') / alone:,.0f} files/s): tar-first cannot "
                   "be faster than that; tar-file reads the stream from a file made beforehand.")
    for r in restored:
        if r["shape"] == shape and r["restored"] != r["source"]:
            out.append("")
            out.append(f"Restore by {r['tool']} (run {r['run']}): {r['restored']} "
                       f"(files bytes) restored of {r['source']} in the source.")
    out.append("")

# Issue 13's targets, as far as these figures show them.
t = []


def verdict(ok):
    return "–" if ok is None else ("holds" if ok else "does not hold")


if any(r["shape"] == "many" for r in meas):
    s = speedup("many", "first")
    t.append(("path backup of the small files ≥ 2× restic", f"{fmt(s, 2)}×",
              verdict(None if s is None else s >= 2)))
    for step, what in [("tar-file", "read from a file"), ("tar-first", "live from GNU tar")]:
        sw, n = med("many", "snapback", step, "wall"), one("many", step, "files")
        fps = None if not sw or n is None else n / sw
        t.append((f"tar stream of them ≥ 100,000 files/s ({what})", f"{fmt(fps, 0)} files/s",
                  verdict(None if fps is None else fps >= 100_000)))
    s = speedup("many", "restore")
    t.append(("restore of them ≥ restic", f"{fmt(s, 2)}×", verdict(None if s is None else s >= 1)))
if any(r["shape"] == "wide" for r in meas):
    # Issue 13's bound (64 MiB plus the index term, 32 B per blob: one blob per small file),
    # and what one wide directory costs over the same files 1,000 per directory.
    for step in ["first", "changed", "tar-first", "restore"]:
        rss = med("wide", "snapback", step, "rss_mib")
        n = one("wide", step, "files") or one("wide", "first", "files") or 0
        mrss = med("many", "snapback", step, "rss_mib")
        extra = None if rss is None or mrss is None or not n else (rss - mrss) * MIB / n
        more = "" if extra is None else f" ({extra:,.0f} B/file over 1,000 per directory)"
        t.append((f"one wide directory, {step}: peak RSS ≤ 64 MiB + 32 B/file",
                  f"{fmt(rss)} MiB{more}",
                  verdict(None if rss is None else rss <= 64 + n * 32 / MIB)))
if any(r["shape"] == "real" for r in meas):
    for step, what in [("first", "path backup"),
                       ("first-cold", "path backup, files not in the page cache"),
                       ("tar-first", "tar backup")]:
        s = speedup("real", step)
        rss = med("real", "snapback", step, "rss_mib")
        ok = None if s is None or rss is None else (s >= 2 and rss <= 64)
        t.append((f"real tree, first {what} ≥ 2× restic with peak RSS ≤ 64 MiB",
                  f"{fmt(s, 2)}×, {fmt(rss)} MiB", verdict(ok)))
if any(r["shape"] == "repo" for r in meas):
    big, empty = med("repo", "snapback", "big-repo", "rss_mib"), med("repo", "snapback", "empty-repo", "rss_mib")
    if big is not None and empty is not None:
        per = (big - empty) * MIB / repo_blobs
        t.append(("index ≤ 32 B/blob (snapback's peak-RSS growth over the empty repository)",
                  f"{per:.1f} B/blob", verdict(per <= 32)))
    rbig, rempty = med("repo", "restic", "big-repo", "rss_mib"), med("repo", "restic", "empty-repo", "rss_mib")
    if rbig is not None and rempty is not None:
        t.append(("(restic, for comparison)", f"{(rbig - rempty) * MIB / repo_blobs:.1f} B/blob", ""))
if t:
    out.append("Issue 13's targets on these figures:")
    out.append("")
    out.append("| target | today | |")
    out.append("|---|--:|---|")
    for a, b, c in t:
        out.append(f"| {a} | {b} | {c} |")
print("\n".join(out))
