#!/usr/bin/env bash
# Walks of a snapshot's trees on S3 with a round-trip latency, against restic: an incremental
# backup of an unchanged tree, a restore, and `ls`.
#
#   benches/s3_latency.sh DIR BIN [BIN...]
#   LATENCY_MS=20 ROUNDS=3 STEPS="incremental restore" benches/s3_latency.sh REAL/data /tmp/sb-old /tmp/sb-new
#
# Each of these reads one tree per directory (an incremental backup reads its parent
# snapshot's), and against a remote store every read is a round trip. This starts moto on
# 127.0.0.1 behind benches/latency_proxy.py (each request answered LATENCY_MS late, default
# 10), backs DIR up once with each snapback build and with restic (--no-cache, as in every
# other table here), then runs each of STEPS (default "incremental restore ls") ROUNDS times
# (default 3), the tools alternating:
#   incremental  backup of the unchanged DIR (the first snapshot is its parent);
#   restore      restore of the first snapshot into a fresh directory (deleted after the run);
#   ls           `ls -l` of the whole first snapshot, output discarded.
# Prints one line per run: step, tool, round, then benches/measure.py's JSON (wall, CPU, peak
# RSS). Needs moto_server (.ci/setup installs it) and restic.
set -euo pipefail

dir=${1:?usage: s3_latency.sh DIR BIN [BIN...]}
shift
[[ $# -ge 1 ]] || { echo "give at least one snapback binary" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
latency=${LATENCY_MS:-10}
rounds=${ROUNDS:-3}
steps=${STEPS:-incremental restore ls}

export RESTIC_PASSWORD=s3-latency-bench
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_DEFAULT_REGION=us-east-1
work=$(mktemp -d)
moto_pid= proxy_pid=
cleanup() {
    for p in $proxy_pid $moto_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

moto_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
moto_server -H 127.0.0.1 -p "$moto_port" >"$work/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 150); do
    curl -fsS -o /dev/null "http://127.0.0.1:$moto_port/" 2>/dev/null && break
    sleep 0.2
done
curl -fsS -X PUT "http://127.0.0.1:$moto_port/bench" >/dev/null
python3 "$here/latency_proxy.py" "$moto_port" "$latency" "$work/proxy.port" &
proxy_pid=$!
for _ in $(seq 50); do [[ -s "$work/proxy.port" ]] && break; sleep 0.1; done
endpoint="http://127.0.0.1:$(cat "$work/proxy.port")/bench"

tools=("$@" restic)
repo() { echo "s3:$endpoint/r$1"; }
cmd() { # index tool
    if [[ "$2" == restic ]]; then echo "restic -q --no-cache -r $(repo "$1")"; else echo "$2 -q -r $(repo "$1")"; fi
}
for i in "${!tools[@]}"; do
    $(cmd "$i" "${tools[$i]}") init >/dev/null
    $(cmd "$i" "${tools[$i]}") backup "$dir" >/dev/null
done
echo "latency ${latency} ms per request; $(find "$dir" -type d | wc -l) directories"
run() { # step index
    local tool=${tools[$2]}
    case $1 in
        incremental) python3 "$here/measure.py" -- $(cmd "$2" "$tool") backup "$dir" ;;
        restore)
            rm -rf "$work/restored"
            python3 "$here/measure.py" -- $(cmd "$2" "$tool") restore "$first" --target "$work/restored"
            rm -rf "$work/restored" ;;
        ls) python3 "$here/measure.py" -- $(cmd "$2" "$tool") ls -l "$first" ;;
        *) echo "unknown step $1" >&2; exit 2 ;;
    esac
}
# Restore and ls take the first snapshot, by its id in each repository.
declare -A firsts
for i in "${!tools[@]}"; do
    firsts[$i]=$(restic -q --no-cache -r "$(repo "$i")" snapshots --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
done
for step in $steps; do
    for r in $(seq "$rounds"); do
        for i in "${!tools[@]}"; do
            first=${firsts[$i]}
            sync
            echo "$step ${tools[$i]} $r $(run "$step" "$i")"
        done
    done
done
