#!/usr/bin/env bash
# Checks docker/docker-compose.yml without a Docker engine:
#  1. compose-go (the loader behind `docker compose config`) must accept it;
#  2. every service built from docker/Dockerfile must run a real mailpipe
#     subcommand, and its environment must pass `mailpipe check-config`
#     (so a renamed config key breaks this check, not a deployment);
#  3. the topics service must run `mailpipe topics`, which creates the
#     config's topics with their retention.
# Usage: scripts/check-compose.sh [path/to/mailpipe]
set -euo pipefail
cd "$(dirname "$0")/.."

target=${CARGO_TARGET_DIR:-/var/tmp/mailpipe-target}
mailpipe=${1:-$target/debug/mailpipe}
[[ -x $mailpipe ]] || { echo "no mailpipe binary at $mailpipe: run cargo build -p mailpipe first" >&2; exit 1; }
# Go 1.24 or newer (compose-go's floor). This project's machines have it in
# /usr/local/go; Debian bookworm's golang package (1.19) is too old.
[[ -x /usr/local/go/bin/go ]] && PATH=$PATH:/usr/local/go/bin
command -v go >/dev/null || { echo "Go 1.24 or newer is needed to run compose-go (https://go.dev/dl/, or GOTOOLCHAIN with an older go)" >&2; exit 1; }

checker=$target/compose-check
(cd scripts/compose-check && go build -o "$checker" .)

json=$(mktemp)
trap 'rm -f "$json"' EXIT
"$checker" docker/docker-compose.yml > "$json"
echo "compose-go accepts docker/docker-compose.yml"

python3 - "$json" "$mailpipe" <<'PY'
import json, os, re, subprocess, sys

project = json.load(open(sys.argv[1]))
mailpipe = sys.argv[2]
failures = []
built = 0
for name, svc in sorted(project["services"].items()):
    build = svc.get("build") or {}
    if build.get("dockerfile") != "docker/Dockerfile":
        continue
    built += 1
    if not os.path.exists(os.path.join(build["context"], build["dockerfile"])):
        failures.append(f"{name}: {build['dockerfile']} not found under {build['context']}")
    command = svc.get("command") or []
    if not command or subprocess.run([mailpipe, command[0], "--help"],
                                     capture_output=True).returncode != 0:
        failures.append(f"{name}: command {command!r} is not a mailpipe subcommand")
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    env.update({k: v for k, v in (svc.get("environment") or {}).items() if v is not None})
    run = subprocess.run([mailpipe, "check-config"], env=env, capture_output=True, text=True)
    if run.returncode != 0 or "refuse to start" in run.stdout:
        failures.append(f"{name}: mailpipe check-config rejects its environment:\n{run.stdout}{run.stderr}")
    else:
        print(f"{name}: `mailpipe {command[0]}` with its environment passes check-config")

if built == 0:
    failures.append("no service is built from docker/Dockerfile")

topics = project["services"].get("topics", {})
if topics.get("command") != ["topics"] or "build" not in topics:
    failures.append("the topics service must run `mailpipe topics` (the config's topics and retention)")
else:
    print("topics service runs `mailpipe topics`: the config's topics, with their retention")

if failures:
    print("\n".join("FAIL " + f for f in failures), file=sys.stderr)
    sys.exit(1)
PY
