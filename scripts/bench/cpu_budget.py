#!/usr/bin/env python3
"""CPU per message by process group, over a send run.

    cpu_budget.py snap FILE            # record every process's CPU ticks, and the machine's
    cpu_budget.py report FILE N LABEL  # CPU since FILE, per message of N, by group

Groups by the process name: the worker (mailpipe, with its threads and
render sandboxes), postgres (every backend and background process of the
cluster), kafka (java), smtp-sink, and everything else. A process that
started after the snapshot counts from zero; one that ended before the
report is missed (the bench's are alive at both ends: the pool keeps its
connections). The machine's line is busy time from /proc/stat, which
counts every process, the kernel's softirq work included.
"""
import json
import os
import sys

HZ = os.sysconf("SC_CLK_TCK")


def processes():
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                s = f.read()
        except OSError:
            continue
        name = s[s.index("(") + 1 : s.rindex(")")]
        fields = s[s.rindex(")") + 2 :].split()
        # utime, stime; starttime tells a reused pid from the one snapped.
        out[pid] = (name, int(fields[11]) + int(fields[12]), fields[19])
    return out


def machine():
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:9]]
    return sum(t) - t[3] - t[4]  # all but idle and iowait


def group(name):
    if name.startswith("mailpipe") or name.startswith("tokio-rt") or name.startswith("rdk:"):
        return "worker"
    if name.startswith("postgres"):
        return "postgres"
    if name == "java":
        return "kafka"
    if name == "smtp-sink":
        return "smtp-sink"
    return "other"


def main():
    if sys.argv[1] == "snap":
        with open(sys.argv[2], "w") as f:
            json.dump({"procs": processes(), "machine": machine()}, f)
        return
    path, n, label = sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with open(path) as f:
        before = json.load(f)
    now = processes()
    by = {}
    for pid, (name, ticks, start) in now.items():
        was = before["procs"].get(pid)
        base = was[1] if was and was[2] == start else 0
        by[group(name)] = by.get(group(name), 0) + ticks - base
    total = machine() - before["machine"]
    us = lambda ticks: round(ticks / HZ / max(n, 1) * 1e6)
    parts = ", ".join(f"{g} {us(by.get(g, 0))}" for g in ("worker", "postgres", "smtp-sink", "kafka", "other"))
    print(f"{label} CPU per message, µs: {parts}; the machine {us(total)}")


if __name__ == "__main__":
    main()
