#!/usr/bin/env bash
# CPU per connected idle Socket.IO viewer, each side (benches/RESULTS.md, "Idle cost per
# connected viewer"). N users of transport T connect over RAMP (10 s) to `punisher target
# --processes TPROCS` (2) on 127.0.0.1 (loopback only) from AGENTS (2) agent processes,
# hold, and the CPU of the target, the run and its agents is measured over 30 s of idle
# from IDLE_AT (25 s), with machine busy cores and new TCP connections.
# Bounded: the users leave after HOLD seconds (default 80) and everything is stopped.
#   N=10000 T=polling BIN=target/release/punisher bash benches/idle_cpu.sh
#   N=100000 TPROCS=6 AGENTS=6 RAMP=60s IDLE_AT=80 HOLD=120 bash benches/idle_cpu.sh
# MAP=spread spreads users over the target processes with `spread()` (default: id modulo).
# EXTRA=timers|http|all adds what a waiting tv_show viewer holds (see the scenario).
# GRID=100ms passes --heartbeat-grid to the target (Engine.IO pings on a shared grid).
set -euo pipefail
N=${N:-10000}; T=${T:-websocket}; HOLD=${HOLD:-80}; PORT=${PORT:-9100}
TPROCS=${TPROCS:-2}; AGENTS=${AGENTS:-2}; RAMP=${RAMP:-10s}
BIN=${BIN:-target/release/punisher}; SCENARIO="$(dirname "$0")/scenarios/idle_sockets.js"
OUT=$(mktemp -d /tmp/idle-cpu-XXXX)
"$BIN" target --listen 127.0.0.1:$PORT --processes "$TPROCS" ${GRID:+--heartbeat-grid "$GRID"} \
  > "$OUT/target.log" 2>&1 &
TP=$!
trap 'kill $TP 2>/dev/null || true; wait $TP 2>/dev/null || true' EXIT
# Every listener up before anyone connects (bounded: 20 s).
API=""
for i in $(seq 0 $((TPROCS - 1))); do API="$API${API:+,}http://127.0.0.1:$((PORT + i))"; done
for _ in $(seq 1 200); do
  up=0
  for i in $(seq 0 $((TPROCS - 1))); do
    curl -sf "http://127.0.0.1:$((PORT + i))/admin/stats" >/dev/null && up=$((up + 1))
  done
  [ "$up" = "$TPROCS" ] && break
  sleep 0.1
done
"$BIN" run "$SCENARIO" --users "$N" --ramp-up "$RAMP" --agents "$AGENTS" --no-tui --no-results \
  -e API="$API" -e TRANSPORT="$T" -e HOLD="$HOLD" -e EXTRA="${EXTRA:-}" -e MAP="${MAP:-}" \
  > "$OUT/run.log" 2>&1 &
RP=$!
sleep "${IDLE_AT:-25}"
# pid, CPU ticks, role (target/agent/run) of every punisher process
snap() {
  for p in $(pgrep -f "$(basename "$BIN") (agent|target|run)"); do
    echo "$p $(awk '{print $14+$15}' /proc/$p/stat 2>/dev/null) $(tr '\0' ' ' < /proc/$p/cmdline | awk '{print $2}')"
  done
}
nstat -n >/dev/null 2>&1 || true
snap > "$OUT/cpu0"; date +%s.%N > "$OUT/t0"; head -1 /proc/stat > "$OUT/stat0"
sleep 30
snap > "$OUT/cpu1"; date +%s.%N > "$OUT/t1"; head -1 /proc/stat > "$OUT/stat1"
nstat > "$OUT/nstat" 2>/dev/null || true
# Sockets whose peer closed and we did not (an idle pooled HTTP connection after the
# target's keep-alive timeout): a file and kernel memory each.
{ ss -tan state close-wait 2>/dev/null || true; } | tail -n +2 | wc -l > "$OUT/close_wait"
curl -s "http://127.0.0.1:$PORT/admin/stats" > "$OUT/stats.json" || true
wait $RP || true
python3 - "$OUT" "$N" "$T" <<'PY'
import json, sys
o, n, t = sys.argv[1], sys.argv[2], sys.argv[3]
secs = float(open(o + '/t1').read()) - float(open(o + '/t0').read())
def rd(f):
    return {l.split()[0]: (int(l.split()[1]), l.split()[2]) for l in open(f) if len(l.split()) == 3}
a, b, roles = rd(o + '/cpu0'), rd(o + '/cpu1'), {}
for p, (c, role) in b.items():
    if p in a:
        roles[role] = roles.get(role, 0) + (c - a[p][0]) / 100 / secs
s0 = list(map(int, open(o + '/stat0').read().split()[1:]))
s1 = list(map(int, open(o + '/stat1').read().split()[1:]))
d = [y - x for x, y in zip(s0, s1)]
busy = (sum(d[:8]) - d[3] - d[4]) / 100 / secs
nst = {l.split()[0]: int(l.split()[1]) for l in open(o + '/nstat') if len(l.split()) >= 2 and l.split()[1].isdigit()}
raw = open(o + '/stats.json').read()
stats = json.loads(raw).get('sockets', {}) if raw else {}
print(f"{n} {t} idle: " + ' '.join(f"{k} {v:.3f}" for k, v in sorted(roles.items()))
      + f" | machine busy {busy:.3f} cores | new TCP conn/s {nst.get('TcpActiveOpens', 0) / secs:.0f}"
      + f" | TCP segments in/s {nst.get('TcpInSegs', 0) / secs:.0f} | connected {stats.get('connected_now')}"
      + f" | CLOSE-WAIT sockets {open(o + '/close_wait').read().strip()}")
PY
