#!/usr/bin/env python3
"""The TV show at scale on one machine (issue 8): N viewers log in, connect over Socket.IO
(80% websocket, 20% xhr-polling), wait at a barrier until all are connected, receive one
broadcast question, vote once and leave: each once its vote is answered, or with `--leave
at-end` all together once every vote is in. Loopback only, bounded in time.

    python3 benches/tv_scale.py --users 50000 --ramp 5m
    python3 benches/tv_scale.py --users 300000 --ramp 5m --json /tmp/tv300k.json

What it does:
1. Applies the kernel settings such a run needs when it may (root; `--no-sysctl` skips
   them) and puts the old values back at the end: ephemeral port range 1024-65535,
   somaxconn and tcp_max_syn_backlog 65535 (bursts of connects), netdev_max_backlog
   (loopback packets queue there), fs.file-max, nf_conntrack_max when conntrack is loaded,
   tcp_mem (TCP buffer pages) and tcp_max_orphans (closed sockets awaiting their peer).
   `--storm-model G,T` puts the two sides in cpu cgroups and caps them at G% and T% of a
   core from the end of the ramp: with `--users 12000 --agents 1` a 5-minute model of one
   agent and one target process in the storm after the question at 300,000.
   `--target-weight W` puts them in cpu cgroups with the target weighted W times the
   generator: on one machine the target stands for a backend on machines of its own.
   `--pin-cpus 1:0` runs the target on CPU 1 and the generator on CPU 0, a core each.
2. Starts `punisher target --processes T` on consecutive ports (T sized so that each
   process stays under ~18,000 sockets: one process may open 20,000 files here).
3. Starts the generator: `punisher run scenarios/tv_show.js --users N --ramp-up R
   -e API=<every target URL>` with local child agents when this punisher has `--agents`
   (`--generator local`), else a loopback cluster (`--generator cluster`: a controller,
   A agents with disjoint source addresses 127.0.(i+1).1-254, and `punisher run
   --controller`).
4. Samples every second: RSS of every generator process and of every target process
   (summed per side, peak kept), /proc/net/sockstat, slab and MemAvailable (kernel memory
   per socket), the target's /admin/stats (when everyone was connected, the broadcast).
5. Reads the run's summary JSON and journal, and checks that the run and the target
   agree: logins, Socket.IO connections (80/20), questions delivered and received,
   votes, 0 duplicate votes.

Prints a JSON report (and writes it with --json) plus a markdown table row for
benches/RESULTS.md. Exit code 0 when every check passed, 1 otherwise.
"""

import argparse
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PUNISHER, ROOT, free_port, rss_and_cpu, stat_fields, wait_port  # noqa: E402

# One process may hold 20,000 open files here; keep a margin for listeners, pipes, logs.
FDS_PER_PROCESS = 18_000

SYSCTLS = {
    "net/ipv4/ip_local_port_range": "1024\t65535",
    "net/core/somaxconn": "65535",
    "net/ipv4/tcp_max_syn_backlog": "65535",
    "net/core/netdev_max_backlog": "65536",
    "fs/file-max": "4194304",
    "net/netfilter/nf_conntrack_max": "2097152",
    # Pages of TCP buffers (4/6/8 GiB); the default pressure point is ~1.5 GiB on 24 GiB,
    # and a broadcast to 300,000 sockets queues a little in each.
    "net/ipv4/tcp_mem": "1048576\t1572864\t2097152",
    # The target closes idle keep-alive connections whose clients keep them until they
    # vote: those sockets wait in FIN_WAIT2, orphaned, for up to tcp_fin_timeout (60 s).
    "net/ipv4/tcp_max_orphans": "1048576",
}


def parse_duration(s):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for u in ("ms", "s", "m", "h"):
        if s.endswith(u) and s[: -len(u)].replace(".", "", 1).isdigit():
            return float(s[: -len(u)]) * units[u]
    return float(s)


def apply_sysctls(enabled):
    """Sets SYSCTLS where the current value is lower; returns what to put back."""
    old = {}
    if not enabled:
        return old
    for key, want in SYSCTLS.items():
        path = Path("/proc/sys") / key
        if not path.exists():
            continue  # e.g. conntrack not loaded
        cur = path.read_text().split()
        new = want.split()
        if key.endswith("ip_local_port_range"):
            better = int(new[0]) < int(cur[0]) or int(new[1]) > int(cur[1])
        else:
            better = int(new[-1]) > int(cur[-1])
        if not better:
            continue
        try:
            path.write_text(want)
            old[key] = "\t".join(cur)
            print(f"sysctl {key.replace('/', '.')}: {' '.join(cur)} -> {' '.join(new)}", file=sys.stderr)
        except OSError as e:
            print(f"sysctl {key}: cannot set ({e}); run as root or set it yourself", file=sys.stderr)
    return old


def restore_sysctls(old):
    for key, value in old.items():
        try:
            (Path("/proc/sys") / key).write_text(value)
        except OSError:
            pass


