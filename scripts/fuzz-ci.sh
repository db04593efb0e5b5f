#!/usr/bin/env bash
# Fuzzes omnikv's decoders of untrusted input for SECS seconds in all (default 60), split
# over the targets: peer frames, keys, API headers, reconfigure bodies. Exits 1 on a finding,
# which is saved under fuzz/artifacts/TARGET/ and replayed by `cargo test -p omnikv-fuzz`.
#
# With cargo-fuzz installed (`cargo install cargo-fuzz`), runs coverage-guided libFuzzer on
# stable Rust (`-s none`: no sanitizer, which would need nightly). Without it, runs the
# stable built-in mutation driver (fuzz/src/bin/fuzz.rs). OMNIKV_FUZZ_ENGINE=driver|libfuzzer
# forces one. Neither builds RocksDB.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
secs="${1:-60}"
targets=(peer_frame key headers reconfigure_body)
per=$(( secs / ${#targets[@]} ))
(( per >= 1 )) || per=1
engine="${OMNIKV_FUZZ_ENGINE:-}"
if [[ -z "$engine" ]]; then
    if cargo fuzz --version >/dev/null 2>&1; then engine=libfuzzer; else engine=driver; fi
fi
echo "fuzz: engine $engine, ${per}s per target"
status=0
if [[ "$engine" == libfuzzer ]]; then
    # libFuzzer's own target dir: its instrumented build must not evict the test build.
    target_dir="${CARGO_TARGET_DIR:-$PWD/target}-fuzz"
    for t in "${targets[@]}"; do
        mkdir -p "fuzz/artifacts/$t"
        # Coverage-guided: new inputs go to a scratch corpus, the repo corpus stays small.
        scratch=$(mktemp -d)
        log=$(mktemp)
        set +e
        CARGO_TARGET_DIR="$target_dir" cargo fuzz run --fuzz-dir fuzz/libfuzzer -s none "$t" \
            "$scratch" "fuzz/corpus/$t" -- -max_total_time="$per" -rss_limit_mb=2048 \
            -timeout=2 -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1
        rc=$?
        set -e
        grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|==[0-9]+==|SUMMARY|Test unit written|.*panicked)" "$log" || true
        if [[ $rc -ne 0 ]]; then
            tail -40 "$log"
            echo "fuzz: $t FAILED (artifact under fuzz/artifacts/$t/)"
            status=1
        fi
        rm -f "$log"
        rm -rf "$scratch"
    done
else
    cargo build -q -p omnikv-fuzz --release --bin fuzz
    "${CARGO_TARGET_DIR:-target}/release/fuzz" all "$secs" || status=1
fi
exit $status
