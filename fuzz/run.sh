#!/bin/sh
# run.sh - a fuzzing campaign for one harness, and its line for fuzz/README.md's table.
#
#   fuzz/run.sh BUILD_DIR HARNESS SECONDS [JOBS]
#   fuzz/run.sh build-fuzz scan 600          # ten minutes of fuzz_scan on one core
#   fuzz/run.sh build-fuzz scan 600 2        # ... in two processes (-jobs=2 -workers=2)
#   fuzz/run.sh build-fuzz scan 0            # no fuzzing: only minimise the saved corpus
#   CKPT_FUZZ_CPU=3600 fuzz/run.sh build-fuzz scan 7200   # stop at one CPU-hour (or 2 h wall)
#
# On a shared machine wall-clock time says little: CKPT_FUZZ_CPU=N stops the fuzzer (SIGINT,
# which libFuzzer answers with its final statistics) once its process has used N CPU seconds;
# SECONDS stays the wall-clock limit. One job only: with JOBS > 1 the variable is refused.
# libFuzzer's per-input timeout is wall-clock too: on a loaded machine a nice-19 fuzzer can be
# starved long enough for an ordinary input to pass it; CKPT_FUZZ_TIMEOUT=N (default 20 s)
# raises it. Replay a timeout alone (fuzz_HARNESS -runs=1 FILE) before calling it a hang.
#
# BUILD_DIR is a -DCKPT_FUZZ=ON build (CC=clang). The campaign starts from the saved corpus
# fuzz/corpus/HARNESS (read, never written during the run) and the dictionary fuzz/HARNESS.dict
# when there is one; new inputs go to a scratch folder, and at the end the ones that add
# coverage are merged into the saved corpus (-merge=1; inputs of at most CKPT_FUZZ_MAX_LEN
# bytes, the corpus trimmed to CKPT_FUZZ_MAX_KB, so that it stays small enough to commit). Crashes, leaks, timeouts and out-of-memory inputs
# land in BUILD_DIR/findings/HARNESS/; each must be fixed and its input added to the saved
# corpus (CTest replays that on every build). Runs at nice 19: the machine is shared.
#
# The last line printed is the table row:
#   | harness | CPU time | executions | edges (cov) | findings | date |
set -eu

