#!/usr/bin/env bash
# Load test of the tracker against nginx, in the same run on this machine:
# wrk on the pixel and click endpoints (the tracker on PostgreSQL + Kafka,
# as deployed), and on nginx serving the same GIF as a static file. Prints
# requests/s, p99 latency, the ratio to nginx (the faster of a run before
# and a run after the tracker's), whether every answered
# request has its event once the spool drains, and the tracker's peak RSS.
#
#   scripts/bench/tracker.sh            # 15 s per run, 64 connections
#   DUR=30s CONN=128 scripts/bench/tracker.sh
#   RATE=30000 DUR=60s scripts/bench/tracker.sh   # paced: each connection
#                                         # waits between requests so that
#                                         # the total is about RATE/s; prints
#                                         # the spool's size through the run
#   MAILPIPE_BIN=/tmp/mailpipe-old scripts/bench/tracker.sh  # another build
#   SYNC_MS=0 scripts/bench/tracker.sh    # tracker.spool_sync_ms (default:
#                                         # config/default.toml; 0 = fdatasync
#                                         # before answering)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}
DUR=${DUR:-15s}
CONN=${CONN:-64}
THREADS=${THREADS:-2}
RATE=${RATE:-}
SYNC_MS=${SYNC_MS:-$(awk -F' *= *' '$1 == "spool_sync_ms" {print $2}' config/default.toml)}

scripts/services.sh up >/dev/null 2>&1 || scripts/services.sh up
eval "$(scripts/services.sh env)"
# Counts as the platform sees them: row-level security shows a session that
# does not say whose rows it reads none (docs/security.md, "The database").
platform_psql() { PGOPTIONS="-c mailpipe.scope=platform" psql -tA "$1" -c "$2"; }
# MAILPIPE_BIN: another build of the tracker, for an A/B of two builds
# run alternately (nginx is measured either way).
if [ -z "${MAILPIPE_BIN:-}" ]; then cargo build --release -p mailpipe -q; fi
BIN=${MAILPIPE_BIN:-$CARGO_TARGET_DIR/release/mailpipe}

work=$(mktemp -d /var/tmp/mailpipe-bench.XXXX)
db="bench_$(date +%s)"
psql -q "$MAILPIPE_TEST_DATABASE_URL" -c "CREATE DATABASE $db" >/dev/null
DB_URL="${MAILPIPE_TEST_DATABASE_URL%/*}/$db"
KEY=$(head -c 32 /dev/urandom | base64)
TPORT=18090
NPORT=18091
MPORT=18092

