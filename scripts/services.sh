#!/usr/bin/env bash
# Real services for mailpipe's development and tests, without Docker.
#
#   scripts/services.sh up      install what is missing, start everything, create topics
#   scripts/services.sh down    stop everything (data is kept)
#   scripts/services.sh status  say what runs, exit 1 if anything is down
#   scripts/services.sh env     print the variables the tests read
#
# Everything listens on loopback only:
#   PostgreSQL 15     127.0.0.1:55432  (user/password/db: mailpipe)
#   Apache Kafka 4.x  127.0.0.1:59092  (single-node KRaft; controller on :59093)
#                     127.0.0.1:59094  (TLS and SASL/SCRAM, with ACLs per service)
#   smtp-sink         127.0.0.1:2525   (Postfix's test SMTP server)
#   Knot DNS          127.0.0.1:55353  (authoritative for mailpipe.test.,
#                                       RFC 2136 updates from loopback)
#
# State lives in $MAILPIPE_SERVICES_DIR (default /var/tmp/mailpipe-services),
# outside the checkout, so that every clone on this machine shares one set of
# services and the Kafka jars are resolved once.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
STATE=${MAILPIPE_SERVICES_DIR:-/var/tmp/mailpipe-services}
PG_PORT=${MAILPIPE_PG_PORT:-55432}
KAFKA_PORT=${MAILPIPE_KAFKA_PORT:-59092}
KAFKA_CONTROLLER_PORT=${MAILPIPE_KAFKA_CONTROLLER_PORT:-59093}
KAFKA_SASL_PORT=${MAILPIPE_KAFKA_SASL_PORT:-59094}
SMTP_PORT=${MAILPIPE_SMTP_PORT:-2525}
DNS_PORT=${MAILPIPE_DNS_PORT:-55353}
DNS_ZONE=mailpipe.test
PG_BIN=/usr/lib/postgresql/15/bin
KAFKA_PARTITIONS=${MAILPIPE_KAFKA_PARTITIONS:-6}

say() { printf '[services] %s\n' "$*" >&2; }
die() { printf '[services] ERROR: %s\n' "$*" >&2; exit 1; }