CPU_GROUP_V1 = Path("/sys/fs/cgroup/cpu")
CPU_GROUP_V2 = Path("/sys/fs/cgroup")


def make_cpu_groups(enabled):
    """{"target": procs file, "generator": procs file}: one CPU cgroup per side, for --storm-model
    and --target-weight.

    cgroup v1 (`cpu.cfs_quota_us`) or v2 (`cpu.max`). Without caps or weights the groups change
    nothing: tv_scale starts each side in a session of its own, and the kernel's autogroups
    (`kernel.sched_autogroup_enabled`, on here) already share the CPU between the two
    sessions, not between their ~50 processes. Exits with a message when it cannot.
    """
    if not enabled:
        return {}
    v2_controllers = CPU_GROUP_V2 / "cgroup.subtree_control"
    if (CPU_GROUP_V1 / "cpu.cfs_quota_us").exists():
        root = CPU_GROUP_V1
    elif v2_controllers.exists() and "cpu" in v2_controllers.read_text().split():
        root = CPU_GROUP_V2
    else:
        sys.exit("--storm-model/--target-weight: no cpu cgroup controller at /sys/fs/cgroup")
    groups = {}
    try:
        for side in ("target", "generator"):
            d = root / f"punisher-tv-{side}"
            d.mkdir(exist_ok=True)
            groups[side] = d / "cgroup.procs"
    except OSError as e:
        sys.exit(f"--storm-model/--target-weight: cannot create a cpu cgroup ({e}); run as root")
    return groups


def limit_cpu_group(procs, percent):
    """Caps a group made by make_cpu_groups at `percent` of one core (None: no cap)."""
    d = procs.parent
    if (d / "cpu.cfs_quota_us").exists():
        period = int((d / "cpu.cfs_period_us").read_text())
        (d / "cpu.cfs_quota_us").write_text("-1" if percent is None else str(int(period * percent / 100)))
    else:
        (d / "cpu.max").write_text("max 100000" if percent is None else f"{int(1000 * percent)} 100000")


def weigh_cpu_group(procs, weight):
    """Sets the CPU weight of a group made by make_cpu_groups, relative to 1 (the default)."""
    d = procs.parent
    if (d / "cpu.shares").exists():
        (d / "cpu.shares").write_text(str(max(2, round(1024 * weight))))
    else:
        (d / "cpu.weight").write_text(str(min(10000, max(1, round(100 * weight)))))


def remove_cpu_groups(groups):
    for procs in groups.values():
        try:
            procs.parent.rmdir()  # fails while a process is left in it: then it stays
        except OSError:
            pass


# ---------------------------------------------------------------- /proc readers

def proc_children():
    """ppid -> [pid] over the whole machine."""
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        fields = stat_fields(f"/proc/{d}/stat")
        if not fields:  # gone meanwhile
            continue
        kids.setdefault(int(fields[1]), []).append(int(d))
    return kids


def tree(roots, kids):
    out, todo = set(), list(roots)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.add(p)
        todo.extend(kids.get(p, []))
    return out


def sockstat():
    out = {}
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        name, _, rest = line.partition(":")
        vals = rest.split()
        out[name] = {vals[i]: int(vals[i + 1]) for i in range(0, len(vals) - 1, 2)}
    return out


def meminfo():
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0]) * 1024
    return out


SLABS = ("TCP", "tw_sock_TCP", "request_sock_TCP", "sock_inode_cache", "dentry", "filp",
         "eventpoll_epi", "eventpoll_pwq", "skbuff_head_cache", "kmalloc-256", "kmalloc-512",
         "kmalloc-1k", "kmalloc-2k", "kmalloc-4k", "pid", "anon_vma")


def slabinfo():
    """name -> bytes in use (active objects x object size) for the slabs sockets use."""
    out = {}
    try:
        for line in Path("/proc/slabinfo").read_text().splitlines()[2:]:
            p = line.split()
            if p[0] in SLABS:
                out[p[0]] = int(p[1]) * int(p[3])
    except OSError:
        pass
    return out


def http_json(url, method="GET", timeout=30):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


# ---------------------------------------------------------------- the run

