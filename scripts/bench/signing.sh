#!/usr/bin/env bash
# DKIM signing against the hardware's rate, in one run (issue 16, item 3):
#   - `openssl speed rsa2048` on one core: the reference;
#   - RSA-2048 PKCS#1 v1.5 signatures by each Rust backend (ring, aws-lc-rs,
#     RustCrypto's rsa) over a DKIM-sized header block;
#   - DKIM as the worker signs (mail-auth on aws-lc-rs) over the composed
#     10 KB message, RSA-2048 and Ed25519.
# Prints each rate and its ratio to openssl's.
#
#   scripts/bench/signing.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}

cargo bench -q -p mailpipe-benches --bench hot_paths --no-run 2>/dev/null
out=$(cargo bench -q -p mailpipe-benches --bench hot_paths -- 'dkim/|rsa2048_backends/' --noplot 2>/dev/null)
openssl_rate=$(openssl speed -seconds 4 rsa2048 2>/dev/null | awk '/^rsa 2048 bits/ {print $(NF-1)}')

# Criterion prints "name time: [low median high]", the name sometimes on a line of its own.
echo "$out" | OPENSSL="$openssl_rate" python3 -c '
import os, re, sys
text = sys.stdin.read()
unit = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
openssl = float(os.environ["OPENSSL"])
print("%-44s %10s %10s" % ("signer", "per second", "of openssl"))
print("%-44s %10.0f %9.0f%%" % ("openssl speed rsa2048 (one core)", openssl, 100))
for m in re.finditer(r"^((?:dkim|rsa2048_backends)/\S+)\s+time:\s+\[\S+ \S+ (\S+) (\S+)", text, re.M):
    rate = 1 / (float(m.group(2)) * unit[m.group(3)])
    ratio = "%9.0f%%" % (100 * rate / openssl) if "rsa" in m.group(1) else ""
    print("%-44s %10.0f %10s" % (m.group(1), rate, ratio))
'
