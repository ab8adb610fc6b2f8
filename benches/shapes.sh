#!/usr/bin/env bash
# Every data shape of issue 13, snapback against restic 0.14 side by side, local repositories.
#
#   SHAPES="many real repo" benches/shapes.sh [OUT]     (default OUT: bench-out/shapes)
#   SHAPES=many,real benches/e2e.sh                      (e2e.sh hands over to this script)
#   RUNS=1 SNAPBACK_BIN=path WRITE_DOC=0 ...             (as in e2e.sh)
#   MANY_FILES=300000     files of the many-files shape
#   WIDE_FILES=300000     files of the wide shape
#   REPO_BLOBS=1000000    blobs already in the repository of the repo shape
#   KEEP=1                keep generated data and repositories (default: deleted at the end)
#
# Shapes:
#   many   benches/gen_many_files.py: MANY_FILES small files (80% 20–45 B), 1,000 per directory,
#          odd names; changed = 1% modified + 1% new.
#   wide   the same generator with all WIDE_FILES files in one directory (a maildir, an upload
#          folder): a tree blob of some 70 MB of JSON.
#   real   benches/gen_real_tree.py: a hard-link farm of /usr/include, /usr/share, /usr/lib (and
#          the Rust sources if installed), ~800 MB in a sorted walk; changed = 1% + 1%.
#   repo   a first backup of a small many-files set (20,000 files) into a repository that already
#          indexes REPO_BLOBS blobs (crates/repo/benches/index.rs gen: real sealed index files, but
#          the packs they name do not exist), against the same backup into an empty repository
#          made by the same generator (same cheap scrypt parameters, so that scrypt's working
#          memory does not mask the index's).
#          The new data never dedups against the phantom blobs, so both tools write a correct
#          snapshot; `check` would fail on either (missing packs), so it is not run. The RSS
#          difference is the end-to-end cost of holding the index, per blob.
#
# Steps of many, wide and real, each tool once per run, alternating which goes first:
#   first      backup OUT/<shape>/work (= data)              fresh repository
#   first-cold (real only) the same with the tree evicted from the page cache first
#   tar-first  tar -C OUT/<shape> -cf - work | backup --stdin fresh repository
#   tar-alone  GNU tar alone, its stream into /dev/null (what paces tar-first)
#   tar-file   the same stream read from a file (cat FILE | backup --stdin)   fresh repository
#   changed    backup work after the delta is linked in      parent = first
#   restore    restore latest of the path repository; the restored regular files are counted and
#              summed against the source (a mismatch is shown in the table, not hidden)
# Measurement as in e2e.sh (benches/measure.py after a sync); each result also records the
# 1-minute load average at its start, since this machine is shared.
set -euo pipefail

