#!/usr/bin/env bash
# Issue 4's must-show: `snapback backup --stdin` to S3 keeps a bounded memory footprint that does
# not grow with the stream, and writes nothing to local disk. restic 0.14 alongside for scale.
#
#   benches/memory_disk.sh [OUT]          (default OUT: bench-out)
#   MAX_RSS_MIB=64 SIZES="1 4" SNAPBACK_BIN=path benches/memory_disk.sh
#
# The stream is deterministic (byte-identical on every run) and made once into OUT/streams/:
# 4 MiB segments of 2 MiB AES-128-CTR keystream (incompressible; openssl with a fixed key and the
# segment number as IV), 1 MiB of `seq` output (compresses ~4x) and 1 MiB of a repeated line
# naming the segment (compresses ~100x); the 1 GiB stream is the first GiB of the 4 GiB one.
# Each backup goes to a fresh moto S3 server on 127.0.0.1 (restarted per backup, so its memory
# does not pile up), measured by benches/measure.py: peak RSS (GNU time) and write_bytes
# (/proc/<pid>/io, everything up to exit).
# Exit status 1 when snapback wrote any local byte or its peak RSS exceeded MAX_RSS_MIB.
set -euo pipefail

top=$(git rev-parse --show-toplevel)
here="$top/benches"
cd "$top"
out=${1:-bench-out}
mkdir -p "$out/streams"
out=$(cd "$out" && pwd)
max_rss=${MAX_RSS_MIB:-64}
sizes=${SIZES:-"1 4"}
measure="$here/measure.py"
work="$out/memory_disk"
mkdir -p "$work"

big=$(for s in $sizes; do echo "$s"; done | sort -n | tail -1)
stream="$out/streams/stream-${big}G.bin"
if [[ ! -f "$stream.done" ]]; then
    echo "generating ${big} GiB stream in $stream ..." >&2
    segs=$((big * 256))
    key=000102030405060708090a0b0c0d0e0f
    for i in $(seq 0 $((segs - 1))); do
        openssl enc -aes-128-ctr -K "$key" -iv "$(printf '%032x' "$i")" -nosalt -in /dev/zero 2>/dev/null |
            head -c $((2 << 20)) || true
        seq $((i * 200000)) 10000000000 | head -c $((1 << 20)) || true
        yes "segment $i of the benchmark stream: partly compressible text" | head -c $((1 << 20)) || true
    done >"$stream"
    [[ $(stat -c %s "$stream") == $((big << 30)) ]] || { echo "stream has the wrong size" >&2; exit 1; }
    touch "$stream.done"
fi
if [[ -n "${SNAPBACK_BIN:-}" ]]; then
    src_bin=$SNAPBACK_BIN
else
    cargo build --release --bin snapback >&2
    src_bin="${CARGO_TARGET_DIR:-$top/target}/release/snapback"
fi
snapback="$work/snapback"
cp "$src_bin" "$snapback"

export RESTIC_PASSWORD=memory-disk-bench
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_DEFAULT_REGION=us-east-1
log="$work/commands.log"
: >"$log"

moto_pid=
stop_moto() {
    if [[ -n "$moto_pid" ]]; then
        kill "$moto_pid" 2>/dev/null || true
        wait "$moto_pid" 2>/dev/null || true
        moto_pid=
    fi
}
trap stop_moto EXIT
# A free port on 127.0.0.1 (other engineers' servers run on this machine too); retried if taken
# in between.
start_moto() {
    local attempt
    for attempt in 1 2 3 4 5; do
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        moto_server -H 127.0.0.1 -p "$port" >>"$work/moto.log" 2>&1 &
        moto_pid=$!
        for _ in $(seq 150); do
            kill -0 "$moto_pid" 2>/dev/null || break
            if curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then
                curl -fsS -X PUT "http://127.0.0.1:$port/bench" >/dev/null
                return 0
            fi
            sleep 0.2
        done
        stop_moto
    done
    echo "moto_server did not start (see $work/moto.log)" >&2
    exit 1
}

fail=0
rows=()
declare -A rss
for size in $sizes; do
    for tool in snapback restic; do
        start_moto
        url="s3:http://127.0.0.1:$port/bench/$tool"
        if [[ $tool == snapback ]]; then
            "$snapback" -q -r "$url" init >>"$log" 2>&1
            cmd=("$snapback" -q -r "$url" backup --stdin --stdin-filename stream.bin)
        else
            restic -q --no-cache -r "$url" init >>"$log" 2>&1
            cmd=(restic -q --no-cache -r "$url" backup --stdin --stdin-filename stream.bin)
        fi
        echo "== $tool ${size} GiB: ${cmd[*]}" >>"$log"
        res=$(python3 "$measure" --log "$log" --stdin-cmd "head -c $((size << 30)) '$stream'" -- "${cmd[@]}") || {
            echo "FAILED: $tool ${size} GiB: $res" >&2
            tail -5 "$log" >&2
            exit 1
        }
        stop_moto
        echo "$tool ${size} GiB: $res" >&2
        read -r wall cpu mib wb <<<"$(python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print(m["wall"], m["cpu"], m["rss_mib"], m["write_bytes"])' "$res")"
        rss[$tool-$size]=$mib
        mbs=$(python3 -c "print(f'{($size << 30) / 1e6 / $wall:.0f}')")
        rows+=("| ${size} GiB | $tool | $wall | $mbs | $cpu | $mib | $wb |")
        if [[ $tool == snapback ]]; then
            if (( wb != 0 )); then
                echo "snapback wrote $wb bytes to local storage backing up ${size} GiB to S3" >&2
                fail=1
            fi
            if python3 -c "import sys; sys.exit(0 if $mib > $max_rss else 1)"; then
                echo "snapback peak RSS $mib MiB > bound $max_rss MiB for ${size} GiB" >&2
                fail=1
            fi
        fi
    done
done

{
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r). Reproduce: \`MAX_RSS_MIB=$max_rss benches/memory_disk.sh\`"
    echo
    echo "| stream | tool | wall s | MB/s | CPU s | peak RSS MiB | local bytes written |"
    echo "|---|---|---|---|---|---|---|"
    printf '%s\n' "${rows[@]}"
    set -- $sizes
    if (( $# >= 2 )); then
        echo
        echo "snapback peak RSS ${1} GiB → ${!#} GiB: ${rss[snapback-$1]} → ${rss[snapback-${!#}]} MiB (bound $max_rss MiB); restic: ${rss[restic-$1]} → ${rss[restic-${!#}]} MiB."
    fi
} | tee "$work/memory_disk.md"

if [[ "${WRITE_DOC:-1}" == 1 && -f "$top/BENCHMARKS.md" ]]; then
    python3 - "$top/BENCHMARKS.md" "$work/memory_disk.md" <<'EOF'
import sys
doc, part = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(doc).read()
b, e = "<!-- memory_disk:begin -->", "<!-- memory_disk:end -->"
if b in text and e in text:
    head, rest = text.split(b, 1)
    open(doc, "w").write(head + b + "\n" + part + "\n" + e + rest.split(e, 1)[1])
EOF
fi
if (( fail )); then
    echo "memory_disk: FAILED (see above)" >&2
    exit 1
fi
echo "memory_disk: OK (snapback wrote 0 local bytes, peak RSS <= $max_rss MiB)" >&2
