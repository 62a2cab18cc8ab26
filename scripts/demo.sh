#!/usr/bin/env bash
# The README's quick start: builds mailpipe and runs the embedded default
# (SQLite, in-process queue, .eml files, tracker on localhost) over a sample
# campaign of 1,000 personalised messages. Extra arguments go to `demo`,
# e.g. `scripts/demo.sh --serve-for 0` to exit right after the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}
for tool in cc make perl; do
  command -v "$tool" >/dev/null || {
    echo "demo: '$tool' is missing; the bundled librdkafka build needs cc, make and perl (apt-get install build-essential perl)" >&2
    exit 1
  }
done
exec cargo run --quiet --locked -p mailpipe -- demo "$@"
