#!/usr/bin/env bash
# Run every libFuzzer target (or the ones named) for a given number of seconds each, starting
# from its seed corpus, and print executions per target. For long local runs; CI uses the short
# step in scripts/test.sh.
#   scripts/fuzz.sh SECONDS [TARGET...]      e.g. scripts/fuzz.sh 600 image tok
# Environment: QVL_FUZZ_BUILD (build dir, default build-fuzz), QVL_FUZZ_JOBS (parallel build
# jobs, default 2), QVL_SHARED (fixtures, default ../shared), QVL_FUZZ_KEEP=1 keeps the grown
# corpus and logs under $QVL_FUZZ_BUILD/fuzz-out/<name>. A crash leaves its input under
# $QVL_FUZZ_BUILD/fuzz-out/<name>/ and makes the script exit non-zero after all targets ran.
set -uo pipefail
cd "$(dirname "$0")/.."
secs=${1:?usage: scripts/fuzz.sh SECONDS [TARGET...]}
shift
build=${QVL_FUZZ_BUILD:-build-fuzz}
export QVL_SHARED=${QVL_SHARED:-$(cd .. && pwd)/shared}
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
CC=clang CXX=clang++ cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQVL_FUZZ=ON \
    >/dev/null || exit 1
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for src in tests/fuzz/fuzz_*.c; do
        n=$(basename "$src" .c)
        targets+=("${n#fuzz_}")
    done
fi
names=()
for t in "${targets[@]}"; do names+=("fuzz_$t"); done
cmake --build "$build" -j"${QVL_FUZZ_JOBS:-2}" --target "${names[@]}" >/dev/null || exit 1
out="$build/fuzz-out"
mkdir -p "$out"
status=0
printf '%-14s %8s %12s %10s %8s %s\n' target seconds executions exec/s corpus result
for t in "${targets[@]}"; do
    work="$out/$t"
    rm -rf "$work"
    mkdir -p "$work/corpus"
    [ -d "tests/fuzz/corpus/$t" ] && cp -r "tests/fuzz/corpus/$t"/. "$work/corpus"/
    start=$(date +%s)
    "$build/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$work/" "$work/corpus" >"$work/log" 2>&1
    rc=$?
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$work/log" | tail -1)
    [ -n "$execs" ] || execs=$(grep -o '^#[0-9]*' "$work/log" | tail -1 | tr -d '#')
    ncorp=$(find "$work/corpus" -type f | wc -l)
    if [ $rc -eq 0 ]; then
        res=ok
    else
        res="CRASH (see $work/log)"
        status=1
    fi
    printf '%-14s %8s %12s %10s %8s %s\n' "$t" "$took" "${execs:-?}" \
        "$(( ${execs:-0} / (took > 0 ? took : 1) ))" "$ncorp" "$res"
    if [ $rc -ne 0 ]; then
        grep -m1 -A8 -E 'ERROR|runtime error|deadly signal' "$work/log" | sed 's/^/    /'
        ls "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* 2>/dev/null | sed 's/^/    input: /'
    elif [ "${QVL_FUZZ_KEEP:-0}" != "1" ]; then
        rm -rf "$work"
    fi
done
exit $status
