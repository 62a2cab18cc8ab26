#!/usr/bin/env python3
"""CPU per message by process group, over a send run.

    cpu_budget.py snap FILE                       # every process's CPU ticks, and the machine's
    cpu_budget.py report FILE N LABEL WORKER_PID  # CPU since FILE, per message of N, by group

Groups: the worker (WORKER_PID and its descendants, the render sandboxes),
postgres (every process of the cluster), kafka (java), smtp-sink, and
everything else. Each process counts its own CPU and that of its children
it has reaped, so a backend or autovacuum worker that ends during the run
is still counted, through the postmaster (one that was alive at the
snapshot is then over-counted by what it had used before it). A process
that started after the snapshot counts from zero. The machine's line is
busy time from /proc/stat (not idle, iowait or steal), which counts every
process and the kernel's softirq work.
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
        # utime, stime, cutime, cstime; the parent; starttime tells a
        # reused pid from the one snapped.
        out[pid] = (name, sum(int(x) for x in fields[11:15]), fields[19], fields[1])
    return out


def machine():
    with open("/proc/stat") as f:
        t = [int(x) for x in f.readline().split()[1:9]]
    return sum(t) - t[3] - t[4] - t[7]  # all but idle, iowait and steal


def group(name):
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
    path, n, label, worker = sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    with open(path) as f:
        before = json.load(f)
    now = processes()

    def in_worker(pid):
        seen = set()
        while pid in now and pid not in seen:
            if pid == worker:
                return True
            seen.add(pid)
            pid = now[pid][3]
        return False

    by, others = {}, {}
    for pid, (name, ticks, start, _) in now.items():
        was = before["procs"].get(pid)
        base = was[1] if was and was[2] == start else 0
        g = "worker" if in_worker(pid) else group(name)
        by[g] = by.get(g, 0) + ticks - base
        if g == "other":
            others[name] = others.get(name, 0) + ticks - base
    total = machine() - before["machine"]
    us = lambda ticks: round(ticks / HZ / max(n, 1) * 1e6)
    parts = ", ".join(f"{g} {us(by.get(g, 0))}" for g in ("worker", "postgres", "smtp-sink", "kafka", "other"))
    top = sorted(others.items(), key=lambda kv: -kv[1])[:3]
    most = ", ".join(f"{name} {us(t)}" for name, t in top if t > 0)
    print(f"{label} CPU per message, µs: {parts} ({most}); the machine {us(total)}")


if __name__ == "__main__":
    main()