class Sampler(threading.Thread):
    """Every second: RSS and CPU of the generator and target process trees, kernel memory,
    the target's stats every few seconds."""

    def __init__(self, gen_roots, target_root, stats_url, users, min_available):
        super().__init__(daemon=True)
        self.gen_roots, self.target_root = list(gen_roots), target_root
        self.stats_url, self.users = stats_url, users
        self.stop = threading.Event()
        self.peak_gen = self.peak_target = 0
        self.peak_gen_procs = 0
        self.cpu = {}  # pid -> (side, last cpu seconds)
        self.peak_tcp = None
        self.timeline = []
        self.all_connected_at = None
        self.broadcast_at = None
        self.max_connected = 0
        self.last_stats = None
        self.kernel_at_peak = None
        # Below this much MemAvailable the run is stopped: the machine is shared, and the
        # kernel's OOM killer would pick somebody's compiler before our processes.
        self.min_available = min_available
        self.low_memory = None
        self.on_low_memory = None
        self.min_mem_available = None

    def add_gen_root(self, pid):
        self.gen_roots.append(pid)

    def run(self):
        n = 0
        while not self.stop.wait(1.0):
            n += 1
            kids = proc_children()
            gen = tree([p for p in self.gen_roots if p], kids)
            tgt = tree([self.target_root], kids)
            gen_rss = tgt_rss = 0
            for side, pids in (("gen", gen), ("target", tgt)):
                for p in pids:
                    rc = rss_and_cpu(p)
                    if rc is None:
                        continue
                    rss, cpu = rc
                    if side == "gen":
                        gen_rss += rss
                    else:
                        tgt_rss += rss
                    self.cpu[p] = (side, cpu)
            self.peak_gen = max(self.peak_gen, gen_rss)
            self.peak_target = max(self.peak_target, tgt_rss)
            self.peak_gen_procs = max(self.peak_gen_procs, len(gen))
            avail = meminfo().get("MemAvailable", 0)
            self.min_mem_available = avail if self.min_mem_available is None else min(self.min_mem_available, avail)
            if avail < self.min_available and self.low_memory is None:
                self.low_memory = {"t": time.time(), "mem_available": avail, "gen_rss": gen_rss,
                                   "target_rss": tgt_rss, "stats": self.last_stats}
                print(f"MemAvailable {avail / 2**30:.2f} GiB: stopping the run", file=sys.stderr)
                if self.on_low_memory:
                    self.on_low_memory()
            ss = sockstat()
            tcp = ss.get("TCP", {})
            point = {"t": round(time.time(), 1), "gen_rss": gen_rss, "target_rss": tgt_rss,
                     "gen_cpu": round(self.cpu_of("gen"), 1), "target_cpu": round(self.cpu_of("target"), 1),
                     "tcp_inuse": tcp.get("inuse", 0), "tcp_tw": tcp.get("tw", 0),
                     "tcp_mem_pages": tcp.get("mem", 0)}
            if self.peak_tcp is None or tcp.get("inuse", 0) > self.peak_tcp["inuse"]:
                self.peak_tcp = dict(tcp)
                mi = meminfo()
                self.kernel_at_peak = {"slab": mi.get("Slab", 0), "sunreclaim": mi.get("SUnreclaim", 0),
                                       "mem_available": mi.get("MemAvailable", 0),
                                       "slabs": slabinfo(), "sockstat": ss}
            if n % 3 == 0 and self.stats_url:
                try:
                    s = http_json(self.stats_url, timeout=20)
                    self.last_stats = s
                    now = s["sockets"]["connected_now"]
                    connected = now["websocket"] + now["polling"]
                    self.max_connected = max(self.max_connected, connected)
                    point["connected"] = connected
                    point["votes"] = s["votes"]
                    total = s["sockets"]["total"]
                    if self.all_connected_at is None and total["websocket"] + total["polling"] >= self.users:
                        self.all_connected_at = time.time()
                    if self.broadcast_at is None and s["broadcasts"] > 0:
                        self.broadcast_at = time.time()
                except Exception as e:  # the target is busy: the next sample will do
                    point["stats_error"] = str(e)[:80]
            self.timeline.append(point)

    def cpu_of(self, side):
        return sum(c for s, c in self.cpu.values() if s == side)


def parse_cpu_list(text):
    """{0, 2, 3} from "0,2-3" (the kernel's cpulist format); ValueError when malformed."""
    cpus = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def start(cmd, log, env=None, nice=0, cpu_group=None, cpus=None):
    def setup():
        os.setsid()
        if nice:
            os.nice(nice)
        if cpus:
            os.sched_setaffinity(0, cpus)  # inherited by every child process and thread
        if cpu_group:
            # Before exec, so that every child process (agents, target processes) inherits it.
            cpu_group.write_text(str(os.getpid()))
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=setup)


def stop(proc, sig=signal.SIGINT, timeout=30):
    """Signals the process (its group on timeout) and returns its CPU seconds (wait4:
    itself and the children it reaped)."""
    if proc is None:
        return 0.0
    try:
        os.kill(proc.pid, sig)
    except ProcessLookupError:
        pass
    deadline = time.time() + timeout
    while time.time() < deadline:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return usage.ru_utime + usage.ru_stime
        time.sleep(0.2)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _, status, usage = os.wait4(proc.pid, 0)
    return usage.ru_utime + usage.ru_stime


def has_local_agents(punisher):
    out = subprocess.run([str(punisher), "run", "--help"], capture_output=True, text=True).stdout
    return "--agents" in out


def consecutive_free_ports(n):
    import socket
    for _ in range(200):
        base = free_port()
        if base + n >= 65000:
            continue
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                s.bind(("127.0.0.1", base + i))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free consecutive ports")


