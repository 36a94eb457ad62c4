#!/usr/bin/env python3
"""CPU per request, punisher against wrk and oha, side by side on one local nginx.

50 connections (punisher: 50 looping users doing `await http.get(URL)`), 10 s each, keep-alive;
CPU = the generator's user+sys seconds (wait4) / requests it completed. Medians of RUNS runs.

    python3 benches/http_cpu.py [--runs 3] [--duration 10]
Needs: nginx and wrk (apt-get install -y nginx wrk), oha (cargo install oha --version 1.16.0 --locked).
"""

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def run_punisher(url, duration, workers, binary=None):
    out = Path(tempfile.mkdtemp()) / "summary.json"
    m = common.measure([str(binary or common.PUNISHER), "run", str(common.ROOT / "benches/scenarios/http_loop.js"), "--quiet",
                        "--workers", str(workers), "-e", f"URL={url}", "-e", f"DURATION={duration}s",
                        "--summary-json", str(out)], timeout=duration + 60)
    if m.code != 0:
        sys.exit(f"punisher failed ({m.code}): {m.stderr[-2000:]}")
    requests = json.loads(out.read_text())["metrics"]["http_reqs"]["values"]["count"]
    return m.cpu, requests


def run_wrk(url, duration):
    m = common.measure(["wrk", "-t1", "-c50", f"-d{duration}s", url], timeout=duration + 30)
    requests = int(re.search(r"(\d+) requests in", m.stdout).group(1))
    return m.cpu, requests


def run_oha(url, duration):
    oha = shutil.which("oha") or str(Path.home() / ".cargo/bin/oha")
    m = common.measure([oha, "-c", "50", "-z", f"{duration}s", "--no-tui", "--output-format", "json", url],
                       timeout=duration + 30)
    data = json.loads(m.stdout)
    requests = sum(data["statusCodeDistribution"].values())
    return m.cpu, requests


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--no-oha", action="store_true")
    ap.add_argument("--compare", metavar="BINARY", action="append", default=[],
                    help="also measure this punisher build, alternating with the others (tell a regression "
                         "from a different host: run an older build beside the current one)")
    args = ap.parse_args()
    common.build_release()
    server, port = common.start_nginx()
    url = f"http://127.0.0.1:{port}/"
    tools = {"punisher": lambda: run_punisher(url, args.duration, args.workers), "wrk": lambda: run_wrk(url, args.duration)}
    for binary in args.compare:
        tools[f"punisher@{binary}"] = lambda b=binary: run_punisher(url, args.duration, args.workers, b)
    if not args.no_oha:
        tools["oha"] = lambda: run_oha(url, args.duration)
    results = {name: [] for name in tools}
    try:
        for i in range(args.runs):
            for name, fn in tools.items():
                cpu, requests = fn()
                us = cpu / requests * 1e6
                results[name].append((us, requests / args.duration, cpu))
                print(f"run {i + 1} {name:9} {us:6.2f} us/request  {requests / args.duration:9.0f} req/s  cpu {cpu:.2f}s", flush=True)
    finally:
        server.stop()
    print("\nmedians:")
    for name, rows in results.items():
        print(f"  {name:9} {common.median([r[0] for r in rows]):6.2f} us/request  {common.median([r[1] for r in rows]):9.0f} req/s")
    ratio = common.median([r[0] for r in results["punisher"]]) / common.median([r[0] for r in results["wrk"]])
    print(f"  punisher / wrk CPU per request: {ratio:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
