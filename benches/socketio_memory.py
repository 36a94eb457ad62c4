#!/usr/bin/env python3
"""Marginal generator RSS per connected idle Socket.IO user, punisher vs Artillery's
Socket.IO engine, against `punisher target` in separate processes (issue 3).

For each tool and transport, the generator opens LOW then HIGH sockets that hold still;
once the target reports them all connected (GET /admin/stats), the RSS of the generator's
whole process tree is sampled. Per user = (RSS at HIGH - RSS at LOW) / (HIGH - LOW);
medians of RUNS. Then the new websocket sessions per second one punisher process opens.

    python3 benches/socketio_memory.py [--low 4000] [--high 12000] [--runs 3]
        [--artillery-dir /tmp/artillery] [--skip-artillery]

One process may hold at most 20,000 open files here. A polling user holds two
connections (its long-poll GET and its POST), so polling runs stop at --polling-high
(9,000 by default) instead of --high. The target runs as two processes (`--processes 2`)
so that neither side passes the limit; users are spread over both ports.
Artillery: `PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install artillery@2.0.21` in
--artillery-dir (see /work/shared/PEERS.md).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

SOURCE_IPS = "127.0.0.2-127.0.0.30"


def stats(api):
    with urllib.request.urlopen(f"{api}/admin/stats", timeout=10) as r:
        return json.loads(r.read())


def connected(api):
    now = stats(api)["sockets"]["connected_now"]
    return now["websocket"] + now["polling"]


def reset(api):
    urllib.request.urlopen(urllib.request.Request(f"{api}/admin/reset", method="POST"), timeout=10).read()


def tree_rss_kb(root):
    """RSS of `root` and all its descendants (Artillery may fork workers)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        fields = common.stat_fields(f"/proc/{d}/stat")
        if not fields:  # gone meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(d))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += common.rss_kb(pid)
        todo.extend(children.get(pid, []))
    return total


