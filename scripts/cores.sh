#!/usr/bin/env bash
# Prints a backtrace of every thread for each core file written under the
# project since MARKER (a file made before the run), then removes the core.
# The test command calls it when tests fail: a crash in a C library under a
# test binary (librdkafka, aws-lc, SQLite) otherwise leaves only "signal 11".
#
#   scripts/cores.sh MARKER
# Needs the kernel's core_pattern to write files (the Debian default, "core",
# writes into the crashed process's working directory: a crate's root for a
# test binary); with a pipe to a crash collector, look there instead.
set -uo pipefail
cd "$(dirname "$0")/.."
marker=${1:?usage: scripts/cores.sh MARKER}
pattern=$(cat /proc/sys/kernel/core_pattern 2>/dev/null || echo "?")
found=0
while IFS= read -r core; do
  found=1
  echo "==> core file $core ($(du -h "$core" | cut -f1))"
  exe=$(file "$core" 2>/dev/null | sed -n "s/.*execfn: '\([^']*\)'.*/\1/p")
  if command -v gdb >/dev/null 2>&1; then
    gdb -batch -nx -q ${exe:+"$exe"} -c "$core" -ex 'info threads' -ex 'thread apply all bt 25' 2>&1 | head -400
  else
    echo "(gdb is not installed: apt-get install gdb, then gdb ${exe:-EXE} -c $core)"
  fi
  rm -f "$core"
done < <(find . /var/tmp/mailpipe-target -maxdepth 3 -type f \( -name core -o -name 'core.[0-9]*' \) -newer "$marker" 2>/dev/null)
if [ "$found" = 0 ]; then
  echo "no core files (kernel.core_pattern = $pattern)"
fi
