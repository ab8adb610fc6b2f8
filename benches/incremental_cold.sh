#!/usr/bin/env bash
# An incremental backup of an unchanged tree that is not in the page cache (a sidecar's hourly
# backup of a volume nobody read since): what each tool reads from disk and how long it takes.
#
#   benches/incremental_cold.sh DIR [SNAPBACK_BIN]
#
# For restic and snapback in turn: a fresh local repository, a first backup of DIR, DIR evicted
# from the page cache (posix_fadvise DONTNEED per file), then a second backup with the first as
# parent, measured by benches/measure.py (read_bytes: what the process caused to be read from
# storage). Repositories are deleted at the end.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[[ $# -ge 1 ]] || { sed -n '2,10p' "$0" >&2; exit 2; }
data=$(cd "$1" && pwd)
snapback=${2:-$here/../target/release/snapback}
restic=$(command -v restic)
export RESTIC_PASSWORD=incremental-cold-bench
work=$(mktemp -d "${TMPDIR:-/tmp}/snapback-inc.XXXXXX")
trap 'rm -rf "$work"' EXIT

for round in $(seq "${ROUNDS:-2}"); do
    for tool in restic snapback; do
        repo="$work/repo"
        rm -rf "$repo"
        if [[ $tool == restic ]]; then
            "$restic" -q --no-cache -r "$repo" init >/dev/null
            cmd=("$restic" -q --no-cache -r "$repo" backup "$data")
        else
            "$snapback" -q -r "$repo" init >/dev/null
            cmd=("$snapback" -q -r "$repo" backup "$data")
        fi
        "${cmd[@]}" >/dev/null
        sync
        python3 "$here/evict.py" "$data"
        echo "$round $tool $(python3 "$here/measure.py" -- "${cmd[@]}")"
    done
done
