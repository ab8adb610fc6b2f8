#!/usr/bin/env bash
# End-to-end figures of snapback against restic 0.14, side by side on the shared data set.
#
#   benches/e2e.sh [OUT]                 (default OUT: bench-out/data-set)
#   RUNS=3 S3=1 benches/e2e.sh           (S3=1 adds a moto S3 server on 127.0.0.1)
#   SNAPBACK_BIN=path benches/e2e.sh     (skip `cargo build --release`)
#   WRITE_DOC=0 ...                      (do not update the generated section of BENCHMARKS.md)
#   SHAPES=many,real,repo benches/e2e.sh (issue 13's data shapes instead: benches/shapes.sh)
#
# Generates the data set once (../shared/bench/gen_data.py), builds the release binary and copies
# it aside (so a rebuild by someone else cannot swap it mid-run), then for every run and every
# target (local disk, and S3 with S3=1) runs each step once per tool, ALTERNATING which tool goes
# first from run to run:
#   first      backup OUT/work = data                      (fresh repository)
#   changed    backup OUT/work = changed/data, parent = first (same path, same host)
#   tar-first  tar -C OUT -cf - work | backup --stdin      (fresh repository), work = data
#   tar-changed  same with work = changed/data             (parent = tar-first)
#   restore    restore latest (the changed snapshot) into an empty directory
#   check      check --read-data
# OUT/work is a hard-link farm: `cp -al data work` for the first backups, then only the changed
# and new files of changed/data are linked in (unchanged files keep inode and ctime, so both
# tools' parent logic applies, as on a real host between two backups).
#
# Each measurement is of the backup/restore/check process alone, started after a `sync` so the
# previous step's write-back is not charged to it (measure.py: GNU time for wall, CPU and peak
# RSS; /proc/<pid>/io write_bytes for local bytes written). The table shows medians over RUNS
# and the ratio snapback/restic. Both tools: version-2 repository, default (auto) compression,
# password only via RESTIC_PASSWORD, restic with --no-cache.
set -euo pipefail

top=$(git rev-parse --show-toplevel)
here="$top/benches"
cd "$top"
if [[ -n "${SHAPES:-}" ]]; then
    exec "$here/shapes.sh" "$@"
fi
out=${1:-bench-out/data-set}
runs=${RUNS:-3}
s3=${S3:-0}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bench=$(dirname "$out")/e2e
mkdir -p "$bench"
measure="$here/measure.py"

if [[ ! -d "$out/data" || ! -d "$out/changed/data" || ! -f "$out/.generated" ]]; then
    echo "generating data set in $out ..." >&2
    python3 "$top/../shared/bench/gen_data.py" "$out"
    touch "$out/.generated"
fi

if [[ -n "${SNAPBACK_BIN:-}" ]]; then
    src_bin=$SNAPBACK_BIN
else
    cargo build --release --bin snapback >&2
    src_bin="${CARGO_TARGET_DIR:-$top/target}/release/snapback"
fi
snapback="$bench/snapback"
cp "$src_bin" "$snapback"
rev="$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates src Cargo.toml 2>/dev/null || echo +dirty)"
[[ -n "${SNAPBACK_BIN:-}" ]] && rev="binary $SNAPBACK_BIN (checkout now at $rev)"
restic=$(command -v restic)

export RESTIC_PASSWORD=e2e-bench-password
# moto ignores credentials, but both clients want some.
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_DEFAULT_REGION=us-east-1

has_check=0
"$snapback" check --help 2>/dev/null | grep -q -- --read-data && has_check=1
has_restore=0
"$snapback" restore --help >/dev/null 2>&1 && has_restore=1

moto_pid=
cleanup() {
    if [[ -n "$moto_pid" ]]; then kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
    rm -rf "$bench/work-restore" "$bench/repos"
}
trap cleanup EXIT

targets=(local)
if [[ "$s3" == 1 ]]; then
    # A free port (other servers run on this machine too); retried if taken in between.
    up=0
    for _ in 1 2 3 4 5; do
        port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        moto_server -H 127.0.0.1 -p "$port" >>"$bench/moto.log" 2>&1 &
        moto_pid=$!
        for _ in $(seq 150); do
            kill -0 "$moto_pid" 2>/dev/null || break
            if curl -fsS -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null; then up=1; break; fi
            sleep 0.2
        done
        (( up )) && break
        kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; moto_pid=
    done
    (( up )) || { echo "moto_server did not start (see $bench/moto.log)" >&2; exit 1; }
    curl -fsS -X PUT "http://127.0.0.1:$port/bench" >/dev/null
    targets+=(s3)
fi

# Stage OUT/work: "data" (fresh link farm) or "changed" (link in what changed/data changed).
stage() {
    if [[ "$1" == data ]]; then
        rm -rf "$out/work"
        cp -al "$out/data" "$out/work"
    else
        (cd "$out/changed/data" && find . -type f -newer "$out/data/mixed/zero_text.bin" -print0) |
            while IFS= read -r -d '' f; do
                mkdir -p "$(dirname "$out/work/$f")"
                ln -f "$out/changed/data/$f" "$out/work/$f"
            done
    fi
    sync
}

repo_url() { # tool target name
    if [[ "$2" == s3 ]]; then echo "s3:http://127.0.0.1:$port/bench/$1-$3"; else echo "$bench/repos/$1-$3"; fi
}