def series_count(summary, metric, name):
    s = summary.get("series", {}).get(f"{metric}{{name:{name}}}")
    return int(s["values"]["count"]) if s else None


def journal_records(journal):
    """The JSON records of a run's journal, skipping a line cut short (a killed run)."""
    for line in journal.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def peak_rate(journal, metric, name, window=5):
    """The highest per-second count of `metric{name}` (`name` None: the series without a
    name tag) in the run's journal: timeseries.jsonl (one line per tick and series) or the
    older metrics.jsonl (one line per tick)."""
    per_tick = {}
    for rec in journal_records(journal):
        if "scope" in rec:
            if rec["scope"] == "series" and rec.get("metric") == metric and rec.get("tags", {}).get("name") == name:
                key = (rec["ts"], rec["end"])
                per_tick[key] = per_tick.get(key, 0.0) + rec.get("values", {}).get("count", 0)
        else:
            key = (rec.get("start_unix_ms", 0), rec.get("end_unix_ms", 0))
            for s in rec.get("series", []):
                if s.get("metric") == metric and s.get("tags", {}).get("name") == name:
                    per_tick[key] = per_tick.get(key, 0.0) + s.get("sum", s.get("count", 0))
    # A tick is a second, but an agent's report that misses its tick lands in the next
    # one, so single ticks jitter: the peak is taken over `window` consecutive ticks.
    ticks = sorted(per_tick.items())
    # The run's last tick is cut short and carries the agents' final flush (what they had
    # not reported yet): it is not a rate.
    if ticks and ticks[-1][0][1] - ticks[-1][0][0] < 900:
        ticks.pop()
    best = 0.0
    for i in range(len(ticks)):
        span = ticks[i:i + window]
        secs = max((span[-1][0][1] - span[0][0][0]) / 1000, float(len(span)))
        best = max(best, sum(n for _, n in span) / secs)
    return best


