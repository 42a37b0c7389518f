#!/usr/bin/env bash
# Fuzzes every target in fuzz/ (cargo-fuzz, libFuzzer with AddressSanitizer) for a fixed time each and fails on any
# crash, hang (-timeout) or over-allocation (-rss_limit_mb for the process, -malloc_limit_mb for one allocation).
#
#   scripts/fuzz.sh [seconds per target] [target...]      e.g. scripts/fuzz.sh 300 connect websocket
#
# Environment: FUZZ_RSS_LIMIT_MB (whole process, default 1024: AddressSanitizer alone takes ~300), FUZZ_MALLOC_LIMIT_MB
# (one allocation, default 64: inputs are a few KiB, so a larger allocation is an over-allocation bug), FUZZ_TIMEOUT
# (seconds per input, default 5), FUZZ_JOBS (parallel fuzzing processes per target, default 1). Seeds come from real encoders (fuzz/src/lib.rs, written by
# tests/fuzz_corpus.rs) into fuzz/corpus/<target>/, where libFuzzer also keeps what it finds; a crash leaves its
# input in fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/ once fixed: `cargo test` replays those).
# Not part of scripts/test.sh: minutes per target do not fit CI; tests/fuzz_corpus.rs replays the seeds there.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(connect connect_differential config proxy_protocol websocket)
rss="${FUZZ_RSS_LIMIT_MB:-1024}"
malloc="${FUZZ_MALLOC_LIMIT_MB:-64}"
timeout="${FUZZ_TIMEOUT:-5}"
jobs="${FUZZ_JOBS:-1}"

# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module); the stable compiler accepts them
# with RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked

MQTT_LB_FUZZ_CORPUS="$PWD/fuzz/corpus" cargo test --locked --test fuzz_corpus -- --exact write_seed_corpus --quiet
cd fuzz
cargo fuzz build
mkdir -p logs
summary=()
failed=0
for t in "${targets[@]}"; do
  echo "=== fuzzing $t for ${seconds}s"
  log="logs/$t.log"
  set +e
  parallel=()
  [ "$jobs" -le 1 ] || parallel=(-jobs="$jobs" -workers="$jobs")
  cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb="$rss" -malloc_limit_mb="$malloc" \
    -timeout="$timeout" \
    "${parallel[@]}" -print_final_stats=1 >"$log" 2>&1
  status=$?
  set -e
  if [ "$jobs" -gt 1 ]; then cat fuzz-*.log >>"$log" 2>/dev/null && rm -f fuzz-*.log; fi
  execs=$(grep -h 'stat::number_of_executed_units' "$log" | awk '{s += $2} END {print s + 0}')
  rate=$(grep -h 'stat::average_exec_per_sec' "$log" | awk '{s += $2} END {print s + 0}')
  corpus=$(find "corpus/$t" -type f | wc -l)
  if [ "$status" -ne 0 ]; then
    failed=1
    summary+=("$t: FAILED (exit $status) after $execs executions; see fuzz/$log and fuzz/artifacts/$t/")
    grep -E 'panicked|ERROR: libFuzzer|SUMMARY|Test unit written' "$log" | head -20 || true
  else
    summary+=("$t: ok, $execs executions ($rate/s), corpus $corpus inputs")
  fi
done
echo
echo "=== fuzz summary (${seconds}s per target; limits: rss ${rss} MiB, one allocation ${malloc} MiB, ${timeout}s per input)"
printf '%s\n' "${summary[@]}"
exit "$failed"
