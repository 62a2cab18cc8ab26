#!/usr/bin/env bash
# The single-node mode's send rate, against this machine's SMTP ceiling, in
# one run: smtp-source into a private smtp-sink (the ceiling), then N jobs
# of ~10 KB personalised HTML with 5 links (scripts/bench/gen_jobs.py)
# enqueued into a fresh SQLite file's store queue and sent by the release
# `mailpipe serve` (worker, tracker, API and analytics in one process) into
# the same kind of smtp-sink, Ed25519 DKIM. Messages/s is measured from the
# first outcome recorded to the last (ledger timestamps).
#
#   scripts/bench/serve.sh           # N=20000
#   N=5000 scripts/bench/serve.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}
N=${N:-20000}
cargo build --release -p mailpipe -q
BIN=${MAILPIPE_BIN:-$CARGO_TARGET_DIR/release/mailpipe}
work=$(mktemp -d /var/tmp/mailpipe-serve.XXXX)
sink_pid="" serve_pid=""
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
SPORT=12526
start_sink() {
  [ -n "$sink_pid" ] && { kill "$sink_pid" 2>/dev/null || true; wait "$sink_pid" 2>/dev/null || true; }
  local u=()
  [ "$(id -u)" = 0 ] && u=(-u nobody)
  /usr/sbin/smtp-sink "${u[@]}" -c 127.0.0.1:$SPORT 1024 >/dev/null 2>&1 &
  sink_pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$SPORT) 2>/dev/null && return; sleep 0.1; done
}

python3 scripts/bench/gen_jobs.py "$N" bench > "$work/jobs.jsonl"
msg_size=$(( $(head -1 "$work/jobs.jsonl" | wc -c) + 2000 ))

start_sink
t0=$(date +%s.%N)
/usr/sbin/smtp-source -s 10 -m "$N" -l "$msg_size" -f news@acme.example -t user@gmail.example 127.0.0.1:$SPORT
t1=$(date +%s.%N)
ceiling=$(python3 -c "print(round($N/($t1-$t0)))")

key=$(head -c 32 /dev/zero | tr '\0' 'k' | base64)
export MAILPIPE__STORE__URL="sqlite:$work/mailpipe.db" MAILPIPE__QUEUE__KIND=store
export MAILPIPE__SMTP__KIND=smtp MAILPIPE__SMTP__PORT=$SPORT MAILPIPE__SMTP__MAX_CONNECTIONS=16
export MAILPIPE__WORKER__MAX_IN_FLIGHT=256 MAILPIPE__LOG__LEVEL=warn
export MAILPIPE__TOKENS__KEYS__1="$key" MAILPIPE__TOKENS__RECIPIENT_KEY="$key" MAILPIPE__DOMAINS__KEYS__1="$key"
export MAILPIPE__METRICS__LISTEN=127.0.0.1:19466 MAILPIPE__TRACKER__LISTEN=127.0.0.1:18096
export MAILPIPE__TRACKER__PUBLIC_URL=http://127.0.0.1:18096 MAILPIPE__ANALYTICS__LISTEN=127.0.0.1:18097
export MAILPIPE__TRACKER__SPOOL_DIR="$work/spool" MAILPIPE__TRACKER__METRICS_LISTEN=127.0.0.1:19467
"$BIN" tenant add acme --allow-transactional >/dev/null
"$BIN" domain add-shared acme.example --tenants acme --attested --algorithm ed25519-sha256 >/dev/null
e0=$(date +%s.%N)
"$BIN" enqueue "$work/jobs.jsonl" >/dev/null
e1=$(date +%s.%N)
start_sink
"$BIN" serve > "$work/serve.log" 2>&1 &
serve_pid=$!
count() { python3 - "$work/mailpipe.db" "$1" <<'PY'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], timeout=30)
print(c.execute(sys.argv[2]).fetchone()[0])
PY
}
for _ in $(seq 1800); do
  done_=$(count "SELECT COUNT(*) FROM send_ledger WHERE status IN ('sent','bounced','failed','dead_lettered','suppressed')")
  [ "$done_" -ge "$N" ] && break
  kill -0 $serve_pid 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 1
done
rss=$(awk '/VmHWM/ {print int($2/1024)}' /proc/$serve_pid/status)
kill -TERM $serve_pid; wait $serve_pid || true; serve_pid=""
span=$(count "SELECT (MAX(updated_at) - MIN(updated_at)) FROM send_ledger")
sent=$(count "SELECT COUNT(*) FROM send_ledger WHERE status = 'sent'")
rate=$(python3 -c "print(round($N * 1000 / max($span, 1)))")
enq=$(python3 -c "print(round($N/($e1-$e0)))")
echo
printf '%-44s %10s\n' "what" "messages/s"
printf '%-44s %10s\n' "smtp-source into smtp-sink (the ceiling)" "$ceiling"
printf '%-44s %10s\n' "mailpipe serve, SQLite queue, Ed25519 DKIM" "$rate"
printf '%-44s %9s%%\n' "ratio" "$(python3 -c "print(round(100*$rate/$ceiling))")"
echo "$N jobs ($(head -1 "$work/jobs.jsonl" | wc -c) B each): $sent sent; enqueue wrote $enq jobs/s; serve peak RSS $rss MB"
