#!/usr/bin/env python3
"""CPU per punisher process role, every second, as JSON lines (issue 8).

    python3 benches/cpu_timeline.py record --binary punisher > timeline.jsonl   # until Ctrl-C
    python3 benches/cpu_timeline.py summary timeline.jsonl --window 60

`record` reads /proc/PID/stat of every process whose executable name is `--binary` and sums
the CPU (user + system, all threads) used in each interval per role: the first argument of
its command line (`run`, `agent`, `target`, `controller`). `ROLE_wait` is the time the
role's threads were runnable but waited for a CPU (run_delay of /proc/PID/task/*/schedstat),
also in cores: a role that waits more than it runs is starved, one that neither runs nor
waits is idle or blocked. `ROLE_RN` is how many of its threads were runnable on CPU N at the
instant of the sample (running or queued there), to see whether a role is spread over the
CPUs or piled onto one; a snapshot per second, so only its means over many samples say
anything. `busy` is the whole machine's non-idle CPU from /proc/stat, in cores, and
`softirq` the part of it spent in softirqs (the loopback's TCP path runs there). A kernel
without CONFIG_IRQ_TIME_ACCOUNTING (as here) also charges a softirq to the process it
interrupted, so the roles' CPU includes their share of it.
One line per interval:

    {"t": 12.0, "agent": 0.31, "agent_wait": 0.05, "agent_R0": 1, "target": 0.17,
     "target_wait": 0.02, "target_R1": 1, "run": 0.03, "run_wait": 0.0, "busy": 0.53, "softirq": 0.06}

It costs ~1% of a core for ~50 processes. tv_scale.py samples the target's /admin/stats as
well, and in a saturated storm those samples can be 15-100 s apart. This one only reads /proc,
so it keeps its pace. That is how RESULTS.md found the target idle while the agents lagged.

`summary` prints the mean of each role over consecutive windows.
"""
import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import CLK_TCK, rss_and_cpu, stat_fields  # noqa: E402


def cpu_by_pid(binary):
    """{pid: (role, CPU seconds)} of the processes running `binary`."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if os.path.basename(argv[0]).decode(errors="replace") != binary:
            continue
        sample = rss_and_cpu(pid)
        if sample is not None:
            role = argv[1].decode(errors="replace") if len(argv) > 1 and argv[1] else "?"
            found[pid] = (role, sample[1], *thread_states(pid))
    return found


def thread_states(pid):
    """(seconds the threads of `pid` have waited on a run queue, {cpu: threads runnable there now}).

    The wait is schedstat's second field summed over threads; the runnable threads (state R in
    /proc/PID/task/TID/stat) are counted by the CPU whose run queue holds them (field 39), to
    see whether the scheduler spreads a role over both CPUs or piles it onto one.
    """
    waited, runnable = 0, {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0, runnable
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                waited += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
        fields = stat_fields(f"/proc/{pid}/task/{tid}/stat")
        if fields and fields[0] == "R":
            cpu = int(fields[36])
            runnable[cpu] = runnable.get(cpu, 0) + 1
    return waited / 1e9, runnable


def machine_ticks():
    """(busy, softirq) clock ticks of the whole machine so far."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4], fields[6]  # busy: minus idle and iowait


def record(args):
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    start = time.monotonic()
    before, ticks_before, at_before = cpu_by_pid(args.binary), machine_ticks(), start
    deadline = start + args.duration if args.duration else None
    while deadline is None or time.monotonic() < deadline:
        time.sleep(args.interval)
        now, ticks_now, at = cpu_by_pid(args.binary), machine_ticks(), time.monotonic()
        elapsed = at - at_before
        line = {"t": round(at - start, 1)}
        for pid, (role, cpu, waited, runnable) in now.items():
            # A process that started within the interval counts from zero.
            _, cpu_before, waited_before, _ = before.get(pid, (role, 0.0, 0.0, {}))
            line[role] = line.get(role, 0) + (cpu - cpu_before) / elapsed
            # A thread that ended takes its run_delay along: never count that as negative.
            line[f"{role}_wait"] = line.get(f"{role}_wait", 0) + max(0.0, waited - waited_before) / elapsed
            for n, count in runnable.items():
                line[f"{role}_R{n}"] = line.get(f"{role}_R{n}", 0) + count
        for role in line:
            if role != "t":
                line[role] = round(line[role], 3)
        line["busy"] = round((ticks_now[0] - ticks_before[0]) / CLK_TCK / elapsed, 3)
        line["softirq"] = round((ticks_now[1] - ticks_before[1]) / CLK_TCK / elapsed, 3)
        print(json.dumps(line), flush=True)
        before, ticks_before, at_before = now, ticks_now, at


def summary(args):
    rows = [json.loads(l) for l in open(args.file) if l.strip()]
    if not rows:
        sys.exit(f"{args.file}: no samples")
    roles = sorted({k for r in rows for k in r} - {"t", "busy"})
    print("from_s " + " ".join(f"{r:>8}" for r in roles) + "     busy")
    start = 0.0
    while start <= rows[-1]["t"]:
        window = [r for r in rows if start < r["t"] <= start + args.window]
        if window:
            means = [sum(r.get(role, 0) for r in window) / len(window) for role in roles]
            busy = sum(r["busy"] for r in window) / len(window)
            print(f"{start:6.0f} " + " ".join(f"{m:8.3f}" for m in means) + f" {busy:8.3f}")
        start += args.window


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="sample until Ctrl-C or --duration")
    rec.add_argument("--binary", default="punisher", help="executable name to follow (default punisher)")
    rec.add_argument("--interval", type=float, default=1.0)
    rec.add_argument("--duration", type=float, help="stop after this many seconds")
    rec.set_defaults(run=record)
    summ = sub.add_parser("summary", help="means per window of a recorded file")
    summ.add_argument("file")
    summ.add_argument("--window", type=float, default=60.0)
    summ.set_defaults(run=summary)
    args = ap.parse_args()
    if getattr(args, "interval", 1.0) <= 0:
        ap.error("--interval must be positive")
    args.run(args)


if __name__ == "__main__":
    main()
