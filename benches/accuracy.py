#!/usr/bin/env python3
"""Latency accuracy: `punisher target --latency 10ms`, constant arrival rate 2,000/s; the
recorded p50 and p99 of http_req_duration against the 10 ms truth. Goal: within +0.3 ms
(p50) and +1 ms (p99) on an idle machine. Medians of RUNS runs.

    python3 benches/accuracy.py [--rate 2000] [--duration 20] [--runs 3]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    common.build_release()
    port = common.free_port()
    api = f"http://127.0.0.1:{port}"
    rows = []
    with common.Server([str(common.PUNISHER), "target", "--listen", f"127.0.0.1:{port}", "--latency", "10ms"], port):
        for i in range(args.runs):
            out = Path(tempfile.mkdtemp()) / "summary.json"
            m = common.measure([str(common.PUNISHER), "run", str(common.ROOT / "benches/scenarios/accuracy.js"), "--quiet",
                                "--workers", str(args.workers), "-e", f"API={api}", "-e", f"RATE={args.rate}",
                                "-e", f"DURATION={args.duration}s", "--summary-json", str(out)],
                               timeout=args.duration + 60)
            if m.code != 0:
                sys.exit(f"punisher failed ({m.code}): {m.stderr[-2000:]}")
            metrics = json.loads(out.read_text())["metrics"]
            values = metrics["http_req_duration"]["values"]
            dropped = metrics.get("dropped_iterations", {}).get("values", {}).get("count", 0)
            rows.append((values["med"], values["p(99)"], values["count"], dropped))
            print(f"run {i + 1}: p50 {values['med']:.3f} ms  p99 {values['p(99)']:.3f} ms  "
                  f"requests {values['count']}  dropped {dropped}", flush=True)
    p50 = common.median([r[0] for r in rows])
    p99 = common.median([r[1] for r in rows])
    print(f"\nmedians: p50 {p50:.3f} ms (+{p50 - 10:.3f}; goal +0.3), p99 {p99:.3f} ms (+{p99 - 10:.3f}; goal +1.0)")


if __name__ == "__main__":
    main()