results="$bench/results.jsonl"
: >"$results"
log="$bench/commands.log"
: >"$log"

# run TOOL TARGET STEP RUN BYTES [--stdin-cmd CMD] -- CMD...
run() {
    local tool=$1 target=$2 step=$3 r=$4 bytes=$5
    shift 5
    local res
    echo "== $tool $target $step run $r: $*" >>"$log"
    # Write back what the previous step left dirty, so its page-cache write-back is not
    # charged to this command (the previous step is the other tool's half the time).
    sync
    if ! res=$(python3 "$measure" --log "$log" "$@"); then
        echo "FAILED: $tool $target $step (see $log): $res" >&2
        tail -5 "$log" >&2
        exit 1
    fi
    echo "{\"tool\":\"$tool\",\"target\":\"$target\",\"step\":\"$step\",\"run\":$r,\"bytes\":$bytes,\"m\":$res}" >>"$results"
    printf '%-8s %-5s %-12s run %s: %s\n' "$tool" "$target" "$step" "$r" "$res" >&2
}

size_data=$(du -sb --apparent-size "$out/data" | cut -f1)
size_changed=$(du -sb --apparent-size "$out/changed/data" | cut -f1)

backup_cmd() { # tool repo
    if [[ $1 == snapback ]]; then echo "$snapback -q -r $2 backup"; else echo "$restic -q --no-cache -r $2 backup"; fi
}

for r in $(seq "$runs"); do
    if (( r % 2 )); then order=(snapback restic); else order=(restic snapback); fi
    for target in "${targets[@]}"; do
        rm -rf "$bench/repos"
        mkdir -p "$bench/repos"
        for tool in snapback restic; do
            for name in path tar; do
                url=$(repo_url "$tool" "$target" "$name-$r")
                if [[ $tool == snapback ]]; then
                    "$snapback" -q -r "$url" init >>"$log" 2>&1
                else
                    "$restic" -q --no-cache -r "$url" init >>"$log" 2>&1
                fi
            done
        done
        stage data
        for tool in "${order[@]}"; do
            url=$(repo_url "$tool" "$target" "path-$r")
            run "$tool" "$target" first "$r" "$size_data" -- $(backup_cmd "$tool" "$url") "$out/work"
        done
        for tool in "${order[@]}"; do
            url=$(repo_url "$tool" "$target" "tar-$r")
            run "$tool" "$target" tar-first "$r" "$size_data" --stdin-cmd "tar -C '$out' -cf - work" \
                -- $(backup_cmd "$tool" "$url") --stdin --stdin-filename work.tar
        done
        stage changed
        for tool in "${order[@]}"; do
            url=$(repo_url "$tool" "$target" "path-$r")
            run "$tool" "$target" changed "$r" "$size_changed" -- $(backup_cmd "$tool" "$url") "$out/work"
        done
        for tool in "${order[@]}"; do
            url=$(repo_url "$tool" "$target" "tar-$r")
            run "$tool" "$target" tar-changed "$r" "$size_changed" --stdin-cmd "tar -C '$out' -cf - work" \
                -- $(backup_cmd "$tool" "$url") --stdin --stdin-filename work.tar
        done
        for tool in "${order[@]}"; do
            url=$(repo_url "$tool" "$target" "path-$r")
            rm -rf "$bench/work-restore"
            mkdir -p "$bench/work-restore"
            if [[ $tool == snapback ]]; then
                (( has_restore )) || continue
                run "$tool" "$target" restore "$r" "$size_changed" -- "$snapback" -q -r "$url" restore latest --target "$bench/work-restore"
            else
                run "$tool" "$target" restore "$r" "$size_changed" -- "$restic" -q --no-cache -r "$url" restore latest --target "$bench/work-restore"
            fi
            # Same content as the source (a restore that writes nothing would look fast).
            restored=$(du -sb --apparent-size "$bench/work-restore" | cut -f1)
            if (( restored < size_changed )); then
                echo "restore by $tool wrote only $restored of $size_changed bytes" >&2
                exit 1
            fi
            rm -rf "$bench/work-restore"
        done
        for tool in "${order[@]}"; do
            url=$(repo_url "$tool" "$target" "path-$r")
            if [[ $tool == snapback ]]; then
                (( has_check )) || continue
                run "$tool" "$target" check "$r" "$size_changed" -- "$snapback" -q -r "$url" check --read-data
            else
                run "$tool" "$target" check "$r" "$size_changed" -- "$restic" -q --no-cache -r "$url" check --read-data
            fi
        done
    done
done
rm -rf "$out/work"

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r), $(free -g | awk '/Mem:/{print $2}') GiB RAM"
table=$(python3 "$here/e2e_table.py" "$results" "$runs" "$machine" "$rev" "$has_restore" "$has_check" "$*")
echo "$table"
echo "$table" >"$bench/e2e.md"
if [[ "${WRITE_DOC:-1}" == 1 && -f "$top/BENCHMARKS.md" ]]; then
    python3 - "$top/BENCHMARKS.md" "$bench/e2e.md" <<'EOF'
import sys
doc, part = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(doc).read()
b, e = "<!-- e2e:begin -->", "<!-- e2e:end -->"
if b in text and e in text:
    head, rest = text.split(b, 1)
    text = head + b + "\n" + part + "\n" + e + rest.split(e, 1)[1]
    open(doc, "w").write(text)
EOF
fi
