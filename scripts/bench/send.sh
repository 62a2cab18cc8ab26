#!/usr/bin/env bash
# End-to-end send throughput, against this machine's own ceilings, in one run:
#   1. Postfix's smtp-source pushes N messages of the same size into a
#      private smtp-sink over reused connections: the SMTP ceiling.
#   2. One core signing with RSA-2048 (mail-auth on aws-lc-rs), from the criterion bench:
#      the DKIM ceiling.
#   3. N jobs of ~10 KB personalised HTML with 5 links, over 5 domains, are
#      produced to Kafka; the release worker renders, (optionally) signs and
#      delivers them to the same kind of smtp-sink. Messages/s is measured
#      from the first job claimed to the last outcome recorded (ledger
#      timestamps), signing with Ed25519 and with RSA-2048 DKIM (every
#      message is signed: its From domain is a verified sending domain).
# Prints a table with the ratios and the worker's peak RSS.
#
#   scripts/bench/send.sh            # N=50000
#   N=10000 scripts/bench/send.sh
#   CONNS=48 scripts/bench/send.sh   # SMTP connections of the worker (default 16)
#   IN_FLIGHT=512 scripts/bench/send.sh   # the worker's max_in_flight (default 256)
#   PREFETCH_KIB=65536 scripts/bench/send.sh   # the consumer's prefetch (default 8192)
#   ONLY=inproc N=5000 scripts/bench/send.sh    # one worker run (ed25519, inproc or rsa), its
#                                               # rate and steps only, no table: for a quick look
#   BENCH_SQL="ALTER TABLE ..." scripts/bench/send.sh  # run on each case's new database first
# Each case also prints its CPU per message by process (scripts/bench/cpu_budget.py).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}
N=${N:-50000}
PARTS=${PARTS:-6}

