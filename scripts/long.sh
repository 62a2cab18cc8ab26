#!/usr/bin/env bash
# The long runs, one after another, behind one command: the signing
# backends against openssl, the send load harness, the tracker against
# nginx, and the chaos suite at full size.
# Each prints its own table; all of it is also kept in one report.
#
#   scripts/long.sh                     # N=50000 send, 15 s wrk runs, 20,000-job chaos
#   DUR=60s scripts/long.sh             # the tracker over 60 s, as issue 16 asks
# Chaos builds from the working tree: leave the sources alone while it runs.
#   N=10000 JOBS=5000 scripts/long.sh   # smaller
#
# Report: $MAILPIPE_ARTIFACTS/long-<date>.md (/var/tmp/mailpipe-artifacts).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${MAILPIPE_ARTIFACTS:-/var/tmp/mailpipe-artifacts}
mkdir -p "$out"
report=$out/long-$(date -u +%Y%m%dT%H%M%SZ).md
status=0
section() {
  local title=$1; shift
  printf '\n## %s\n\n`%s`\n\n' "$title" "$*" | tee -a "$report"
  if ! "$@" 2>&1 | tee -a "$report"; then status=1; echo "(failed)" | tee -a "$report"; fi
}
printf '# mailpipe long runs, %s\n\nmachine: %s, %s cores, %s\n' \
  "$(date -u +%FT%TZ)" "$(uname -m)" "$(nproc)" "$(awk '/MemTotal/ {printf "%d GiB RAM", $2/1048576}' /proc/meminfo)" | tee "$report"
section "Signing backends against openssl (scripts/bench/signing.sh)" scripts/bench/signing.sh
# The worker on 48 SMTP connections to the sink: it holds each transaction
# open across its commit-point write, so it needs more connections than
# smtp-source's 10 to keep the relay busy (docs/benchmarks.md, session 24).
section "Send load (scripts/bench/send.sh)" env CONNS="${CONNS:-48}" scripts/bench/send.sh
section "Tracker against nginx (scripts/bench/tracker.sh)" scripts/bench/tracker.sh
section "Chaos suite (scripts/chaos.sh)" scripts/chaos.sh
echo "report: $report"
exit $status