if [ $# -lt 3 ]; then
    echo "usage: $0 BUILD_DIR HARNESS SECONDS [JOBS]" >&2
    exit 2
fi
build=$(cd "$1" && pwd) name=$2 secs=$3 jobs=${4:-1}
here=$(cd "$(dirname "$0")" && pwd)
bin=$build/fuzz_$name
corpus=$here/corpus/$name
max_len=${CKPT_FUZZ_MAX_LEN:-16384}
max_kb=${CKPT_FUZZ_MAX_KB:-2000}
timeout=${CKPT_FUZZ_TIMEOUT:-20}
[ -x "$bin" ] || { echo "$0: no $bin (configure with CC=clang -DCKPT_FUZZ=ON)" >&2; exit 2; }
[ -d "$corpus" ] || { echo "$0: no corpus folder $corpus" >&2; exit 2; }
cpu_budget=${CKPT_FUZZ_CPU:-0}
if [ "$cpu_budget" -gt 0 ] && [ "$jobs" -gt 1 ]; then
    echo "$0: CKPT_FUZZ_CPU works with one job only" >&2
    exit 2
fi

findings=$build/findings/$name
mkdir -p "$findings"
work=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-fuzz-$name.XXXXXX")
logs=$work/logs
mkdir -p "$work/new" "$logs"
trap 'rm -rf "$work"' EXIT

set -- -max_total_time="$secs" -max_len="$max_len" -timeout="$timeout" -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="$findings/" -close_fd_mask=1
[ -f "$here/$name.dict" ] && set -- "$@" -dict="$here/$name.dict"
# The CLI prints an error line per rejected command line: keep stderr for the reports only.
[ "$name" = cli ] && set -- "$@" -close_fd_mask=3
if [ "$jobs" -gt 1 ]; then
    set -- "$@" -jobs="$jobs" -workers="$jobs"
fi

: >"$work/start"   # findings are the files newer than this
ticks=$(getconf CLK_TCK)
cpu0=$(awk '{print $16 + $17}' /proc/$$/stat)
start=$(date +%s)
if [ "$secs" -gt 0 ]; then   # 0: only minimise the saved corpus
    (cd "$logs" && exec nice -n 19 "$bin" "$@" "$work/new" "$corpus" >"$logs/main.log" 2>&1) &
    fuzzer=$!
    if [ "$cpu_budget" -gt 0 ]; then
        while kill -0 "$fuzzer" 2>/dev/null; do
            used=$(awk -v t="$ticks" '{printf "%d", ($14 + $15) / t}' /proc/$fuzzer/stat 2>/dev/null || echo 0)
            [ "$used" -ge "$cpu_budget" ] && { kill -INT "$fuzzer"; break; }
            sleep 10
        done
    fi
    wait "$fuzzer" || true
else
    : >"$logs/main.log"
fi
end=$(date +%s)
# Workers stopped at the time limit skip atexit: remove the scratch folders fuzz_write and
# fuzz_cli make.
rm -rf "${TMPDIR:-/tmp}/ckpt-fuzz-$name-"?????? /dev/shm/ckpt-fuzz-"$name"-??????

# CPU seconds of the fuzzer processes (children of this shell, once reaped).
cpu=$(awk -v t="$ticks" -v c0="$cpu0" '{printf "%d", ($16 + $17 - c0) / t}' /proc/$$/stat)

# Every log: the main one, or fuzz-N.log per job.
all=$(ls "$logs"/*.log)
execs=$(cat $all | sed -n 's/^stat::number_of_executed_units: *//p' | awk '{s += $1} END {print s + 0}')
edges=$(cat $all | sed -n 's/.* cov: \([0-9]*\) .*/\1/p' | sort -n | tail -1)
found=$(find "$findings" -type f -newer "$work/start" ! -name 'slow-unit-*' 2>/dev/null | wc -l)
slow=$(find "$findings" -type f -newer "$work/start" -name 'slow-unit-*' 2>/dev/null | wc -l)

# Minimise saved + new inputs into the smallest set with the same coverage (libFuzzer prefers
# the smaller of two inputs) and make that the saved corpus. Named files (hand-made seeds,
# regress-*: inputs of fixed findings) stay whatever their coverage; only libFuzzer's
# SHA-1-named files are replaced.
mkdir "$work/merged"
generated='.*/[0-9a-f]{40}'
if nice -n 19 "$bin" -merge=1 -max_len="$max_len" -close_fd_mask=3 "$work/merged" "$corpus" \
    "$work/new" >"$logs/merge.out" 2>&1; then
    before=$(ls "$corpus" | wc -l)
    find "$corpus" -maxdepth 1 -type f -regextype posix-extended -regex "$generated" -delete
    cp "$work/merged"/* "$corpus"/ 2>/dev/null || true
    for kept in "$corpus"/*; do    # a named seed is not kept twice
        case $(basename "$kept") in *[!0-9a-f]*) rm -f "$corpus/$(sha1sum <"$kept" | cut -c1-40)" ;; esac
    done
    # A committed corpus stays under CKPT_FUZZ_MAX_KB (2 MB): drop the largest generated inputs.
    while [ "$(du -sk "$corpus" | cut -f1)" -gt "$max_kb" ]; do
        big=$(find "$corpus" -maxdepth 1 -type f -regextype posix-extended -regex "$generated" -printf '%s %p\n' |
              sort -n | tail -20 | cut -d' ' -f2)
        [ -n "$big" ] || break
        rm -f $big
    done
    added=$(( $(ls "$corpus" | wc -l) - before ))
else
    echo "$0: merge failed, the saved corpus is unchanged:" >&2
    tail -5 "$logs/merge.out" >&2
fi

grep -h -E "^==[0-9]+==ERROR|^SUMMARY|DEADLYSIGNAL|^artifact_prefix|Test unit written" $all \
    2>/dev/null | sort -u | head -20 || true
echo "fuzz_$name: ${secs} s wall x $jobs job(s), $((end - start)) s elapsed; corpus ${added:-+0} files" \
     "($(ls "$corpus" | wc -l) files, $(du -sk "$corpus" | cut -f1) KB); $slow slow inputs;" \
     "findings in $findings"
printf '| %s | %d min %02d s | %s | %s | %s | %s |\n' "$name" $((cpu / 60)) $((cpu % 60)) \
    "$execs" "${edges:-?}" "$found" "$(date -u +%Y-%m-%d)"
