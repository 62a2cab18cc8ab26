#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time (default 60 s each) on the
# nightly toolchain, starting from the committed corpus in fuzz/corpus/.
# New inputs that widen coverage are added to the corpus; a crash stops the
# run and leaves its input in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                 # every target, 60 s each
#   SECS=600 scripts/fuzz.sh token  # one target, longer
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(token send_job links smtp_reply)
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-/var/tmp/mailpipe-fuzz-target}
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "==> fuzzing $t for ${SECS}s"
  cargo +nightly fuzz run --fuzz-dir fuzz "$t" "fuzz/corpus/$t" -- -max_total_time="$SECS" -rss_limit_mb=2048 -max_len=65536
done
