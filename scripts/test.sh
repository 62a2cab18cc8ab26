#!/usr/bin/env bash
# The README's test command. On a fresh Debian machine it installs what the
# tests need (apt packages, the Kafka jars through Maven), starts PostgreSQL,
# Kafka and smtp-sink on loopback, then runs formatting, lints and every test
# against those real services. Safe to run again: each step is idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

# One build directory per machine, shared by every clone (CI's included), so
# the bundled librdkafka and SQLite C builds happen once, not per checkout.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# Incremental state is per checkout path and grows without bound on a
# shared build directory; CI gains nothing from it.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

step() { printf '\n==> %s\n' "$*"; }

step "services (install if missing, start, create topics)"
scripts/services.sh up
eval "$(scripts/services.sh env)"

step "independent DKIM verifier for the tests (dkimpy, from PyPI)"
if ! python3 -c "import dkim, nacl, dns.resolver" 2>/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore dkimpy pynacl dnspython
fi

step "dependencies: licences, bans and sources (cargo deny, deny.toml)"
# Pinned: a newer cargo-deny may need a newer compiler than this one.
if ! cargo deny --version 2>/dev/null | grep -q "^cargo-deny 0.20.2$"; then
  cargo install --locked cargo-deny --version 0.20.2
fi
cargo deny --log-level error check licenses bans sources

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo test (unit, integration against real Kafka/PostgreSQL/smtp-sink, CLI, demo)"
# A test binary killed by a signal (a C library's crash under it) leaves a
# core, and scripts/cores.sh prints its threads' backtraces, instead of a
# bare "signal 11" that no rerun explains.
ulimit -c unlimited 2>/dev/null || true
marker=$(mktemp)
tests_rc=0
cargo test --workspace --locked --no-fail-fast || tests_rc=$?
if [ "$tests_rc" -ne 0 ]; then
  scripts/cores.sh "$marker"
fi
rm -f "$marker"
[ "$tests_rc" -eq 0 ] || exit "$tests_rc"

step "docker/docker-compose.yml: compose-go accepts it, its services pass check-config"
cargo build --locked -q -p mailpipe
scripts/check-compose.sh