need_root_or_have() {
  # $1 = command that must exist, $2.. = Debian packages providing it
  local cmd=$1; shift
  command -v "$cmd" >/dev/null 2>&1 && return 0
  [ -e "$cmd" ] && return 0
  if [ "$(id -u)" != 0 ]; then
    die "$cmd is missing; install Debian packages '$*' (apt-get install $*) or run this script as root"
  fi
  say "installing $* (apt-get)"
  if [ ! -f "$STATE/.apt-updated" ]; then
    apt-get update -qq || die "apt-get update failed"
    mkdir -p "$STATE" && touch "$STATE/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

install_all() {
  mkdir -p "$STATE"
  need_root_or_have "$PG_BIN/pg_ctl" postgresql-15 postgresql-client-15
  need_root_or_have /usr/sbin/smtp-sink postfix
  need_root_or_have kcat kcat
  need_root_or_have java openjdk-17-jre-headless
  need_root_or_have mvn maven
  # librdkafka's bundled build (rdkafka-sys) needs these; no cmake.
  need_root_or_have make make
  need_root_or_have gcc gcc
  need_root_or_have perl perl
  need_root_or_have pkg-config pkg-config
  # rdkafka's "ssl" feature: librdkafka's TLS and SCRAM link the system OpenSSL.
  need_root_or_have /usr/include/openssl/ssl.h libssl-dev
  need_root_or_have curl curl
  need_root_or_have ss iproute2
  # Tests beyond the services: the STARTTLS test relay and its certificates,
  # the browser test (headless Chromium driven from Node), and the load
  # harness (wrk against the tracker and nginx).
  need_root_or_have python3 python3
  need_root_or_have openssl openssl
  need_root_or_have chromium chromium
  need_root_or_have node nodejs
  need_root_or_have wrk wrk
  need_root_or_have nginx nginx-light
  # The authoritative DNS server for the sending-domain tests, its update
  # client, and opendkim-testkey, the independent check of a published key.
  need_root_or_have /usr/sbin/knotd knot
  need_root_or_have knsupdate knot-dnsutils
  need_root_or_have /usr/sbin/opendkim-testkey opendkim-tools
  exim_install
}

# A second MTA whose bounces the tests read: Debian's Exim. Its package
# conflicts with Postfix (installing it would remove Postfix and smtp-sink),
# so it is unpacked, not installed, into $STATE/exim: the binary copied
# without its setuid bit (so that it keeps LD_LIBRARY_PATH for the one
# library Postfix's system lacks, libidn12), and the user it runs
# deliveries as. tests/src/exim.rs runs one instance per test.
exim_dir=$STATE/exim
exim_install() {
  [ -x "$exim_dir/exim4" ] && getent passwd Debian-exim >/dev/null && return 0
  if [ "$(id -u)" != 0 ]; then
    say "Exim is not unpacked in $exim_dir (run this script as root once); the Exim bounce test will fail"
    return 0
  fi
  say "unpacking Debian's Exim into $exim_dir (apt-get download; not installed: it would remove Postfix)"
  rm -rf "$exim_dir" && mkdir -p "$exim_dir/debs" "$exim_dir/root"
  [ -f "$STATE/.apt-updated" ] || { apt-get update -qq || die "apt-get update failed"; touch "$STATE/.apt-updated"; }
  (cd "$exim_dir/debs" && apt-get download -q exim4-daemon-light libidn12 >/dev/null) \
    || die "apt-get download exim4-daemon-light libidn12 failed"
  for f in "$exim_dir"/debs/*.deb; do dpkg-deb -x "$f" "$exim_dir/root" || die "dpkg-deb -x $f failed"; done
  install -m 0755 "$exim_dir/root/usr/sbin/exim4" "$exim_dir/exim4"
  getent passwd Debian-exim >/dev/null || useradd --system --user-group --no-create-home \
    --home-dir /nonexistent --shell /usr/sbin/nologin Debian-exim || die "could not add the Debian-exim user"
}

# ---------------------------------------------------------------- PostgreSQL
pg_data=$STATE/postgres
# Running means accepting connections: after a kill -9 the postmaster can
# linger as a zombie that `pg_ctl status` still counts as alive.
pg_running() { [ -f "$pg_data/postmaster.pid" ] && "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 3; }

# A lock file whose PID is gone, a zombie, or not a postgres process would
# make the new postmaster refuse to start; remove it.
pg_clear_stale_lock() {
  local lock=$pg_data/postmaster.pid pid state comm
  [ -f "$lock" ] || return 0
  pid=$(head -1 "$lock")
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  if [ -z "$state" ] || [ "$state" = Z ] || [ "$comm" != postgres ]; then
    say "removing stale PostgreSQL lock file (pid $pid is gone)"
    rm -f "$lock" "$pg_data"/.s.PGSQL.*.lock
  fi
}

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_up() {
  if [ ! -f "$pg_data/PG_VERSION" ]; then
    say "initialising PostgreSQL in $pg_data"
    mkdir -p "$pg_data"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$pg_data"
    chmod 700 "$pg_data"
    echo mailpipe > "$STATE/pgpass.tmp"
    [ "$(id -u)" = 0 ] && chown postgres "$STATE/pgpass.tmp"
    as_pg "$PG_BIN/initdb" -D "$pg_data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$STATE/initdb.log" 2>&1 || { cat "$STATE/initdb.log" >&2; die "initdb failed"; }
    rm -f "$STATE/pgpass.tmp"
  fi
  if pg_running; then say "PostgreSQL already running on :$PG_PORT"; else
    pg_clear_stale_lock
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    # fsync is off: this instance holds test data only, and is rebuilt at will.
    as_pg "$PG_BIN/pg_ctl" -D "$pg_data" -l "$pg_data/server.log" -w -t 60 start \
      -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$pg_data -c fsync=off -c full_page_writes=off -c max_connections=300 -c shared_buffers=256MB" \
      >/dev/null || { tail -20 "$pg_data/server.log" >&2; die "PostgreSQL did not start (log: $pg_data/server.log)"; }
  fi
  # Idempotent role and database.
  as_pg "$PG_BIN/../bin/psql" -h "$pg_data" -p "$PG_PORT" -U postgres -d postgres -qtA -v ON_ERROR_STOP=1 >/dev/null <<'SQL' || die "could not create the mailpipe role and database"
DO $$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe') THEN
    CREATE ROLE mailpipe LOGIN CREATEDB PASSWORD 'mailpipe';
  END IF;
  -- The roles of docs/operations.md, "Database roles": mailpipe owns the
  -- schema and runs `migrate`; the services log in as mailpipe_app, which
  -- owns nothing and holds mailpipe_service's grants (rows of every table)
  -- and mailpipe_api's (what the tenant API runs as).
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe_api') THEN
    CREATE ROLE mailpipe_api NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe_service') THEN
    CREATE ROLE mailpipe_service NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe_app') THEN
    CREATE ROLE mailpipe_app LOGIN PASSWORD 'mailpipe_app';
  END IF;
END $$;
SET client_min_messages = warning;
GRANT mailpipe_api TO mailpipe;
GRANT mailpipe_service, mailpipe_api TO mailpipe_app;
SELECT 'CREATE DATABASE mailpipe OWNER mailpipe' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'mailpipe')
\gexec
SQL
}

pg_down() {
  if pg_running; then say "stopping PostgreSQL"; as_pg "$PG_BIN/pg_ctl" -D "$pg_data" -m fast -w stop >/dev/null; fi
}

# --------------------------------------------------------------------- Kafka
kafka_dir=$STATE/kafka
kafka_cp_file=$kafka_dir/classpath
kafka_pid_file=$kafka_dir/kafka.pid

kafka_classpath() {
  # Resolve the broker jars from Maven Central once; the pom pins the version.
  local pom=$ROOT/scripts/kafka/pom.xml
  local stamp; stamp=$(sha256sum "$pom" | cut -c1-16)
  if [ ! -s "$kafka_cp_file" ] || [ "$(cat "$kafka_dir/pom.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "resolving Apache Kafka jars from Maven Central ($(grep -o '<kafka.version>[^<]*' "$pom" | cut -d'>' -f2))"
    mkdir -p "$kafka_dir"
    mvn -q -B -f "$pom" dependency:build-classpath -Dmdep.outputFile="$kafka_cp_file" \
      >"$kafka_dir/mvn.log" 2>&1 || { tail -30 "$kafka_dir/mvn.log" >&2; die "Maven could not resolve the Kafka jars (log: $kafka_dir/mvn.log)"; }
    echo "$stamp" > "$kafka_dir/pom.stamp"
  fi
  cat "$kafka_cp_file"
}

# A live PID is not enough: after an unclean stop the number may belong to
# another process by now, so the port must answer too.
kafka_running() { [ -f "$kafka_pid_file" ] && kill -0 "$(cat "$kafka_pid_file")" 2>/dev/null && port_open 127.0.0.1 "$KAFKA_PORT"; }

kafka_java() {
  java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$kafka_dir/log4j2.xml" -cp "$(kafka_classpath)" "$@"
}

# Whether something listens on the port. Asks the kernel (ss) instead of
# connecting: every port here is inside Linux's ephemeral range
# (32768-60999), and a connect to a port nobody listens on yet can pick that
# same port as its own source and connect to itself (TCP simultaneous open).
# The poll then "succeeds" and the stray socket holds the port, so the
# service starting behind it fails with "Address already in use" (seen here:
# Kafka could not bind :59092 and every topic creation timed out).
port_open() { ss -Hltn "sport = :$2" 2>/dev/null | grep -qF -e " $1:$2 " -e "[::ffff:$1]:$2 "; }

# The service ports above 32767 lie in Linux's ephemeral range, from which
# the kernel picks the source port of every outgoing connection. While a
# service is down (a restart under test), clients keep reconnecting to it,
# and one of those connects can be given the service's own port as its
# source and connect to itself (TCP simultaneous open); the socket then
# holds the port and the service cannot bind it ("Address already in
# use": seen in CI when Kafka restarted under the tests' clients). Reserved
# ports are never picked that way. A kernel setting, kept until reboot;
# needs root, as the installs do.
reserve_ports() {
  local f=/proc/sys/net/ipv4/ip_local_reserved_ports want cur
  want="$PG_PORT,$DNS_PORT,$KAFKA_PORT,$KAFKA_CONTROLLER_PORT,$KAFKA_SASL_PORT"
  cur=$(cat "$f" 2>/dev/null) || return 0
  if ! (echo "${cur:+$cur,}$want" > "$f") 2>/dev/null; then
    say "WARNING: could not reserve ports $want ($f needs root): a restarted service may find its port taken"
  fi
}

wait_port() { # host port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    port_open "$1" "$2" && return 0
    sleep 0.1
  done
  return 1
}

kafka_up() {
  mkdir -p "$kafka_dir"
  kafka_classpath >/dev/null
  cat > "$kafka_dir/log4j2.xml" <<XML
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <File name="file" fileName="$kafka_dir/server.log"><PatternLayout pattern="[%d] %p %m (%c)%n"/></File>
  </Appenders>
  <Loggers>
    <Root level="WARN"><AppenderRef ref="file"/></Root>
    <!-- Joins, rebalances and expired members: what explains a consumer group. -->
    <Logger name="org.apache.kafka.coordinator.group" level="INFO"/>
  </Loggers>
</Configuration>
XML
  kafka_tls
  cat > "$kafka_dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
# The SASL_SSL listener: TLS with the test CA's certificate, SCRAM
# principals (kafka_principals), and ACLs that give each only its topics.
# The loopback PLAINTEXT listener and the controller act as ANONYMOUS, a
# super user: the rest of the tests and the tools use them. A deployment
# would have no such listener.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$kafka_dir/tls/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$KAFKA_TLS_PASSWORD
listener.name.sasl_ssl.ssl.key.password=$KAFKA_TLS_PASSWORD
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
super.users=User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs=$kafka_dir/data
num.partitions=$KAFKA_PARTITIONS
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=24
PROPS
  # A broker started with other settings (an older checkout's) restarts.
  local stamp; stamp=$(sha256sum "$kafka_dir/server.properties" | cut -c1-16)
  if kafka_running && [ "$(cat "$kafka_dir/running.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "Kafka's settings changed; restarting it"
    kafka_down
  fi
  if kafka_running; then say "Kafka already running on :$KAFKA_PORT"; else
    if [ ! -f "$kafka_dir/data/meta.properties" ]; then
      say "formatting Kafka KRaft storage"
      local cluster_id; cluster_id=$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
      kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$kafka_dir/server.properties" \
        >"$kafka_dir/format.log" 2>&1 || { cat "$kafka_dir/format.log" >&2; die "Kafka storage format failed"; }
    fi
    say "starting Apache Kafka (KRaft) on 127.0.0.1:$KAFKA_PORT"
    nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$kafka_dir/log4j2.xml" -cp "$(kafka_classpath)" \
      kafka.Kafka "$kafka_dir/server.properties" >"$kafka_dir/stdout.log" 2>&1 &
    echo $! > "$kafka_pid_file"
    wait_port 127.0.0.1 "$KAFKA_PORT" 90 || { tail -n 30 "$kafka_dir/server.log" "$kafka_dir/stdout.log" >&2; die "Kafka did not open :$KAFKA_PORT within 90s"; }
    echo "$stamp" > "$kafka_dir/running.stamp"
  fi
  # The broker answers metadata before it is ready to create topics; retry briefly.
  local t ok
  for t in mailpipe.send.v1 mailpipe.events.v1 mailpipe.send.dlq.v1; do
    ok=
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      kill -0 "$(cat "$kafka_pid_file")" 2>/dev/null \
        || { tail -30 "$kafka_dir/server.log" >&2; die "Kafka exited while starting (its log is above)"; }
      if kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
          --create --if-not-exists --topic "$t" --partitions "$KAFKA_PARTITIONS" --replication-factor 1 \
          >>"$kafka_dir/topics.log" 2>&1; then ok=1; break; fi
      sleep 2
    done
    [ -n "$ok" ] || { tail -20 "$kafka_dir/topics.log" >&2; die "could not create topic $t"; }
  done
  say "topics ready: mailpipe.send.v1 mailpipe.events.v1 mailpipe.send.dlq.v1"
  kafka_principals
}

# The test CA and the broker's certificate (for 127.0.0.1 and localhost),
# made once. Clients trust $kafka_dir/tls/ca.pem (MAILPIPE_TEST_KAFKA_CA).
KAFKA_TLS_PASSWORD=mailpipe-test-keystore
kafka_tls() {
  local d=$kafka_dir/tls
  [ -s "$d/broker.p12" ] && [ -s "$d/ca.pem" ] && return 0
  say "making the test CA and the broker's TLS certificate"
  mkdir -p "$d"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 -subj "/CN=mailpipe test CA" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -keyout broker.key -out broker.csr -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > san.ext
    openssl x509 -req -in broker.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out broker.pem -days 3650 \
      -extfile san.ext 2>/dev/null
    openssl pkcs12 -export -in broker.pem -inkey broker.key -certfile ca.pem -name broker \
      -out broker.p12 -passout "pass:$KAFKA_TLS_PASSWORD"
  ) || die "could not make the Kafka test certificates in $d"
}

# The SASL listener's principals, one per service, and their ACLs: each may
# touch only its own topics (prefixed, so that the tests' suffixed topics
# match too) and consumer groups. Passwords are "<name>-secret": published
# here, for this loopback broker only. Done once per broker settings.
KAFKA_PRINCIPALS="mailpipe-worker mailpipe-producer mailpipe-tracker mailpipe-analytics"
kafka_principals() {
  # The broker's settings and this function's own text: a broker set up
  # before an ACL was added here gets it on the next `up`.
  local running stamp; running=$(cat "$kafka_dir/running.stamp" 2>/dev/null)
  stamp="$running-$(declare -f kafka_principals | sha256sum | cut -c1-8)"
  [ -n "$running" ] && [ "$(cat "$kafka_dir/principals.stamp" 2>/dev/null)" = "$stamp" ] && return 0
  say "creating the SASL principals and their ACLs"
  local b=127.0.0.1:$KAFKA_PORT u
  for u in $KAFKA_PRINCIPALS; do
    kafka_java kafka.admin.ConfigCommand --bootstrap-server "$b" --alter --entity-type users --entity-name "$u" \
      --add-config "SCRAM-SHA-512=[password=$u-secret]" >>"$kafka_dir/principals.log" 2>&1 \
      || { tail -20 "$kafka_dir/principals.log" >&2; die "could not create the Kafka principal $u"; }
  done
  acl() { # principal, then AclCommand's resource and operation options
    local who=$1; shift
    kafka_java org.apache.kafka.tools.AclCommand --bootstrap-server "$b" --add --allow-principal "User:$who" \
      --resource-pattern-type prefixed "$@" >>"$kafka_dir/principals.log" 2>&1 \
      || { tail -20 "$kafka_dir/principals.log" >&2; die "could not set the Kafka ACLs of $who"; }
  }
  acl mailpipe-worker --operation Read --operation Describe --topic mailpipe.send.v1 --group mailpipe-worker
  acl mailpipe-worker --operation Write --operation Describe --topic mailpipe.events.v1
  acl mailpipe-worker --operation Write --operation Describe --topic mailpipe.send.dlq.v1
  acl mailpipe-producer --operation Write --operation Describe --topic mailpipe.send.v1
  acl mailpipe-tracker --operation Write --operation Describe --topic mailpipe.events.v1
  acl mailpipe-analytics --operation Read --operation Describe --topic mailpipe.events.v1 --group mailpipe-analytics
  # The send API (POST /api/v1/messages) queues jobs as a producer does.
  acl mailpipe-analytics --operation Write --operation Describe --topic mailpipe.send.v1
  echo "$stamp" > "$kafka_dir/principals.stamp"
}

kafka_down() {
  if kafka_running; then
    say "stopping Kafka"
    local pid; pid=$(cat "$kafka_pid_file")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$kafka_pid_file"
}

# ----------------------------------------------------------------- smtp-sink
sink_pid_file=$STATE/smtp-sink.pid
sink_running() { [ -f "$sink_pid_file" ] && kill -0 "$(cat "$sink_pid_file")" 2>/dev/null && port_open 127.0.0.1 "$SMTP_PORT"; }

sink_up() {
  if sink_running; then say "smtp-sink already running on :$SMTP_PORT"; return; fi
  say "starting smtp-sink on 127.0.0.1:$SMTP_PORT"
  local user=()
  [ "$(id -u)" = 0 ] && user=(-u nobody)
  nohup /usr/sbin/smtp-sink "${user[@]}" -m 512 "127.0.0.1:$SMTP_PORT" 1024 >"$STATE/smtp-sink.log" 2>&1 &
  echo $! > "$sink_pid_file"
  wait_port 127.0.0.1 "$SMTP_PORT" 10 || { cat "$STATE/smtp-sink.log" >&2; die "smtp-sink did not open :$SMTP_PORT"; }
}

sink_down() {
  if sink_running; then say "stopping smtp-sink"; kill "$(cat "$sink_pid_file")" 2>/dev/null || true; fi
  rm -f "$sink_pid_file"
}

# ----------------------------------------------------------------- Knot DNS
dns_dir=$STATE/knot
dns_running() { [ -S "$dns_dir/run/knot.sock" ] && knotc -c "$dns_dir/knot.conf" status >/dev/null 2>&1; }

dns_up() {
  if dns_running; then say "Knot DNS already running on :$DNS_PORT"; return; fi
  mkdir -p "$dns_dir/run" "$dns_dir/db" "$dns_dir/zones"
  # Tests add and remove records under the zone with RFC 2136 updates
  # (knsupdate) from loopback; nothing is written back to the zone file, so
  # every start begins from the bare zone.
  cat > "$dns_dir/knot.conf" <<CONF
server:
    rundir: "$dns_dir/run"
    listen: [ 127.0.0.1@$DNS_PORT ]
log:
  - target: "$dns_dir/knot.log"
    any: warning
database:
    storage: "$dns_dir/db"
acl:
  - id: loopback_update
    address: 127.0.0.0/8
    action: update
template:
  - id: default
    storage: "$dns_dir/zones"
    file: "%s.zone"
    acl: loopback_update
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: $DNS_ZONE
CONF
  cat > "$dns_dir/zones/$DNS_ZONE.zone" <<ZONE
\$ORIGIN $DNS_ZONE.
\$TTL 1
@  SOA ns.$DNS_ZONE. hostmaster.$DNS_ZONE. 1 60 60 3600 1
@  NS  ns.$DNS_ZONE.
ns A   127.0.0.1
ZONE
  say "starting Knot DNS on 127.0.0.1:$DNS_PORT (zone $DNS_ZONE)"
  knotd -c "$dns_dir/knot.conf" -d || die "knotd did not start (log: $dns_dir/knot.log)"
  for _ in $(seq 1 50); do dns_running && return 0; sleep 0.1; done
  cat "$dns_dir/knot.log" >&2; die "Knot DNS did not come up (log: $dns_dir/knot.log)"
}

dns_down() {
  if dns_running; then say "stopping Knot DNS"; knotc -c "$dns_dir/knot.conf" stop >/dev/null 2>&1 || true; fi
}

print_env() {
  cat <<ENV
export MAILPIPE_TEST_DATABASE_URL=postgres://mailpipe:mailpipe@127.0.0.1:$PG_PORT/mailpipe
export MAILPIPE_TEST_SERVICE_CREDENTIALS=mailpipe_app:mailpipe_app
export MAILPIPE_TEST_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT
export MAILPIPE_TEST_KAFKA_SASL_BROKERS=127.0.0.1:$KAFKA_SASL_PORT
export MAILPIPE_TEST_KAFKA_CA=$kafka_dir/tls/ca.pem
export MAILPIPE_TEST_SMTP=127.0.0.1:$SMTP_PORT
export MAILPIPE_TEST_DNS=127.0.0.1:$DNS_PORT
export MAILPIPE_TEST_DNS_ZONE=$DNS_ZONE
export MAILPIPE_TEST_EXIM=$exim_dir
ENV
}

status() {
  local rc=0
  if pg_running; then echo "postgres  up    127.0.0.1:$PG_PORT"; else echo "postgres  down"; rc=1; fi
  if kafka_running; then echo "kafka     up    127.0.0.1:$KAFKA_PORT (SASL_SSL :$KAFKA_SASL_PORT)"; else echo "kafka     down"; rc=1; fi
  if sink_running; then echo "smtp-sink up    127.0.0.1:$SMTP_PORT"; else echo "smtp-sink down"; rc=1; fi
  if dns_running; then echo "knot-dns  up    127.0.0.1:$DNS_PORT ($DNS_ZONE)"; else echo "knot-dns  down"; rc=1; fi
  return $rc
}

case "${1:-}" in
  up) reserve_ports; install_all; pg_up; sink_up; dns_up; kafka_up; status ;;
  down) kafka_down; dns_down; sink_down; pg_down ;;
  status) status ;;
  env) print_env ;;
  restart-kafka) reserve_ports; kafka_down; kafka_up ;;
  restart-postgres) reserve_ports; pg_down; pg_up ;;
  create-topic)
    # create-topic NAME [PARTITIONS]: for load harnesses that want fresh topics.
    [ -n "${2:-}" ] || die "usage: $0 create-topic NAME [PARTITIONS]"
    kafka_java org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
      --create --if-not-exists --topic "$2" --partitions "${3:-$KAFKA_PARTITIONS}" --replication-factor 1 >/dev/null \
      || die "could not create topic $2" ;;
  *) echo "usage: $0 up|down|status|env|restart-kafka|restart-postgres|create-topic NAME [PARTITIONS]" >&2; exit 2 ;;
esac
