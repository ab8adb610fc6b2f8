#!/usr/bin/env bash
# A/B of snapback builds against restic on one directory: first path backup and first tar
# stream into fresh local repositories, the tools alternating within each round.
#
#   benches/ab.sh DIR BIN [BIN...] [-- SNAPBACK-BACKUP-ARGS...]
#   ROUNDS=3 benches/ab.sh bench-out/shapes/real/data /tmp/sb-old /tmp/sb-new
#
# Prints one line per run: round, tool, step, repository bytes (`du -sb`, every file), the
# 1-minute load average at the start, and benches/measure.py's JSON (wall, CPU, peak RSS).
# Used for BENCHMARKS.md's compression-level comparison; repositories are deleted at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[[ $# -ge 2 ]] || { sed -n '2,9p' "$0" >&2; exit 2; }
data=$(cd "$1" && pwd)
shift
bins=()
while [[ $# -gt 0 && $1 != -- ]]; do bins+=("$1"); shift; done
[[ ${1:-} == -- ]] && shift
extra=("$@")
restic=$(command -v restic)
export RESTIC_PASSWORD=ab-bench-password
work=$(mktemp -d "${TMPDIR:-/tmp}/snapback-ab.XXXXXX")
trap 'rm -rf "$work"' EXIT

for round in $(seq "${ROUNDS:-3}"); do
    for tool in restic "${bins[@]}"; do
        for step in path tar; do
            repo="$work/repo"
            rm -rf "$repo"
            if [[ $tool == restic ]]; then
                "$restic" -q --no-cache -r "$repo" init >/dev/null
                cmd=("$restic" -q --no-cache -r "$repo" backup)
            else
                "$tool" -q -r "$repo" init >/dev/null
                cmd=("$tool" -q -r "$repo" backup "${extra[@]}")
            fi
            sync
            load=$(cut -d' ' -f1 /proc/loadavg)
            if [[ $step == path ]]; then
                m=$(python3 "$here/measure.py" -- "${cmd[@]}" "$data")
            else
                m=$(python3 "$here/measure.py" --stdin-cmd "tar -C '$(dirname "$data")' -cf - '$(basename "$data")'" \
                    -- "${cmd[@]}" --stdin --stdin-filename data.tar)
            fi
            echo "$round $tool $step $(du -sb "$repo" | cut -f1) $load $m"
        done
    done
done
