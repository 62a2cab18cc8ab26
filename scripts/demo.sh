#!/usr/bin/env bash
# The README's quick start: builds mailpipe and runs the embedded default
# (SQLite, in-process queue, .eml files, tracker on localhost) over a sample
# campaign of 1,000 personalised messages. Extra arguments go to `demo`,
# e.g. `scripts/demo.sh --serve-for 0` to exit right after the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}
for tool in cc make perl pkg-config; do
  command -v "$tool" >/dev/null || {
    echo "demo: '$tool' is missing; the bundled librdkafka build needs cc, make, perl and pkg-config (apt-get install build-essential perl pkg-config libssl-dev)" >&2
    exit 1
  }
done
pkg-config --exists openssl || {
  echo "demo: OpenSSL's headers are missing; librdkafka's TLS links them (apt-get install libssl-dev)" >&2
  exit 1
}
exec cargo run --quiet --locked -p mailpipe -- demo "$@"
