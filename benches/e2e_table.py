#!/usr/bin/env python3
"""Markdown table of benches/e2e.sh results: medians per tool and step, ratio snapback/restic.

  e2e_table.py RESULTS.jsonl RUNS MACHINE REV HAS_RESTORE HAS_CHECK ARGS
"""
import json
import statistics
import sys

path, runs, machine, rev, has_restore, has_check, args = sys.argv[1:8]
rows = [json.loads(l) for l in open(path) if l.strip()]
steps = ["first", "changed", "tar-first", "tar-changed", "restore", "check"]
targets = [t for t in ["local", "s3"] if any(r["target"] == t for r in rows)]


def med(tool, target, step, key):
    v = [r["m"][key] for r in rows if (r["tool"], r["target"], r["step"]) == (tool, target, step)]
    return statistics.median(v) if v else None


def fmt(x, nd=1):
    return "–" if x is None else f"{x:.{nd}f}"


def ratio(a, b):
    return "–" if a is None or b is None or b == 0 else f"{a / b:.2f}"


out = []
out.append(f"Machine: {machine}. snapback {rev}, restic 0.14 (Debian). RUNS={runs} (medians), "
           f"tools alternating which goes first. Reproduce: `RUNS={runs}"
           + (" S3=1" if "s3" in targets else "") + " benches/e2e.sh" + (f" {args}" if args else "") + "`")
out.append("")
out.append("| target | step | tool | wall s | MB/s | CPU s | CPU/wall | peak RSS MiB | local bytes written | ratio wall | ratio CPU | ratio RSS |")
out.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
for t in targets:
    for s in steps:
        b = [r["bytes"] for r in rows if (r["target"], r["step"]) == (t, s)]
        if not b:
            continue
        nbytes = b[0]
        fig = {}
        for tool in ["snapback", "restic"]:
            w = med(tool, t, s, "wall")
            fig[tool] = (w, med(tool, t, s, "cpu"), med(tool, t, s, "rss_mib"), med(tool, t, s, "write_bytes"))
        for tool in ["snapback", "restic"]:
            w, c, m, wb = fig[tool]
            if w is None:
                note = "not implemented" if tool == "snapback" else "–"
                out.append(f"| {t} | {s} | {tool} | {note} | | | | | | | | |")
                continue
            mbs = "–" if s == "check" else fmt(nbytes / 1e6 / w, 0)
            r = ("", "", "")
            if tool == "snapback" and fig["restic"][0] is not None:
                r = (ratio(w, fig["restic"][0]), ratio(c, fig["restic"][1]), ratio(m, fig["restic"][2]))
            wbs = "–" if wb is None else f"{wb / 2**20:.1f} MiB"
            out.append(f"| {t} | {s} | {tool} | {fmt(w, 2)} | {mbs} | {fmt(c, 2)} | {fmt(c / w if w else None, 2)} | "
                       f"{fmt(m, 0)} | {wbs} | {r[0]} | {r[1]} | {r[2]} |")
if has_restore != "1":
    out.append("\n`snapback restore` did not exist in this build: restic only.")
if has_check != "1":
    out.append("\n`snapback check --read-data` did not exist in this build: restic only.")
print("\n".join(out))