scripts/services.sh up >/dev/null 2>&1 || scripts/services.sh up
eval "$(scripts/services.sh env)"
# Counts as the platform sees them: row-level security shows a session that
# does not say whose rows it reads none (docs/security.md, "The database").
platform_psql() { PGOPTIONS="-c mailpipe.scope=platform" psql -tA "$1" -c "$2"; }
cargo build --release -p mailpipe -q
# MAILPIPE_BIN: another build of the worker, for an A/B of two builds run
# alternately (the SMTP and signing ceilings are measured either way).
BIN=${MAILPIPE_BIN:-$CARGO_TARGET_DIR/release/mailpipe}
work=$(mktemp -d /var/tmp/mailpipe-send.XXXX)
sink_pid=""
worker_pid=""
cleanup() {
  [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null || true
  [ -n "$sink_pid" ] && kill "$sink_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

SPORT=12525
MPORT=19464
start_sink() {
  [ -n "$sink_pid" ] && { kill "$sink_pid" 2>/dev/null || true; wait "$sink_pid" 2>/dev/null || true; }
  local u=()
  [ "$(id -u)" = 0 ] && u=(-u nobody)
  /usr/sbin/smtp-sink "${u[@]}" -c 127.0.0.1:$SPORT 1024 >/dev/null 2>&1 &
  sink_pid=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$SPORT) 2>/dev/null && return; sleep 0.1; done
}

echo "generating $N jobs..." >&2
python3 scripts/bench/gen_jobs.py "$N" bench > "$work/jobs.jsonl"
msg_size=$(( $(head -1 "$work/jobs.jsonl" | wc -c) + 2000 ))

# 1. The SMTP ceiling: smtp-source, 10 sessions, reused connections.
start_sink
t0=$(date +%s.%N)
/usr/sbin/smtp-source -s 10 -m "$N" -l "$msg_size" -f news@acme.example -t user@gmail.example 127.0.0.1:$SPORT
t1=$(date +%s.%N)
ceiling=$(python3 -c "print(round($N/($t1-$t0)))")
echo "smtp-source: $ceiling messages/s" >&2

# 2. One core's RSA-2048 signing rate, measured now.
rsa_ns=$(cargo bench -q -p mailpipe-benches --bench hot_paths -- dkim/sign_rsa2048 --noplot 2>/dev/null \
  | awk '/time:/ {gsub(/\[/,""); for (i = 1; i <= NF; i++) if ($i == "time:") { v = $(i+3); u = $(i+4) }
      if (u == "ms") v *= 1e6; else if (u == "ns") v *= 1; else if (u == "s") v *= 1e9; else v *= 1e3; print v; exit}')
rsa_rate=$(python3 -c "print(round(1e9/$rsa_ns))")
echo "RSA-2048 signing, one core: $rsa_rate/s" >&2

# 3. The worker.
run_worker() { # label algorithm [isolation]; sets RESULT="rate rss_mb sent sandboxes_rss_mb"
  local label=$1 algorithm=$2 isolation=${3:-process} ts db topic
  ts=$(date +%s%N)
  db="send_${label}_$ts"
  topic="bench.send.$label.$ts"
  psql -q "$MAILPIPE_TEST_DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
  scripts/services.sh create-topic "$topic" "$PARTS"
  local cfg="$work/$label.toml"
  : > "$cfg"
  local url="${MAILPIPE_TEST_DATABASE_URL%/*}/$db"
  local key
  key=$(head -c 32 /dev/zero | tr '\0' 'k' | base64)
  local -a envv=(
    # As a deployment runs: the services as the role that owns nothing.
    MAILPIPE__STORE__URL="${url/\/\/*@/\/\/$MAILPIPE_TEST_SERVICE_CREDENTIALS@}" MAILPIPE__STORE__OWNER_URL="$url"
    MAILPIPE__QUEUE__KIND=kafka MAILPIPE__QUEUE__KAFKA__BROKERS="$MAILPIPE_TEST_KAFKA_BROKERS"
    MAILPIPE__QUEUE__KAFKA__SEND_TOPIC="$topic" MAILPIPE__QUEUE__KAFKA__GROUP_ID="bench-$ts"
    MAILPIPE__SMTP__KIND=smtp MAILPIPE__SMTP__PORT=$SPORT MAILPIPE__SMTP__MAX_CONNECTIONS=${CONNS:-16}
    MAILPIPE__WORKER__MAX_IN_FLIGHT=${IN_FLIGHT:-256}
    MAILPIPE__QUEUE__KAFKA__CONSUMER_PREFETCH_KIB=${PREFETCH_KIB:-8192}
    MAILPIPE__TOKENS__KEYS__1="$key" MAILPIPE__TOKENS__RECIPIENT_KEY="$key" MAILPIPE__DOMAINS__KEYS__1="$key"
    MAILPIPE__METRICS__LISTEN=127.0.0.1:$MPORT MAILPIPE__LOG__LEVEL=warn
    MAILPIPE__RENDER__ISOLATION="$isolation"
  )
  env "${envv[@]}" "$BIN" --config "$cfg" migrate >/dev/null
  # BENCH_SQL: statements run on the new database before the worker starts,
  # as its owner (an A/B of a storage setting or an index).
  [ -z "${BENCH_SQL:-}" ] || psql -q "$url" -c "$BENCH_SQL" >/dev/null
  env "${envv[@]}" "$BIN" --config "$cfg" tenant add acme --allow-transactional >/dev/null
  # The jobs' From domain, the platform's, attested (no DNS to check here).
  env "${envv[@]}" "$BIN" --config "$cfg" domain add-shared acme.example --tenants acme --attested \
    --algorithm "$algorithm" >/dev/null
  local e0=$SECONDS
  env "${envv[@]}" "$BIN" --config "$cfg" enqueue "$work/jobs.jsonl" >/dev/null
  echo "$label: $N jobs enqueued in $((SECONDS - e0)) s" >&2
  # The topic's log bytes on the broker (lz4 batches, as enqueue sends them;
  # not its index files, which the broker allocates ahead).
  local topic_bytes
  topic_bytes=$(du -scb "${MAILPIPE_SERVICES_DIR:-/var/tmp/mailpipe-services}/kafka/data/$topic"-*/*.log 2>/dev/null | awk 'END {print $1}')
  echo "$label topic bytes per job on the broker: $((${topic_bytes:-0} / N)) B (the job JSON: $(head -1 "$work/jobs.jsonl" | wc -c) B)" >> "$work/steps.txt"
  start_sink
  # WAL written during the run (the cluster's; nothing else writes much meanwhile).
  local wal0
  wal0=$(psql -tA "$MAILPIPE_TEST_DATABASE_URL" -c "SELECT pg_current_wal_lsn()")
  # Every process's CPU from here to the last outcome: what a message costs
  # the worker, PostgreSQL, smtp-sink and Kafka (steadier than the rate on a
  # shared machine).
  python3 scripts/bench/cpu_budget.py snap "$work/cpu.json"
  env "${envv[@]}" "$BIN" --config "$cfg" worker > "$work/$label.log" 2>&1 &
  worker_pid=$!
  # Waits for every job's outcome. The worker's own counters are read
  # while it runs (one HTTP request a second), and the ledger only once
  # they say all are done: a psql a second (a new connection, SCRAM, a
  # fresh backend and a count over the growing ledger) took 2-3% of the
  # two cores from the run it was measuring.
  local finished=0 counted
  for i in $(seq 1800); do
    # awk prints 0 when curl gets nothing (the worker still starting);
    # curl's failure is then the pipeline's, which must not end the script.
    counted=$(curl -fsS --max-time 5 "http://127.0.0.1:$MPORT/metrics" 2>/dev/null \
      | awk '/^mailpipe_jobs_total\{/ && /outcome="(sent|bounced|failed|dead_lettered|suppressed)"/ {s += $NF} END {print int(s)}') || true
    # The ledger is the record: asked when the counters say all are done,
    # every 30 s whatever they say, and when the worker has died.
    local alive=1
    kill -0 "$worker_pid" 2>/dev/null || alive=0
    if [ "${counted:-0}" -ge "$N" ] || [ $((i % 30)) = 0 ] || [ $alive = 0 ]; then
      finished=$(platform_psql "$url" "SELECT COUNT(*) FROM send_ledger WHERE status IN ('sent','bounced','failed','dead_lettered','suppressed')")
      [ "$finished" -ge "$N" ] && break
      if [ $alive = 0 ]; then
        echo "$label: the worker exited with $finished of $N jobs finished; its log:" >&2
        tail -n 20 "$work/$label.log" >&2
        exit 1
      fi
    fi
    sleep 1
  done
  python3 scripts/bench/cpu_budget.py report "$work/cpu.json" "$finished" "$label" "$worker_pid" >> "$work/steps.txt" || true
  # Where a job's time went: the mean of each step (mailpipe_step_seconds).
  curl -fsS "http://127.0.0.1:$MPORT/metrics" 2>/dev/null | python3 -c '
import re, sys
sums, counts, rows, batches, secs = {}, {}, {}, {}, {}
for line in sys.stdin:
    m = re.match(r"mailpipe_step_seconds_(sum|count)\{step=\"(\w+)\"\} (\S+)", line)
    if m:
        (sums if m[1] == "sum" else counts)[m[2]] = float(m[3])
    m = re.match(r"mailpipe_ledger_batch_rows_(sum|count)\{op=\"(\w+)\"\} (\S+)", line)
    if m:
        (rows if m[1] == "sum" else batches)[m[2]] = float(m[3])
    m = re.match(r"mailpipe_ledger_batch_seconds_sum\{op=\"(\w+)\"\} (\S+)", line)
    if m:
        secs[m[1]] = float(m[2])
steps = [s for s in ("claim", "pace", "render", "sign", "smtp", "settle") if counts.get(s)]
print("'"$label"' steps, mean per job (concurrent, so they add up to more than 1/rate): " +
      ", ".join(f"{s} {sums[s] / counts[s] * 1e3:.2f} ms" for s in steps) +
      "; ledger batches: " + ", ".join(f"{op} {rows[op] / batches[op]:.1f} rows in {secs.get(op, 0) / batches[op] * 1e3:.2f} ms" for op in sorted(rows) if batches.get(op)))
' >> "$work/steps.txt" || true
  local rss sent span sandboxes=0 child ticks
  rss=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$worker_pid/status")
  # CPU time (user + system, clock ticks) of the worker and of its render
  # sandboxes, which are alive, so not in the worker's own count.
  cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat" 2>/dev/null || echo 0; }
  ticks=$(cpu_ticks "$worker_pid")
  # The render sandboxes, the worker's children: their peaks, summed.
  for child in $(pgrep -P "$worker_pid" || true); do
    sandboxes=$((sandboxes + $(awk '/VmHWM/ {print int($2/1024)}' "/proc/$child/status" 2>/dev/null || echo 0)))
    ticks=$((ticks + $(cpu_ticks "$child")))
  done
  kill "$worker_pid"; wait "$worker_pid" 2>/dev/null || true
  worker_pid=""
  sent=$(platform_psql "$url" "SELECT COUNT(*) FROM send_ledger WHERE status = 'sent'")
  span=$(platform_psql "$url" "SELECT (MAX(updated_at) - MIN(created_at)) FROM send_ledger")
  # What each message costs the database, for docs/capacity.md: table and
  # index bytes of the ledger and of events, and WAL, per message sent.
  # A partitioned table's own size is none, its partitions' is all (an
  # older build's ledger is a plain table: its own size, no partitions).
  local size="(pg_total_relation_size('TABLE') + (SELECT COALESCE(SUM(pg_total_relation_size(inhrelid)), 0) FROM pg_inherits WHERE inhparent = 'TABLE'::regclass))"
  platform_psql "$url" "SELECT '$label storage per message sent: ledger ' || ${size//TABLE/send_ledger} / $sent
      || ' B, events ' || ${size//TABLE/events} / $sent || ' B (' || (SELECT COUNT(*) FROM events) || ' events of ' || (SELECT AVG(length(payload))::int FROM events) || ' B JSON each), WAL '
      || pg_wal_lsn_diff(pg_current_wal_lsn(), '$wal0') / $sent || ' B; ledger updates HOT: '
      || (SELECT round(100.0 * SUM(n_tup_hot_upd) / NULLIF(SUM(n_tup_upd), 0)) FROM pg_stat_user_tables WHERE relname LIKE 'send_ledger%') || '%'" >> "$work/steps.txt" 2>/dev/null || true
  psql -q "$MAILPIPE_TEST_DATABASE_URL" -c "DROP DATABASE $db" >/dev/null
  local cpu_s
  cpu_s=$(python3 -c "print(max($ticks, 1) / $(getconf CLK_TCK))")
  RESULT="$(python3 -c "print(round($sent*1000/max($span,1)))") $rss $sent $sandboxes $(python3 -c "print(round($sent/$cpu_s))") $cpu_s"
}
if [ -n "${ONLY:-}" ]; then
  case $ONLY in ed25519) run_worker ed25519 ed25519-sha256 ;; inproc) run_worker inproc ed25519-sha256 none ;;
    rsa) run_worker rsa rsa-sha256 ;; *) echo "ONLY: ed25519, inproc or rsa" >&2; exit 2 ;; esac
  read -r rate rss sent _ per_cpu _ <<<"$RESULT"
  echo "$ONLY: $rate messages/s ($sent sent), $per_cpu per CPU-second, peak RSS $rss MB; SMTP ceiling $ceiling/s"
  cat "$work/steps.txt"
  exit 0
fi
run_worker ed25519 ed25519-sha256; read -r plain plain_rss plain_sent plain_sandboxes plain_cpu plain_cpu_s <<<"$RESULT"
echo "worker with Ed25519 DKIM: $plain messages/s, $plain_cpu per CPU-second" >&2
run_worker inproc ed25519-sha256 none; read -r inproc inproc_rss inproc_sent _ inproc_cpu inproc_cpu_s <<<"$RESULT"
echo "worker with Ed25519 DKIM, templates rendered in the worker: $inproc messages/s, $inproc_cpu per CPU-second" >&2
run_worker rsa rsa-sha256; read -r dkim dkim_rss dkim_sent _ dkim_cpu dkim_cpu_s <<<"$RESULT"
echo "worker with RSA-2048 DKIM: $dkim messages/s, $dkim_cpu per CPU-second" >&2
pct() { python3 -c "print(f'{$1/$2:.0%}')"; }
printf '\nmachine: %s, %s cores; N=%s jobs of ~%s bytes, 5 links, 5 domains, %s partitions; the worker on %s SMTP connections, smtp-source on 10\n\n' \
  "$(uname -m)" "$(nproc)" "$N" "$msg_size" "$PARTS" "${CONNS:-16}"
printf '| measure | messages/s | ratio | floor |\n|---|---|---|---|\n'
printf '| smtp-source → smtp-sink (SMTP ceiling) | %s | 100%% | |\n' "$ceiling"
printf '| one core signing RSA-2048 (DKIM ceiling) | %s | 100%% | |\n' "$rsa_rate"
printf '| worker, Ed25519 DKIM (%s sent) | %s | %s of SMTP ceiling | 30%% |\n' "$plain_sent" "$plain" "$(pct "$plain" "$ceiling")"
printf '| worker, Ed25519 DKIM, templates in the worker (render.isolation = none; %s sent) | %s | %s of SMTP ceiling | |\n' "$inproc_sent" "$inproc" "$(pct "$inproc" "$ceiling")"
printf '| worker, RSA-2048 DKIM (%s sent) | %s | %s of one core signing | 70%% |\n' "$dkim_sent" "$dkim" "$(pct "$dkim" "$rsa_rate")"
printf '\nmessages per worker CPU-second (worker and its render sandboxes, user + system; steadier than messages/s on a shared VM): %s with Ed25519 (%s CPU-s), %s with templates in the worker (%s CPU-s), %s with RSA-2048 (%s CPU-s)\n' \
  "$plain_cpu" "$plain_cpu_s" "$inproc_cpu" "$inproc_cpu_s" "$dkim_cpu" "$dkim_cpu_s"
printf '\nworker peak RSS (consumer prefetch %s KiB): %s MB with Ed25519 (its render sandboxes: %s MB together), %s MB with templates in the worker, %s MB with RSA-2048\n' \
  "${PREFETCH_KIB:-8192}" "$plain_rss" "$plain_sandboxes" "$inproc_rss" "$dkim_rss"
printf 'sandbox cost: templates in sandboxes run at %s of the rate with templates in the worker\n' "$(pct "$plain" "$inproc")"
[ -s "$work/steps.txt" ] && { printf '\n'; cat "$work/steps.txt"; }
