#!/usr/bin/env bash
# The long chaos run: the same cases as the test command's short ones, at
# full size, against the real services on loopback. Each case asserts its
# own outcome and is bounded in time; this prints a table of results.
#
#   scripts/chaos.sh                  # every case
#   CASES="crash serve outage" scripts/chaos.sh
#   JOBS=20000 KILLS=6 scripts/chaos.sh
#
# Logs: $MAILPIPE_ARTIFACTS/chaos/<case>.log (/var/tmp/mailpipe-artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}
JOBS=${JOBS:-20000}
KILLS=${KILLS:-6}
OUTAGE_JOBS=${OUTAGE_JOBS:-10000}
CASES=${CASES:-crash serve outage deferrals replies tracker}
logs=${MAILPIPE_ARTIFACTS:-/var/tmp/mailpipe-artifacts}/chaos
mkdir -p "$logs"

scripts/services.sh up
eval "$(scripts/services.sh env)"
echo "==> building the worker binary and the test harness"
cargo build --locked -q -p mailpipe
cargo test --locked -q -p mailpipe-tests --no-run 2>/dev/null

# case name | test module | test filter | what it asserts (one test binary: it)
declare -A TEST FILTER WHAT
TEST[crash]=crash;           FILTER[crash]=kill_9
WHAT[crash]="kill -9 the worker $KILLS times during a $JOBS-job campaign: 0 lost, 0 duplicate Message-IDs, in-doubt accounted for"
TEST[serve]=single_node;     FILTER[serve]=kill_9
WHAT[serve]="kill -9 \`mailpipe serve\` (single node: SQLite queue, no Kafka) $KILLS times during a $JOBS-job campaign: 0 lost, 0 duplicates"
TEST[outage]=send_outage;    FILTER[outage]=kafka_then_postgres
WHAT[outage]="Kafka restart, then PostgreSQL restart, during a $OUTAGE_JOBS-job campaign: all sent once, none in doubt"
TEST[deferrals]=retries;     FILTER[deferrals]=a_share_of_recipients
WHAT[deferrals]="451 to ~30% of recipients: all delivered once after retries, campaign not complete while deferrals wait"
TEST[replies]=replies;       FILTER[replies]=
WHAT[replies]="5xx (bounced + suppressed), 4xx, disconnects at DATA, mid-content and after the dot"
TEST[tracker]=tracker_outage; FILTER[tracker]=
WHAT[tracker]="tracker under traffic while PostgreSQL then Kafka restart: events spooled, replayed, each once"

results=()
failed=0
for c in $CASES; do
  [[ -n ${TEST[$c]:-} ]] || { echo "unknown case: $c (crash serve outage deferrals replies tracker)" >&2; exit 2; }
  echo "==> $c: ${WHAT[$c]}"
  start=$SECONDS
  if MAILPIPE_CHAOS_JOBS=$JOBS MAILPIPE_CHAOS_KILLS=$KILLS MAILPIPE_CHAOS_OUTAGE_JOBS=$OUTAGE_JOBS \
     timeout 1800 cargo test --locked -q -p mailpipe-tests --test it -- --nocapture "${TEST[$c]}::${FILTER[$c]}" \
       > "$logs/$c.log" 2>&1; then
    verdict=pass
  else
    verdict=FAIL; failed=1
  fi
  # The tests print one summary line each ("crash test: ...", "send outage: ...").
  summary=$(grep -E '^(crash test|single-node crash test|send outage|deferrals|[0-9]+ requests answered)' "$logs/$c.log" | tail -1 || true)
  [[ -n $summary ]] || summary=$(grep -Eo 'test result: .* [0-9]+ failed' "$logs/$c.log" | tail -1 || true)
  results+=("$(printf '%-10s %-6s %5ss  %s' "$c" "$verdict" $((SECONDS - start)) "${summary:-see $logs/$c.log}")")
  echo "${results[-1]}"
done

echo
printf '%-10s %-6s %6s  %s\n' case result time summary
printf '%s\n' "${results[@]}"
exit $failed