def disconnects_by_reason(journal):
    """{"reason/transport": count} of `socketio_disconnects` in a timeseries.jsonl journal:
    how the viewers' sockets ended, seen from the generator (the target counts its own)."""
    out = {}
    for rec in journal_records(journal):
        if rec.get("scope") == "series" and rec.get("metric") == "socketio_disconnects":
            tags = rec.get("tags", {})
            key = f"{tags.get('reason')}/{tags.get('transport')}"
            out[key] = out.get(key, 0) + int(rec.get("values", {}).get("count", 0))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--ramp", default="5m", help="ramp-up of the users (default 5m)")
    ap.add_argument("--vote-min", type=float, default=5)
    ap.add_argument("--vote-max", type=float, default=65,
                    help="votes spread over [min, max] s after the question (default 5-65: ~users/60 votes/s)")
    ap.add_argument("--vote-via", choices=["http", "socket"], default="http",
                    help="vote with an HTTP POST (default) or a Socket.IO `vote` event with an ack")
    ap.add_argument("--leave", choices=["after-vote", "at-end"], default="after-vote",
                    help="viewers leave once their vote is answered (default), or stay until every vote is in "
                         "(the scenario's `voted` barrier) and then leave together")
    ap.add_argument("--poll-interval", type=float, default=600,
                    help="seconds between timeline polls per user (default 600). Each poll comes after the "
                         "target closed the viewer's idle connection (--keep-alive), so it opens a new one: at 300,000 "
                         "over a 30-minute ramp that is 500 polls/s by the end, ~0.5 core a side on a 2-core host "
                         "(benches/RESULTS.md); a value longer than the run leaves the polls out")
    ap.add_argument("--target-processes", type=int, help=f"default: users x 1.3 / {FDS_PER_PROCESS}")
    ap.add_argument("--keep-alive", default="5s",
                    help="the target closes HTTP connections idle this long (default 5s, node's keepAliveTimeout)")
    ap.add_argument("--heartbeat-grid",
                    help="the target's --heartbeat-grid (Engine.IO pings on a shared grid; default: the target's)")
    ap.add_argument("--ping-timeout",
                    help="the target's --ping-timeout (default: the target's 20s, node's). Longer keeps the "
                         "sockets of lagging agents alive: not what a node backend does, so say so with the result")
    ap.add_argument("--generator-nice", type=int, default=0,
                    help="run the generator (run, controller, agents) at this niceness, e.g. 5: on one machine "
                         "the target stands for a backend on other machines and should not be starved by it "
                         "(default 0; at 300,000 viewers nice 5 made the agents answer pings too late and "
                         "the target dropped them: benches/RESULTS.md)")
    ap.add_argument("--storm-model", metavar="GEN%,TARGET%",
                    help="cap the generator and the target at these percents of one core ('-': no cap) from the end "
                         "of the ramp on, in cpu cgroups (root), e.g. 4,2 with --users 12000 --agents 1: about what "
                         "one of the 25 agents and one of the 22 target processes got in the storm at 300,000 on "
                         "this host; a 5-minute model of that storm (benches/RESULTS.md, \"The storm in a model\")")
    ap.add_argument("--target-weight", type=float,
                    help="put the two sides in cpu cgroups (root) and give the target this many times the "
                         "generator's CPU weight when both want a CPU, e.g. 2. On one machine the target stands for "
                         "a backend on machines of its own, and a starved target is late with its pings; the "
                         "generator's own lag still shows in its latencies. Default: equal shares (autogroups)")
    ap.add_argument("--pin-cpus", metavar="TARGET:GENERATOR",
                    help="run the target only on these CPUs and the generator only on those, e.g. 1:0 (lists "
                         "like 0,1 or 2-3): one core each on a 2-core host, as if each side had a machine of its "
                         "own, with the kernel's loopback work charged to the side that sends. Default: both "
                         "sides on every CPU")
    ap.add_argument("--generator", choices=["auto", "local", "cluster"], default="auto")
    ap.add_argument("--agents", type=int,
                    help=f"generator processes (default: users x 2.5 / {FDS_PER_PROCESS} with HTTP votes, x 1.5 with "
                         "Socket.IO votes: a viewer holds its socket, two for polling, and an HTTP vote opens one more)")
    ap.add_argument("--punisher", default=str(PUNISHER))
    ap.add_argument("--scenario", default=str(ROOT / "scenarios" / "tv_show.js"))
    ap.add_argument("--no-sysctl", action="store_true", help="do not touch kernel settings")
    ap.add_argument("--timeout", type=float, help="kill everything after this many s (default ramp + 12 min)")
    ap.add_argument("--json", help="also write the report here")
    ap.add_argument("--min-available-gib", type=float, default=1.0,
                    help="interrupt the run when MemAvailable falls below this (default 1.0)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, results)")
    args = ap.parse_args()
    storm_caps = None
    if args.storm_model:
        try:
            caps = [None if p.strip() == "-" else float(p) for p in args.storm_model.split(",")]
        except ValueError:
            caps = []
        if len(caps) != 2 or any(c is not None and not 0 < c <= 100 * (os.cpu_count() or 1) for c in caps):
            ap.error(f"--storm-model {args.storm_model!r}: want two percents of a core, e.g. 4,2 or 4,-")
        storm_caps = dict(zip(("generator", "target"), caps))
    pinned = {}
    if args.pin_cpus:
        parts = args.pin_cpus.split(":")
        try:
            if len(parts) == 2:
                pinned = dict(zip(("target", "generator"), map(parse_cpu_list, parts)))
        except ValueError:
            pinned = {}
        online = os.sched_getaffinity(0)
        if len(pinned) != 2 or not all(cpus and cpus <= online for cpus in pinned.values()):
            ap.error(f"--pin-cpus {args.pin_cpus!r}: want TARGET:GENERATOR lists of this machine's CPUs "
                     f"({sorted(online)}), e.g. 1:0")
    if args.target_weight is not None and not 0.01 <= args.target_weight <= 100:
        ap.error(f"--target-weight {args.target_weight}: want a ratio between 0.01 and 100, e.g. 2")

    punisher = Path(args.punisher)
    if not punisher.exists():
        sys.exit(f"{punisher} not found: cargo build --release -p punisher-cli")
    users, ramp = args.users, parse_duration(args.ramp)
    tprocs = args.target_processes or max(1, math.ceil(users * 1.3 / FDS_PER_PROCESS))
    fds_per_viewer = 1.5 if args.vote_via == "socket" else 2.5
    agents = args.agents or max(1, math.ceil(users * fds_per_viewer / FDS_PER_PROCESS))
    mode = args.generator
    if mode == "auto":
        mode = "local" if has_local_agents(punisher) else "cluster"
    timeout = args.timeout or ramp + 720
    work = Path(tempfile.mkdtemp(prefix=f"tv-scale-{users}-"))
    print(f"work dir {work}; {users} users, ramp {args.ramp}, {tprocs} target processes, "
          f"generator {mode} with {agents} agents", file=sys.stderr)

    cpu_groups = make_cpu_groups(bool(storm_caps) or args.target_weight is not None)
    if args.target_weight is not None:
        weigh_cpu_group(cpu_groups["target"], args.target_weight)
    # Where every generator process (run, controller, agents) runs, and at which priority.
    gen_placement = {"nice": args.generator_nice, "cpu_group": cpu_groups.get("generator"),
                     "cpus": pinned.get("generator")}
    old_sysctls = apply_sysctls(not args.no_sysctl)
    target = controller = runner = None
    agent_procs = []
    report = {"users": users, "ramp": args.ramp, "target_processes": tprocs, "generator": mode,
              "agents": agents, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{os.cpu_count()} cpu, {meminfo()['MemTotal'] / 2**30:.1f} GiB",
              "vote_window_s": [args.vote_min, args.vote_max], "vote_via": args.vote_via, "leave": args.leave}
    sampler = None
    try:
        mem_before = meminfo()
        slab_before, tcp_before = mem_before.get("Slab", 0), sockstat().get("TCP", {}).get("inuse", 0)
        slabs_before = slabinfo()

        base = consecutive_free_ports(tprocs)
        urls = [f"http://127.0.0.1:{base + i}" for i in range(tprocs)]
        target_cmd = [str(punisher), "target", "--listen", f"127.0.0.1:{base}", "--processes", str(tprocs),
                      "--keep-alive-timeout", args.keep_alive]
        if args.heartbeat_grid is not None:
            target_cmd += ["--heartbeat-grid", args.heartbeat_grid]
        if args.ping_timeout is not None:
            target_cmd += ["--ping-timeout", args.ping_timeout]
        report["target_command"] = " ".join(target_cmd)
        target = start(target_cmd, open(work / "target.log", "w"), cpu_group=cpu_groups.get("target"),
                       cpus=pinned.get("target"))
        for i in range(tprocs):
            wait_port(base + i, timeout=60)
        stats_url = f"{urls[0]}/admin/stats"
        http_json(f"{urls[0]}/admin/reset", method="POST")
        sampler = Sampler([], target.pid, stats_url, users, args.min_available_gib * 2**30)
        sampler.start()

        token = secrets.token_hex(8)
        summary_path = work / "summary.json"
        results = work / "results"
        run_id = f"tv-{users}"
        env_flags = ["-e", f"API={','.join(urls)}", "-e", f"VOTE_MIN={args.vote_min}",
                     "-e", f"VOTE_MAX={args.vote_max}", "-e", f"POLL_INTERVAL={args.poll_interval}",
                     "-e", f"VOTE_VIA={args.vote_via}", "-e", f"LEAVE={args.leave}",
                     "-e", f"BARRIER_TIMEOUT={int(ramp + 300)}s", "-e", f"QUESTION_TIMEOUT={int(ramp + 420)}s"]
        common = ["--users", str(users), "--ramp-up", args.ramp, "--summary-json", str(summary_path),
                  "--results-dir", str(results), "--run-id", run_id, "-q", *env_flags]
        if mode == "cluster":
            port = free_port()
            controller = start([str(punisher), "controller", "--insecure-loopback", "--listen", f"127.0.0.1:{port}",
                                "--token", token, "--results-dir", str(results)], open(work / "controller.log", "w"),
                               **gen_placement)
            wait_port(port, timeout=30)
            sampler.add_gen_root(controller.pid)
            for i in range(agents):
                a = start([str(punisher), "agent", "--controller", f"127.0.0.1:{port}", "--insecure-loopback",
                           "--token", token, "--workers", "1",
                           "--source-ips", f"127.0.{i + 1}.1-127.0.{i + 1}.254"],
                          open(work / f"agent{i}.log", "w"), **gen_placement)
                agent_procs.append(a)
                sampler.add_gen_root(a.pid)
            cmd = [str(punisher), "run", args.scenario, "--controller", f"127.0.0.1:{port}", "--insecure-loopback",
                   "--token", token, "--wait-agents", str(agents), *common]
            cmd = [c for c in cmd if c not in ("--results-dir", str(results))]  # the controller writes them
        else:
            cmd = [str(punisher), "run", args.scenario, "--agents", str(agents), "--no-tui", *common]
        report["command"] = " ".join(cmd)
        report["generator_nice"] = args.generator_nice
        if storm_caps:
            report["storm_model_percent_of_a_core"] = storm_caps
        if args.target_weight is not None:
            report["target_cpu_weight"] = args.target_weight
        if pinned:
            report["pinned_cpus"] = {side: sorted(cpus) for side, cpus in pinned.items()}
        caps_to_apply = storm_caps
        t0 = time.time()
        runner = start(cmd, open(work / "run.log", "w"), **gen_placement)
        sampler.add_gen_root(runner.pid)

        def interrupt_run(pid=runner.pid):
            try:
                os.kill(pid, signal.SIGINT)
            except ProcessLookupError:
                pass
        sampler.on_low_memory = interrupt_run
        deadline = t0 + timeout
        status = None
        while time.time() < deadline:
            pid, status, usage = os.wait4(runner.pid, os.WNOHANG)
            if pid:
                runner.returncode = os.waitstatus_to_exitcode(status)
                report["run_cpu_s"] = usage.ru_utime + usage.ru_stime
                break
            if caps_to_apply and time.time() - t0 > ramp - 2:
                # Just before the last viewer connects: the question follows at once.
                for side, percent in caps_to_apply.items():
                    limit_cpu_group(cpu_groups[side], percent)
                print(f"storm model: generator {caps_to_apply['generator']}%, target {caps_to_apply['target']}% "
                      f"of a core (None: no cap) from {time.time() - t0:.0f} s", file=sys.stderr)
                caps_to_apply = None
            if sampler.low_memory and time.time() - sampler.low_memory["t"] > 20:
                # SIGINT was not enough: the whole generator goes.
                try:
                    os.killpg(runner.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                report["run_cpu_s"] = stop(runner, signal.SIGKILL, 10)
                break
            time.sleep(1)
        else:
            report["timed_out"] = True
            report["run_cpu_s"] = stop(runner, signal.SIGINT, 60)
        report["run_wall_s"] = round(time.time() - t0, 1)
        report["run_exit_code"] = runner.returncode
        runner_cpu = report["run_cpu_s"]
        agents_cpu = sum(stop(a, signal.SIGINT, 30) for a in agent_procs)
        controller_cpu = stop(controller, signal.SIGINT, 30)
        sampler.stop.set()
        sampler.join()
        try:
            final = http_json(stats_url, timeout=60)
        except Exception as e:
            final = sampler.last_stats
            report["target_stats_error"] = str(e)
        report["target_stats"] = final
        # Generator CPU: what wait4 reported for the processes we started (and the agents
        # they reaped), or the /proc samples when that is larger (children not reaped).
        sampled_gen_cpu = sampler.cpu_of("gen")
        report["generator_cpu_s"] = round(max(runner_cpu + agents_cpu + controller_cpu, sampled_gen_cpu), 1)
        report["peak_generator_rss_mib"] = round(sampler.peak_gen / 2**20, 1)
        report["generator_bytes_per_user"] = round(sampler.peak_gen / users)
        report["peak_generator_processes"] = sampler.peak_gen_procs
        report["peak_target_rss_mib"] = round(sampler.peak_target / 2**20, 1)
        report["target_bytes_per_user"] = round(sampler.peak_target / users)
        report["max_sockets_connected_at_once"] = sampler.max_connected
        report["min_mem_available_gib"] = round((sampler.min_mem_available or 0) / 2**30, 2)
        if sampler.low_memory:
            lm = sampler.low_memory
            report["stopped_low_memory"] = {
                "after_s": round(lm["t"] - t0, 1), "mem_available_gib": round(lm["mem_available"] / 2**30, 2),
                "gen_rss_mib": round(lm["gen_rss"] / 2**20), "target_rss_mib": round(lm["target_rss"] / 2**20),
                "target_connected": (lm["stats"] or {}).get("sockets", {}).get("connected_now")}
        if sampler.peak_tcp:
            k = sampler.kernel_at_peak
            socks = max(sampler.peak_tcp.get("inuse", 0) - tcp_before, 1)
            report["kernel"] = {
                "tcp_inuse_peak": sampler.peak_tcp.get("inuse"),
                "tcp_mem_pages_at_peak": sampler.peak_tcp.get("mem"),
                "slab_growth_mib": round((k["slab"] - slab_before) / 2**20, 1),
                "slab_bytes_per_tcp_socket": round((k["slab"] - slab_before) / socks),
                "mem_available_min_gib": round(min(k["mem_available"], mem_before["MemAvailable"]) / 2**30, 2),
                # Growth of the slabs sockets use; dentry and kmalloc also grow with anything
                # else the machine does meanwhile (builds), TCP and sock_inode_cache do not.
                "slab_growth_by_cache_mib": {n: round((b - slabs_before.get(n, 0)) / 2**20, 1)
                                             for n, b in sorted(k["slabs"].items())},
                "tcp_slab_bytes_per_socket": round((k["slabs"].get("TCP", 0) - slabs_before.get("TCP", 0)) / socks),
            }
        t_start = None
        if summary_path.exists():
            summary = json.loads(summary_path.read_text())
            m = summary["metrics"]
            t_start = summary.get("meta", {}).get("started_unix_ms", 0) / 1000 or None
            lat = m.get("socketio_event_latency", {}).get("values", {})
            report["fanout_ms"] = {k: lat.get(k) for k in ("med", "p(99)", "max", "count")}
            qr = m.get("question_received", {}).get("values", {})
            report["question_received"] = {"rate": qr.get("rate"), "passes": qr.get("passes"), "fails": qr.get("fails")}
            report["logins"] = series_count(summary, "http_req_duration", "login")
            # Votes sent either way (the scenario's counter); HTTP votes only in older scenarios.
            sent = m.get("votes_sent", {}).get("values", {}).get("count")
            report["votes_sent"] = sent if sent is not None else series_count(summary, "http_req_duration", "vote")
            report["http_req_failed_rate"] = m.get("http_req_failed", {}).get("values", {}).get("rate")
            report["checks_rate"] = m.get("checks", {}).get("values", {}).get("rate")
            report["thresholds_ok"] = all(
                t.get("ok", False) for v in m.values() for t in v.get("thresholds", {}).values())
            cd = m.get("socketio_connect_duration", {}).get("values", {})
            report["socketio_connect_ms"] = {k: cd.get(k) for k in ("med", "p(99)", "max", "count")}
            report["duration_s"] = summary.get("meta", {}).get("duration_ms", 0) / 1000
        journals = list(results.glob("*/timeseries.jsonl")) + list(results.glob("*/metrics.jsonl"))
        if journals:
            votes = ("http_reqs", "vote") if args.vote_via == "http" else ("votes_sent", None)
            report["peak_votes_per_s"] = round(peak_rate(journals[0], *votes))
            report["peak_votes_per_s_1s_tick"] = round(peak_rate(journals[0], *votes, 1))
            report["peak_logins_per_s"] = round(peak_rate(journals[0], "http_reqs", "login"))
            report["run_disconnects"] = disconnects_by_reason(journals[0])
        if t_start and sampler.all_connected_at:
            report["all_connected_after_s"] = round(sampler.all_connected_at - t_start, 1)
        if t_start and sampler.broadcast_at:
            report["broadcast_after_s"] = round(sampler.broadcast_at - t_start, 1)
        report["checks"] = agreement(report, final, users)
        report["timeline"] = sampler.timeline[:: max(1, len(sampler.timeline) // 120)]
    finally:
        if sampler:
            sampler.stop.set()
        for p in [runner, *agent_procs, controller]:
            if p and p.returncode is None:
                stop(p, signal.SIGKILL, 5)
        report["target_cpu_s"] = round(stop(target, signal.SIGINT, 30), 1) if target else None
        restore_sysctls(old_sysctls)
        for procs in cpu_groups.values():
            limit_cpu_group(procs, None)
            weigh_cpu_group(procs, 1)
        remove_cpu_groups(cpu_groups)
    text = json.dumps(report, indent=1)
    if args.json:
        Path(args.json).write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k != "timeline"}, indent=1))
    print(markdown_row(report))
    if not args.keep:
        print(f"logs kept in {work} (delete when done)", file=sys.stderr)
    ok = report.get("checks", {}).get("all_ok", False)
    sys.exit(0 if ok else 1)