def sample_when_connected(cmd, api, users, hold, env=None, settle=3.0):
    """Runs cmd; once the target counts `users` sockets (then `settle` s more), samples the
    tree RSS; returns (rss_kb, connected, exit code, stderr tail)."""
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, preexec_fn=os.setsid)
    deadline = time.time() + hold + 60
    rss, seen = None, 0
    try:
        while time.time() < deadline and proc.poll() is None:
            seen = connected(api)
            if seen >= users:
                time.sleep(settle)
                seen = connected(api)
                rss = tree_rss_kb(proc.pid)
                break
            time.sleep(0.25)
        code = proc.wait(timeout=hold + 120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    err.seek(0)
    tail = err.read().decode(errors="replace")[-1500:]
    return rss, seen, code, tail


def punisher_cmd(api_list, users, transport, ramp, hold):
    return [str(common.PUNISHER), "run", str(common.ROOT / "benches/scenarios/idle_sockets.js"), "--quiet",
            "-e", f"API={api_list}", "-e", f"USERS={users}", "-e", f"RAMP={ramp}s", "-e", f"HOLD={hold}",
            "-e", f"TRANSPORT={transport}", "--source-ips", SOURCE_IPS]


ARTILLERY_YAML = """config:
  target: "{target}"
  socketio:
    transports: ["{transport}"]
  phases:
    - duration: {ramp}
      arrivalCount: {users}
scenarios:
  - engine: socketio
    flow:
      - think: {hold}
"""


def artillery_cmd(art_dir, target, users, transport, ramp, hold):
    work = Path(tempfile.mkdtemp(prefix="artillery-sio-"))
    (work / "idle.yml").write_text(ARTILLERY_YAML.format(target=target, transport=transport, ramp=ramp,
                                                         users=users, hold=hold))
    return [str(Path(art_dir) / "node_modules/.bin/artillery"), "run", "--quiet", str(work / "idle.yml")]


def per_user(tool, transport, low, high, runs, run_one, api):
    values = []
    for i in range(runs):
        points = []
        for users in (low, high):
            reset(api)
            rss, seen, code, tail = run_one(users)
            if rss is None or seen < users:
                print(f"  {tool} {transport} {users}: only {seen} connected (exit {code}): {tail}", flush=True)
                return None
            points.append(rss)
            print(f"  {tool} {transport} run {i + 1}: {users} users connected, RSS {rss / 1024:.1f} MiB "
                  f"(exit {code})", flush=True)
        kb = (points[1] - points[0]) / (high - low)
        values.append(kb)
        print(f"  {tool} {transport} run {i + 1}: {kb:.2f} KB per user", flush=True)
    return common.median(values)


def sessions_per_second(api_list, vus, duration):
    out = Path(tempfile.mkdtemp()) / "summary.json"
    m = common.measure([str(common.PUNISHER), "run", str(common.ROOT / "benches/scenarios/sio_sessions.js"),
                        "--quiet", "-e", f"API={api_list}", "-e", f"VUS={vus}", "-e", f"DURATION={duration}s",
                        "--source-ips", SOURCE_IPS, "--summary-json", str(out)], timeout=duration + 60)
    if m.code != 0:
        sys.exit(f"punisher failed ({m.code}): {m.stderr[-2000:]}")
    metrics = json.loads(out.read_text())["metrics"]
    sessions = metrics["socketio_connect_duration"]["values"]["count"]
    p95 = metrics["socketio_connect_duration"]["values"].get("p(95)")
    return sessions / duration, m.cpu * 1e6 / sessions, p95


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--low", type=int, default=4000)
    ap.add_argument("--high", type=int, default=12000)
    ap.add_argument("--polling-high", type=int, default=9000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ramp", type=int, default=10)
    ap.add_argument("--hold", type=int, default=30)
    # Artillery connects polling clients more slowly than its arrival phase asks: at 9,000
    # they take ~35 s, so its users must hold longer to be all connected at once.
    ap.add_argument("--artillery-hold", type=int, default=60)
    ap.add_argument("--tools", default="punisher,artillery")
    ap.add_argument("--transports", default="websocket,polling")
    ap.add_argument("--rate-runs", type=int, default=3)
    ap.add_argument("--artillery-dir", default="/tmp/artillery")
    ap.add_argument("--skip-artillery", action="store_true")
    ap.add_argument("--rate-vus", type=int, default=200)
    ap.add_argument("--rate-duration", type=int, default=20)
    ap.add_argument("--skip-rate", action="store_true")
    ap.add_argument("--no-build", action="store_true", help="use the release binary as it is")
    args = ap.parse_args()
    if not args.no_build:
        common.build_release()
    port = common.free_port()
    apis = [f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"]
    api, api_list = apis[0], ",".join(apis)
    results = {}
    art_env = dict(os.environ, ARTILLERY_DISABLE_TELEMETRY="true")
    tools = args.tools.split(",")
    have_artillery = ("artillery" in tools and not args.skip_artillery
                      and (Path(args.artillery_dir) / "node_modules/.bin/artillery").exists())
    with common.Server([str(common.PUNISHER), "target", "--listen", f"127.0.0.1:{port}", "--processes", "2"], port):
        common.wait_port(port + 1)
        for transport, high in (("websocket", args.high), ("polling", args.polling_high)):
            if transport not in args.transports.split(","):
                continue
            hold = args.hold

            def ours(users, transport=transport, hold=hold):
                return sample_when_connected(punisher_cmd(api_list, users, transport, args.ramp, hold), api, users, hold)

            if "punisher" in tools:
                results[("punisher", transport)] = per_user("punisher", transport, args.low, high, args.runs, ours,
                                                            api)
            if have_artillery:
                # Artillery takes one target: half the users on each port would need two
                # processes, so it uses the first port (one target process holds them).
                def theirs(users, transport=transport, hold=args.artillery_hold):
                    cmd = artillery_cmd(args.artillery_dir, apis[0], users, transport, args.ramp, hold)
                    return sample_when_connected(cmd, api, users, hold, env=art_env)

                results[("artillery", transport)] = per_user("artillery", transport, args.low, high, args.runs,
                                                             theirs, api)
            time.sleep(2)
        rates = []
        for i in range(0 if args.skip_rate else args.rate_runs):
            reset(api)
            time.sleep(2)
            rates.append(sessions_per_second(api_list, args.rate_vus, args.rate_duration))
            print(f"  sessions run {i + 1}: {rates[-1][0]:.0f}/s, {rates[-1][1]:.0f} us CPU per session, "
                  f"connect p95 {rates[-1][2]} ms", flush=True)
    print("\nmarginal RSS per connected idle Socket.IO user (median):")
    for (tool, transport), kb in results.items():
        print(f"  {tool:10} {transport:10} {'n/a' if kb is None else f'{kb:.2f} KB'}")
    if rates:
        rate = common.median([r[0] for r in rates])
        cpu_us = common.median([r[1] for r in rates])
        print(f"new websocket sessions per second (one process, {args.rate_vus} looping users, median of "
              f"{len(rates)}): {rate:.0f}/s, {cpu_us:.0f} us generator CPU per session")


if __name__ == "__main__":
    main()