tracker_pid=""
nginx_pid=""
cleanup() {
  [ -n "$tracker_pid" ] && kill "$tracker_pid" 2>/dev/null || true
  [ -n "$nginx_pid" ] && kill "$nginx_pid" 2>/dev/null || true
  psql -q "$MAILPIPE_TEST_DATABASE_URL" -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# As a deployment runs: the services as the role that owns nothing.
export MAILPIPE__STORE__URL=${DB_URL/\/\/*@/\/\/$MAILPIPE_TEST_SERVICE_CREDENTIALS@}
export MAILPIPE__STORE__OWNER_URL=$DB_URL
export MAILPIPE__QUEUE__KIND=kafka
export MAILPIPE__QUEUE__KAFKA__BROKERS=$MAILPIPE_TEST_KAFKA_BROKERS
export MAILPIPE__TOKENS__KEYS__1=$KEY
export MAILPIPE__TOKENS__RECIPIENT_KEY=$KEY
export MAILPIPE__TRACKER__LISTEN=127.0.0.1:$TPORT
export MAILPIPE__TRACKER__PUBLIC_URL=http://127.0.0.1:$TPORT
export MAILPIPE__TRACKER__SPOOL_DIR=$work/spool
export MAILPIPE__TRACKER__SPOOL_SYNC_MS=$SYNC_MS
export MAILPIPE__METRICS__LISTEN=127.0.0.1:0
export MAILPIPE__TRACKER__METRICS_LISTEN=127.0.0.1:$MPORT
export MAILPIPE__LOG__LEVEL=warn
"$BIN" migrate >/dev/null
"$BIN" tracker > "$work/tracker.log" 2>&1 &
tracker_pid=$!

# nginx: the same 43-byte GIF as a static file, two workers like the
# tracker's two runtime threads.
mkdir -p "$work/www"
printf 'GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b' > "$work/www/pixel.gif"
cat > "$work/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  server {
    listen 127.0.0.1:$NPORT;
    location / { root $work/www; try_files /pixel.gif =404; default_type image/gif; add_header Cache-Control no-store; }
  }
}
CONF
nginx -c "$work/nginx.conf" -e "$work/nginx.err" &
nginx_pid=$!

for p in $TPORT $NPORT; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done

open=$(python3 scripts/bench/mint_token.py "$KEY" open)
click=$(python3 scripts/bench/mint_token.py "$KEY" click "https://shop.example/item/42?utm_source=mail")

# CPU seconds used so far by a set of processes (utime + stime).
cpu_of() { # pid...
  local ticks=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    ticks=$((ticks + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat")))
  done
  echo "$ticks"
}
kafka_pids() { pgrep -f 'kafka\.Kafka' || true; }
pg_pids() { pgrep -u postgres || pgrep -f 'postgres' || true; }
# Where the two cores went during a run: "tracker/kafka/postgres/other" in
# CPU-seconds, from /proc; "other" is wrk and the rest of the machine.
CPU_SPLIT=""
cpu_snapshot() {
  echo "$(cpu_of "$tracker_pid") $(cpu_of $(kafka_pids)) $(cpu_of $(pg_pids)) $(awk '/^cpu / {print $2+$3+$4+$7+$8}' /proc/stat)"
}
cpu_split() { # before after
  local hz; hz=$(getconf CLK_TCK)
  read -r t0 k0 p0 a0 <<<"$1"; read -r t1 k1 p1 a1 <<<"$2"
  local t=$((t1 - t0)) k=$((k1 - k0)) p=$((p1 - p0)) a=$((a1 - a0))
  python3 -c "h=$hz; print(f'tracker {$t/h:.1f} s, kafka {$k/h:.1f} s, postgres {$p/h:.1f} s, other (wrk, kernel) {($a-$t-$k-$p)/h:.1f} s')"
}

# Paced runs: wrk's delay() is whole milliseconds, so each request waits
# the floor or the ceiling of the per-connection interval, at random, in
# the proportion that makes the mean right. The rate reached is a little
# under RATE (the answer's latency adds to each interval); wrk reports it.
pace_script() { # name -> path of a wrk script, or nothing when not paced
  [ -n "$RATE" ] && [[ $1 != nginx* ]] || return 0
  python3 - "$CONN" "$RATE" > "$work/pace.lua" <<'PY'
import sys
conn, rate = int(sys.argv[1]), float(sys.argv[2])
interval = conn * 1000.0 / rate
low = int(interval)
print(f"local low, p = {low}, {interval - low:.4f}")
print("function delay() if math.random() < p then return low + 1 end return low end")
PY
  echo "$work/pace.lua"
}

# The spool's size on disk every second while a run lasts: "max last" MB.
spool_watch() { # name: runs until killed, writing $work/$1.spool
  local max=0 now
  while :; do
    now=$(du -sb "$work/spool" 2>/dev/null | awk '{print $1}')
    [ "${now:-0}" -gt "$max" ] && max=$now
    echo "$max ${now:-0}" > "$work/$1.spool.tmp" && mv "$work/$1.spool.tmp" "$work/$1.spool"
    sleep 1
  done
}

run() { # name url -> "rps p99_ms requests non2xx3xx"
  local out before script watcher
  script=$(pace_script "$1")
  spool_watch "$1" & watcher=$!
  before=$(cpu_snapshot)
  out=$(wrk -t"$THREADS" -c"$CONN" -d"$DUR" --latency ${script:+-s "$script"} -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0" "$2")
  kill "$watcher" 2>/dev/null; wait "$watcher" 2>/dev/null || true
  echo "$out" > "$work/$1.wrk"
  cpu_split "$before" "$(cpu_snapshot)" > "$work/$1.cpu"
  local rps p99 reqs bad
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  reqs=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx or 3xx/ {print $NF}' <<<"$out")
  echo "$rps $p99 $reqs ${bad:-0}"
}

# Waits until the tracker has shipped $1 events to the store and Kafka
# (its own counter: a COUNT(*) of the table every second would cost
# PostgreSQL more than the inserts it waits for); prints how many seconds
# that took. The total stored is checked by a count at the end.
shipped() {
  curl -fsS "http://127.0.0.1:$MPORT/metrics" 2>/dev/null |
    awk '$1 == "mailpipe_tracker_events_written_total" {n = $2} END {printf "%d", n}'
}
drain() {
  local t0; t0=$(date +%s%N)
  for _ in $(seq 1200); do
    [ "$(shipped)" -ge "$1" ] && break
    sleep 0.25
  done
  python3 -c "print(f'{($(date +%s%N) - $t0) / 1e9:.1f}')"
}

# Writes back dirty pages before a run. On this machine PostgreSQL and
# Kafka share the tracker's disk (they would not in a deployment), and the
# kernel flushing the last drain's writes in the middle of a run stalls the
# spool's fdatasync behind them.
settle() { sync; sleep 1; }

# nginx runs first and last, and the ratio is taken against the faster of
# the two: its rate moves by a quarter between runs on this VM.
settle
read -r n1_rps n1_p99 _ _ <<<"$(run nginx "http://127.0.0.1:$NPORT/o/$open")"
settle
read -r o_rps o_p99 o_reqs o_bad <<<"$(run pixel "http://127.0.0.1:$TPORT/o/$open")"
# The click run starts only once the pixel run's events are shipped, so
# that it does not share the two cores with that backlog.
before=$(cpu_snapshot)
pixel_drain=$(drain $(( o_reqs - o_bad )))
cpu_split "$before" "$(cpu_snapshot)" > "$work/pixel-drain.cpu"
settle
read -r c_rps c_p99 c_reqs c_bad <<<"$(run click "http://127.0.0.1:$TPORT/c/$click")"
answered=$(( o_reqs - o_bad + c_reqs - c_bad ))
before=$(cpu_snapshot)
click_drain=$(drain "$answered")
cpu_split "$before" "$(cpu_snapshot)" > "$work/click-drain.cpu"
settle
read -r n2_rps n2_p99 _ _ <<<"$(run nginx2 "http://127.0.0.1:$NPORT/o/$open")"
n_rps=$(python3 -c "print(max($n1_rps, $n2_rps))")

stored=$(platform_psql "$DB_URL" "SELECT COUNT(*) FROM events")
rss_kb=$(awk '/VmHWM/ {print $2}' "/proc/$tracker_pid/status")
ratio() { python3 -c "print(f'{$1/$2:.0%}')"; }

printf '\nmachine: %s, %s cores; wrk -t%s -c%s -d%s; tracker.spool_sync_ms = %s%s\n\n' "$(uname -m)" "$(nproc)" "$THREADS" "$CONN" "$DUR" "$SYNC_MS" "${RATE:+; tracker runs paced at about $RATE requests/s}"
printf '| target | requests/s | p99 latency | vs nginx |\n|---|---|---|---|\n'
printf '| nginx, static GIF (first run) | %s | %s | %s |\n' "$n1_rps" "$n1_p99" "$(ratio "$n1_rps" "$n_rps")"
printf '| nginx, static GIF (last run) | %s | %s | %s |\n' "$n2_rps" "$n2_p99" "$(ratio "$n2_rps" "$n_rps")"
printf '| tracker /o (pixel) | %s | %s | %s |\n' "$o_rps" "$o_p99" "$(ratio "$o_rps" "$n_rps")"
printf '| tracker /c (click) | %s | %s | %s |\n' "$c_rps" "$c_p99" "$(ratio "$c_rps" "$n_rps")"
printf '\nanswered (counted by wrk) %s, non-2xx/3xx %s; events stored after drain %s\n' "$answered" "$((o_bad + c_bad))" "$stored"
printf '\nCPU used during each run (2 cores = %s CPU-seconds per run):\n' "$(( 2 * ${DUR%s} ))"
for r in nginx pixel click nginx2; do printf '  %-6s %s\n' "$r" "$(cat "$work/$r.cpu")"; done
printf 'tracker peak RSS: %s MB\n' "$((rss_kb / 1024))"
mb() { python3 -c "print(f'{$1 / 1048576:.1f}')"; }
for r in pixel click; do
  read -r smax slast < "$work/$r.spool"
  printf 'spool during the %s run: at most %s MB, %s MB at its end\n' "$r" "$(mb "$smax")" "$(mb "$slast")"
done
printf 'shipping the spool to PostgreSQL and Kafka after each run: %s s (pixel), %s s (click)\n' "$pixel_drain" "$click_drain"
printf 'CPU used while the rest of the spool shipped after each run:\n'
for r in pixel-drain click-drain; do printf '  %-12s %s\n' "$r" "$(cat "$work/$r.cpu")"; done
# wrk stops counting at its deadline while up to one request per connection
# is still in flight; the tracker answers (and records) those too.
extra=$((stored - answered))
if [ "$extra" -lt 0 ] || [ "$extra" -gt $((2 * CONN)) ]; then
  echo "MISMATCH: $stored events for $answered answered requests" >&2; exit 1
fi
printf 'every answered request has its event (%s more for requests in flight when wrk stopped)\n' "$extra"
