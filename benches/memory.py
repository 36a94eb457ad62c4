#!/usr/bin/env python3
"""Marginal generator RSS per session user, each holding its keep-alive connection and
cookie jar while idle, against `punisher target` in another process.

RSS per user = (peak RSS at HIGH users - peak RSS at LOW users) / (HIGH - LOW); medians of RUNS.

    python3 benches/memory.py [--low 5000] [--high 15000] [--runs 3]
One process may hold at most 20,000 open files here, hence 15,000 users at most.
"""

import argparse
import json
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def run(api, users, ramp, hold, workers):
    out = Path(tempfile.mkdtemp()) / "summary.json"
    # One process (--agents 1): with more, the users would live in child agents whose RSS
    # this does not sample (15,000 users need ~15,000 open files, under the 20,000 limit).
    m = common.measure([str(common.PUNISHER), "run", str(common.ROOT / "benches/scenarios/idle_users.js"), "--quiet",
                        "--workers", str(workers), "--agents", "1", "-e", f"API={api}", "-e", f"USERS={users}", "-e", f"RAMP={ramp}s",
                        "-e", f"HOLD={hold}", "--summary-json", str(out)],
                       timeout=ramp + hold + 120, sample_rss=True)
    if m.code != 0:
        sys.exit(f"punisher failed ({m.code}): {m.stderr[-2000:]}")
    logins = json.loads(out.read_text())["metrics"]["http_reqs"]["values"]["count"]
    if logins != users:
        sys.exit(f"expected {users} logins, the summary says {logins}")
    return m.peak_rss_kb


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--low", type=int, default=5000)
    ap.add_argument("--high", type=int, default=15000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--ramp", type=int, default=10)
    ap.add_argument("--hold", type=int, default=15)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    common.build_release()
    port = common.free_port()
    api = f"http://127.0.0.1:{port}"
    per_user = []
    with common.Server([str(common.PUNISHER), "target", "--listen", f"127.0.0.1:{port}"], port):
        for i in range(args.runs):
            low = run(api, args.low, args.ramp, args.hold, args.workers)
            urllib.request.urlopen(urllib.request.Request(f"{api}/admin/reset", method="POST")).read()
            high = run(api, args.high, args.ramp, args.hold, args.workers)
            urllib.request.urlopen(urllib.request.Request(f"{api}/admin/reset", method="POST")).read()
            kb = (high - low) / (args.high - args.low)
            per_user.append(kb)
            print(f"run {i + 1}: peak RSS {low / 1024:.1f} MiB at {args.low}, {high / 1024:.1f} MiB at {args.high}: "
                  f"{kb:.2f} KB per user", flush=True)
    print(f"\nmedian marginal RSS per idle session user: {common.median(per_user):.2f} KB (goal <= 12 KB)")


if __name__ == "__main__":
    main()