top=$(git rev-parse --show-toplevel)
here="$top/benches"
cd "$top"
out=${1:-bench-out/shapes}
runs=${RUNS:-1}
shapes=${SHAPES:-many real repo}
shapes=${shapes//,/ }
many_files=${MANY_FILES:-300000}
wide_files=${WIDE_FILES:-300000}
repo_blobs=${REPO_BLOBS:-1000000}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bench="$out/run"
mkdir -p "$bench"
measure="$here/measure.py"

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

cleanup() {
    rm -rf "$bench/repos" "$bench"/restore-* "$bench/snapback" "$bench/work.tar"
    if [[ "${KEEP:-0}" != 1 ]]; then
        for s in many wide real repo; do rm -rf "${out:?}/$s"; done
    fi
}
trap cleanup EXIT

results="$bench/results.jsonl"
: >"$results"
log="$bench/commands.log"
: >"$log"

# run SHAPE TOOL STEP RUN FILES BYTES [--stdin-cmd CMD] -- CMD...
run() {
    local shape=$1 tool=$2 step=$3 r=$4 files=$5 bytes=$6
    shift 6
    local res load
    echo "== $shape $tool $step run $r: $*" >>"$log"
    sync
    load=$(cut -d' ' -f1 /proc/loadavg)
    if ! res=$(python3 "$measure" --log "$log" "$@"); then
        echo "FAILED: $shape $tool $step (see $log): $res" >&2
        tail -5 "$log" >&2
        exit 1
    fi
    echo "{\"shape\":\"$shape\",\"tool\":\"$tool\",\"step\":\"$step\",\"run\":$r,\"files\":$files,\"bytes\":$bytes,\"load\":$load,\"m\":$res}" >>"$results"
    printf '%-5s %-8s %-10s run %s (load %s): %s\n' "$shape" "$tool" "$step" "$r" "$load" "$res" >&2
}

# Records the bytes a repository holds (all of its files), so that speed is compared at the
# compression each tool reached: stored SHAPE TOOL STEP RUN REPO
stored() {
    echo "{\"shape\":\"$1\",\"tool\":\"$2\",\"step\":\"stored\",\"after\":\"$3\",\"run\":$4,\"stored\":$(du -sb "$5" | cut -f1)}" >>"$results"
}

# "FILES BYTES" of the regular files beneath $1 (names may hold newlines: count NULs).
census() {
    find "$1" -type f -printf '%s\0' | python3 -c 'import sys; v=[int(x) for x in sys.stdin.buffer.read().split(b"\0") if x]; print(len(v), sum(v))'
}

# Evicts the regular files beneath $1 from the page cache.
evict() {
    sync
    python3 "$here/evict.py" "$1"
}

backup_cmd() { # tool repo
    if [[ $1 == snapback ]]; then echo "$snapback -q -r $2 backup"; else echo "$restic -q --no-cache -r $2 backup"; fi
}

init_repo() { # tool repo
    if [[ $1 == snapback ]]; then "$snapback" -q -r "$2" init >>"$log" 2>&1; else "$restic" -q --no-cache -r "$2" init >>"$log" 2>&1; fi
}

# Stage DIR/work: "data" (fresh link farm) or "changed" (link every delta file over work).
stage() { # dir what
    if [[ "$2" == data ]]; then
        rm -rf "$1/work"
        cp -al "$1/data" "$1/work"
    else
        python3 - "$1" <<'EOF'
import os, sys
root = os.fsencode(sys.argv[1])
delta, work = os.path.join(root, b"delta"), os.path.join(root, b"work")
for dp, _ds, fs in os.walk(delta):
    rel = os.path.relpath(dp, delta)
    os.makedirs(os.path.join(work, rel), exist_ok=True)
    for f in fs:
        dst = os.path.join(work, rel, f)
        if os.path.lexists(dst):
            os.remove(dst)
        os.link(os.path.join(dp, f), dst)
EOF
    fi
    sync
}

tree_shape() { # shape
    local shape=$1 dir="$out/$1"
    if [[ ! -f "$dir/.generated" ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        echo "generating $shape in $dir ..." >&2
        if [[ $shape == many ]]; then
            python3 "$here/gen_many_files.py" "$dir" "$many_files" >&2
        elif [[ $shape == wide ]]; then
            python3 "$here/gen_many_files.py" "$dir" "$wide_files" --per-dir "$wide_files" >&2
        else
            python3 "$here/gen_real_tree.py" "$dir" >&2
        fi
        touch "$dir/.generated"
    fi
    [[ -f "$dir/manifest.txt" ]] && cp "$dir/manifest.txt" "$bench/$shape-manifest.txt"
    local r order tool url c_data c_changed
    for r in $(seq "$runs"); do
        if (( r % 2 )); then order=(snapback restic); else order=(restic snapback); fi
        rm -rf "$bench/repos"
        mkdir -p "$bench/repos"
        for tool in snapback restic; do
            init_repo "$tool" "$bench/repos/$tool-path"
            init_repo "$tool" "$bench/repos/$tool-tar"
        done
        stage "$dir" data
        c_data=$(census "$dir/work")
        # "first" is the warm case: read the tree once, so that the first tool of a run does not
        # alone pay for what this VM paged out while the previous shape ran.
        tar -C "$dir" -cf - work | cat >/dev/null
        for tool in "${order[@]}"; do
            run "$shape" "$tool" first "$r" $c_data -- $(backup_cmd "$tool" "$bench/repos/$tool-path") "$dir/work"
            stored "$shape" "$tool" first "$r" "$bench/repos/$tool-path"
        done
        # A sidecar's first backup reads files that are not in the page cache: the same backup
        # with the tree evicted first (posix_fadvise DONTNEED per file; drop_caches needs root
        # on the host), real tree only (the many-files shape would take minutes per tool).
        if [[ $shape == real ]]; then
            for tool in "${order[@]}"; do
                init_repo "$tool" "$bench/repos/$tool-cold"
                evict "$dir/work"
                run "$shape" "$tool" first-cold "$r" $c_data -- $(backup_cmd "$tool" "$bench/repos/$tool-cold") "$dir/work"
            done
        fi
        for tool in "${order[@]}"; do
            run "$shape" "$tool" tar-first "$r" $c_data --stdin-cmd "tar -C '$dir' -cf - work" \
                -- $(backup_cmd "$tool" "$bench/repos/$tool-tar") --stdin --stdin-filename work.tar
            stored "$shape" "$tool" tar-first "$r" "$bench/repos/$tool-tar"
        done
        # The live stream above is paced by GNU tar reading the files; the same stream from a
        # file shows what each tool consumes, and tar alone what it produces.
        tar -C "$dir" -cf "$bench/work.tar" work
        run "$shape" gnu-tar tar-alone "$r" $c_data -- sh -c "tar -C '$dir' -cf - work | cat >/dev/null"
        for tool in "${order[@]}"; do
            init_repo "$tool" "$bench/repos/$tool-tarfile"
            run "$shape" "$tool" tar-file "$r" $c_data --stdin-cmd "cat '$bench/work.tar'" \
                -- $(backup_cmd "$tool" "$bench/repos/$tool-tarfile") --stdin --stdin-filename work.tar
        done
        rm -f "$bench/work.tar"
        stage "$dir" changed
        c_changed=$(census "$dir/work")
        for tool in "${order[@]}"; do
            run "$shape" "$tool" changed "$r" $c_changed -- $(backup_cmd "$tool" "$bench/repos/$tool-path") "$dir/work"
        done
        # Each restore goes into a directory of its own, all deleted after the shape: ext4 makes
        # creating files over just-deleted inodes cost 10+ s of sys time, which would otherwise
        # land on whichever tool restores right after a deletion (BENCHMARKS.md).
        for tool in "${order[@]}"; do
            local target="$bench/restore-$r-$tool"
            mkdir -p "$target"
            if [[ $tool == snapback ]]; then
                run "$shape" "$tool" restore "$r" $c_changed -- "$snapback" -q -r "$bench/repos/$tool-path" restore latest --target "$target"
            else
                run "$shape" "$tool" restore "$r" $c_changed -- "$restic" -q --no-cache -r "$bench/repos/$tool-path" restore latest --target "$target"
            fi
            echo "{\"shape\":\"$shape\",\"tool\":\"$tool\",\"step\":\"restored\",\"run\":$r,\"source\":\"$c_changed\",\"restored\":\"$(census "$target")\"}" >>"$results"
        done
        rm -rf "$bench/repos"
    done
    rm -rf "$dir/work" "$bench"/restore-*
}

repo_shape() {
    local dir="$out/repo" r order tool c
    if [[ ! -f "$dir/.generated" ]]; then
        rm -rf "$dir"
        mkdir -p "$dir"
        echo "generating repo: $repo_blobs blobs of index, and a 20,000-file data set ..." >&2
        cargo bench --locked -p snapback-repo --bench index -- gen "$dir/big" "$repo_blobs" 16 >&2
        # The empty repository from the same generator: same (cheap) key derivation, so the peak
        # RSS difference is the index's alone, not scrypt's working memory.
        cargo bench --locked -p snapback-repo --bench index -- gen "$dir/empty" 0 16 >&2
        python3 "$here/gen_many_files.py" "$dir/small" 20000 >&2
        touch "$dir/.generated"
    fi
    c=$(census "$dir/small/data")
    for r in $(seq "$runs"); do
        if (( r % 2 )); then order=(snapback restic); else order=(restic snapback); fi
        rm -rf "$bench/repos"
        mkdir -p "$bench/repos"
        for tool in snapback restic; do
            cp -a "$dir/big/repo" "$bench/repos/$tool-big"
            cp -a "$dir/empty/repo" "$bench/repos/$tool-empty"
        done
        for tool in "${order[@]}"; do
            RESTIC_PASSWORD=bench run repo "$tool" empty-repo "$r" $c -- $(backup_cmd "$tool" "$bench/repos/$tool-empty") "$dir/small/data"
            RESTIC_PASSWORD=bench run repo "$tool" big-repo "$r" $c -- $(backup_cmd "$tool" "$bench/repos/$tool-big") "$dir/small/data"
        done
        rm -rf "$bench/repos"
    done
}

for shape in $shapes; do
    case $shape in
        many | wide | real) tree_shape "$shape" ;;
        repo) repo_shape ;;
        *) echo "unknown shape $shape (many, wide, real, repo)" >&2; exit 2 ;;
    esac
done

machine="$(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), Linux $(uname -r), $(free -g | awk '/Mem:/{print $2}') GiB RAM"
table=$(python3 "$here/shapes_table.py" "$results" "$runs" "$machine" "$rev" "$repo_blobs" "$bench")
echo "$table"
echo "$table" >"$bench/shapes.md"
if [[ "${WRITE_DOC:-1}" == 1 && -f "$top/BENCHMARKS.md" ]]; then
    python3 - "$top/BENCHMARKS.md" "$bench/shapes.md" <<'EOF'
import sys
doc, part = sys.argv[1], open(sys.argv[2]).read().rstrip("\n")
text = open(doc).read()
b, e = "<!-- shapes:begin -->", "<!-- shapes:end -->"
if b in text and e in text:
    head, rest = text.split(b, 1)
    text = head + b + "\n" + part + "\n" + e + rest.split(e, 1)[1]
    open(doc, "w").write(text)
EOF
fi