def agreement(r, s, users):
    """The run's summary against the target's stats: every viewer logged in, connected
    (about 80/20), got the question and voted once."""
    c = {}
    if not s:
        return {"all_ok": False, "error": "no target stats"}
    logins = s["logins"]["guest"] + s["logins"]["sns"]
    total = s["sockets"]["total"]
    connected = total["websocket"] + total["polling"]
    c["target_logins"] = logins
    c["target_socketio_connects"] = connected
    c["target_polling_share"] = round(total["polling"] / connected, 3) if connected else None
    c["target_votes"] = s["votes"]
    c["target_duplicate_votes"] = s["duplicate_votes"]
    c["target_questions_delivered"] = s["questions_delivered"]
    c["target_broadcasts"] = s["broadcasts"]
    checks = {
        "all logged in (target)": logins == users,
        "run and target agree on logins": r.get("logins") == logins,
        "all connected over Socket.IO (target)": connected == users,
        "polling share 20% +- 2%": c["target_polling_share"] is not None and abs(c["target_polling_share"] - 0.2) < 0.02,
        "one broadcast": s["broadcasts"] == 1,
        "question delivered to all (target)": s["questions_delivered"] == users,
        "question received by all (run)": (r.get("question_received") or {}).get("passes") == users,
        "all voted (target)": s["votes"] == users,
        "run and target agree on votes": r.get("votes_sent") == s["votes"] + s["duplicate_votes"],
        "0 duplicate votes": s["duplicate_votes"] == 0,
    }
    c["passed"] = {k: v for k, v in checks.items()}
    c["all_ok"] = all(checks.values())
    return c


