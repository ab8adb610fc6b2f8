#!/usr/bin/env bash
# Throughput and peak memory of `snapback tar DIR` against `tar -cf - DIR`.
#
#   benches/tar_producer.sh [OUT_DIR]     (default: bench-out/)
#   SNAPBACK_BIN=/path/to/snapback benches/tar_producer.sh [OUT_DIR]
#
# Generates the shared data set (~1 GiB in OUT_DIR/data, plus a changed copy) with
# ../shared/bench/gen_data.py once, builds the release binary, then times each producer
# writing to /dev/null: one warm-up run (page cache warm), then the median of 3 runs.
# Output goes through `| cat >/dev/null`: GNU tar notices a stdout that *is* /dev/null and then
# skips reading file contents, which would make its figure meaningless. Peak RSS is the largest
# of the pipeline's processes (producer, cat, bash), i.e. the producer's.
set -euo pipefail

top=$(git rev-parse --show-toplevel)
out=${1:-bench-out}
gen="$top/../shared/bench/gen_data.py"
mkdir -p "$out"
out=$(cd "$out" && pwd)
data="$out/data"

if [[ ! -f "$out/.generated" ]]; then
    echo "generating data set in $out ..." >&2
    python3 "$gen" "$out"
    touch "$out/.generated"
fi

# SNAPBACK_BIN=path/to/snapback skips the build (e.g. while the workspace is mid-edit).
if [[ -n "${SNAPBACK_BIN:-}" ]]; then
    snapback=$SNAPBACK_BIN
else
    (cd "$top" && cargo build --release --bin snapback >&2)
    snapback="${CARGO_TARGET_DIR:-$top/target}/release/snapback"
fi

bytes=$(du -sb --apparent-size "$data" | cut -f1)
have_time_v=0
/usr/bin/time -v true >/dev/null 2>&1 && have_time_v=1

# Prints "<seconds> <peak RSS KiB>" for one run of the command.
measure() {
    local start end rss
    if [[ $have_time_v == 1 ]]; then
        local log; log=$(mktemp)
        start=$(date +%s.%N)
        /usr/bin/time -v -o "$log" "$@" >/dev/null 2>/dev/null
        end=$(date +%s.%N)
        rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
        rm -f "$log"
    else
        # Fallback: poll VmHWM of the process while it runs.
        start=$(date +%s.%N)
        "$@" >/dev/null 2>/dev/null &
        local pid=$! hwm=0 v
        while kill -0 "$pid" 2>/dev/null; do
            v=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
            [[ -n "$v" && "$v" -gt "$hwm" ]] && hwm=$v
            sleep 0.02
        done
        wait "$pid"
        end=$(date +%s.%N)
        rss=$hwm
    fi
    echo "$(echo "$end - $start" | bc -l) $rss"
}

bench() {
    local label=$1; shift
    "$@" >/dev/null 2>&1 # warm the page cache
    local runs=() rss=0 line
    for _ in 1 2 3; do
        line=$(measure "$@")
        runs+=("${line% *}")
        (( ${line#* } > rss )) && rss=${line#* }
    done
    local median
    median=$(printf '%s\n' "${runs[@]}" | sort -g | sed -n 2p)
    printf '%-10s median %6.3f s  %8.1f MB/s  peak RSS %6d KiB  (runs: %s)\n' \
        "$label" "$median" "$(echo "$bytes / $median / 1000000" | bc -l)" "$rss" "${runs[*]}"
}

echo "data: $data ($(echo "$bytes / 1048576" | bc) MiB)"
piped=(bash -c '"$@" | cat >/dev/null' piped)
bench "tar" "${piped[@]}" tar -cf - "$data"
bench "snapback" "${piped[@]}" "$snapback" tar "$data"
