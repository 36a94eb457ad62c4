"""Shared helpers for the load benchmarks: start servers, run a command and measure its
CPU time and peak RSS, take medians. Loopback only; every run is bounded in time."""

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
PUNISHER = TARGET_DIR / "release" / "punisher"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def build_release():
    subprocess.run(["cargo", "build", "--release", "-p", "punisher-cli"], cwd=ROOT, check=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def stat_fields(path):
    """The fields of a /proc/PID/stat (or /proc/PID/task/TID/stat) file from field 3, the
    state, on; None when the process or thread is gone. The command name before them is cut
    at its last ')', since it may hold spaces and parentheses itself."""
    try:
        with open(path) as f:
            st = f.read()
    except OSError:
        return None
    return st[st.rfind(")") + 2:].split()


def rss_and_cpu(pid):
    """(RSS bytes, user+sys CPU seconds of all its threads) of one process, or None when it
    is gone."""
    fields = stat_fields(f"/proc/{pid}/stat")
    if fields is None:
        return None
    # fields[0] is field 3 (state): utime is field 14, stime 15, rss 24.
    utime, stime, rss = int(fields[11]), int(fields[12]), int(fields[21])
    return rss * PAGE, (utime + stime) / CLK_TCK


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        return 0
    return 0


class Measured:
    """A finished command: CPU seconds (user+sys), peak RSS in KB, wall seconds, output."""

    def __init__(self, cpu, peak_rss_kb, wall, stdout, stderr, code):
        self.cpu, self.peak_rss_kb, self.wall = cpu, peak_rss_kb, wall
        self.stdout, self.stderr, self.code = stdout, stderr, code


def measure(cmd, timeout, env=None, sample_rss=False, rss_at=None):
    """Runs cmd to its end (killed after `timeout` s) and returns its CPU seconds (user+sys,
    from wait4), peak RSS (sampled every 100 ms when sample_rss) and the RSS `rss_at` s in."""
    start = time.time()
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    killer = threading.Timer(timeout, proc.kill)
    killer.start()
    peak = [0]
    at = [None]
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            r = rss_kb(proc.pid)
            peak[0] = max(peak[0], r)
            if rss_at is not None and at[0] is None and time.time() - start >= rss_at:
                at[0] = r
            time.sleep(0.1)

    t = threading.Thread(target=sampler, daemon=True) if sample_rss else None
    if t:
        t.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        killer.cancel()
        stop.set()
        if t:
            t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    err.seek(0)
    m = Measured(usage.ru_utime + usage.ru_stime, peak[0], time.time() - start,
                 out.read().decode(errors="replace"), err.read().decode(errors="replace"), proc.returncode)
    m.rss_at = at[0]
    return m


def median(values):
    return statistics.median(values)


class Server:
    """A background server process, stopped on exit."""

    def __init__(self, cmd, port, env=None):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                                     preexec_fn=os.setsid)
        wait_port(port)

    def pid(self):
        return self.proc.pid

    def stop(self):
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_nginx():
    """nginx from benches/nginx.conf on a free port: `return 200 "ok"`, keep-alive, 1 worker."""
    if not shutil.which("nginx") and not Path("/usr/sbin/nginx").exists():
        sys.exit("nginx is not installed: apt-get install -y nginx")
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix="punisher-nginx-"))
    conf = (ROOT / "benches" / "nginx.conf").read_text().replace("__PORT__", str(port)).replace("__DIR__", str(work))
    (work / "nginx.conf").write_text(conf)
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    return Server([nginx, "-c", str(work / "nginx.conf"), "-p", str(work), "-g", "daemon off;"], port), port


def summary_metric(path, name, stat):
    data = json.loads(Path(path).read_text())
    return data["metrics"][name]["values"][stat]