def markdown_row(r):
    f = r.get("fanout_ms") or {}
    k = r.get("kernel") or {}

    def ms(v):
        return f"{v:,.0f} ms" if isinstance(v, (int, float)) else "-"
    return (
        f"| {r['users']:,} | {r.get('all_connected_after_s', '-')} s (ramp {r['ramp']}) "
        f"| {r.get('peak_generator_rss_mib', 0):,.0f} MiB ({r.get('generator_bytes_per_user', 0) / 1024:.1f} KiB/user, "
        f"{r.get('peak_generator_processes')} procs) | {r.get('generator_cpu_s')} s "
        f"| {ms(f.get('med'))} / {ms(f.get('p(99)'))} / {ms(f.get('max'))} | {r.get('peak_votes_per_s', '-')} "
        f"| {r.get('peak_target_rss_mib', 0):,.0f} MiB ({r.get('target_bytes_per_user', 0) / 1024:.1f} KiB/user) "
        f"| {k.get('slab_growth_mib', '-')} MiB ({k.get('slab_bytes_per_tcp_socket', '-')} B/socket, "
        f"{k.get('tcp_inuse_peak', '-')} TCP) | {'all passed' if r.get('checks', {}).get('all_ok') else 'FAILED'} |"
    )


if __name__ == "__main__":
    main()
