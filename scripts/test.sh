#!/usr/bin/env bash
# Build qvl and run the whole test suite: the normal build (warnings as errors), then the same
# suite under AddressSanitizer + UBSan. Exits non-zero when any test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh --test
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DQVL_WERROR=ON >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs" --timeout 900)
if [ "${QVL_SKIP_ASAN:-0}" != "1" ]; then
    cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DQVL_SANITIZE=ON -DQVL_WERROR=ON >/dev/null
    cmake --build build-asan -j"$jobs"
    (cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
        ctest --output-on-failure -j"$jobs" --timeout 900)
fi
# ThreadSanitizer on the threaded tests (thread pool, contexts, load-time quantisation, server
# slots); test_model's loads use the same pool paths as test_gen and take minutes under TSan
if [ "${QVL_SKIP_TSAN:-0}" != "1" ]; then
    cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQVL_TSAN=ON -DQVL_WERROR=ON >/dev/null
    cmake --build build-tsan -j"$jobs" >/dev/null
    (cd build-tsan && TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        ctest --output-on-failure -j1 --timeout 900 -R "^(test_golden|test_gen|server_http)$")
fi
# libFuzzer targets (clang): replay the seed corpora, then fuzz each target briefly.
if [ "${QVL_SKIP_FUZZ:-0}" != "1" ] && command -v clang >/dev/null; then
    CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DQVL_FUZZ=ON >/dev/null
    cmake --build build-fuzz -j"$jobs" >/dev/null
    secs=${QVL_FUZZ_SECONDS:-10}
    for f in build-fuzz/fuzz_*; do
        [ -x "$f" ] || continue
        name=$(basename "$f"); corpus=tests/fuzz/corpus/${name#fuzz_}
        work=$(mktemp -d)
        [ -d "$corpus" ] && cp -r "$corpus"/. "$work"/
        echo "fuzz: $name for ${secs}s"
        UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 QVL_SHARED="$(cd .. && pwd)/shared" \
        "$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 \
            "$work" 2>"$work.log" || { tail -40 "$work.log"; echo "fuzz: $name FAILED"; exit 1; }
        rm -rf "$work" "$work.log"
    done
    echo "fuzz: all targets ran clean"
fi
