#!/usr/bin/env python3
"""Turns bench/run's raw measurements into bench/results/<date>.json and .md.

usage: report.py RAW_DIR OUT_JSON OUT_MD

RAW_DIR holds, per scenario/target/round, the loadgen output (*.load.json) or pgbench's output
(*.stdout, *.wrap.json, *.pgbench-log/), the monitor's samples (*.monitor.json) and, for skipped
runs, *.skipped. Standard library only.
"""

import datetime
import glob
import json
import os
import re
import statistics
import sys

RAW, OUT_JSON, OUT_MD = sys.argv[1:4]
TARGET_NAMES = {"sluice": "sluice", "pgbouncer": "PgBouncer", "direct": "direct Postgres",
                "pgbouncer_ext": "PgBouncer (-M extended)",
                "sluice_json": "sluice (whole JSON)", "pgbouncer_tp": "PgBouncer (tokio-postgres)",
                "direct_tp": "direct Postgres (tokio-postgres)",
                "sluice_norequest": "sluice, connected but no request yet (for comparison)",
                "sluice_healthz": "sluice GET /healthz (HTTP only, no Postgres)",
                "sluice_always": "sluice, session_reset = \"always\""}


def kv_file(path):
    out = {}
    if os.path.exists(path):
        for line in open(path):
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                out[k] = v
    return out


PARAMS = kv_file(os.path.join(RAW, "params.txt"))
MACHINE = kv_file(os.path.join(RAW, "machine.txt"))
POOL = int(PARAMS.get("pool", 20))


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]


def latency_summary(values_us):
    values = sorted(values_us)
    if not values:
        return None
    return {
        "count": len(values),
        "mean": round(sum(values) / len(values), 1),
        "p50": percentile(values, 0.50),
        "p90": percentile(values, 0.90),
        "p99": percentile(values, 0.99),
        "p999": percentile(values, 0.999),
        "max": values[-1],
    }


def pgbench_latencies(logdir, reconnect):
    """Per-transaction latencies (µs) from pgbench -l logs. With -C, pgbench's own latency
    leaves out the connection; the time between one client's consecutive completions is the
    whole cycle (connect, authenticate, query, disconnect), so that is used instead."""
    per_client = {}
    values = []
    for path in glob.glob(os.path.join(logdir, "log*")):
        for line in open(path):
            f = line.split()
            if len(f) < 6 or not f[2].isdigit():
                continue
            if reconnect:
                per_client.setdefault(int(f[0]), []).append((int(f[1]), int(f[4]) * 1_000_000 + int(f[5])))
            else:
                values.append(int(f[2]))
    if reconnect:
        for rows in per_client.values():
            rows.sort()
            values.extend(b[1] - a[1] for a, b in zip(rows, rows[1:]))
    return values


def pgbench_errors(stdout, stderr):
    errors = {}
    m = re.search(r"number of failed transactions: (\d+)", stdout)
    if m and int(m.group(1)):
        errors["failed_transactions"] = int(m.group(1))
    for line in stderr.splitlines():
        if "too many clients" in line:
            kind = "53300_too_many_clients"
        elif "aborted" in line:
            kind = "client_aborted"
        elif "error" in line.lower() or "fatal" in line.lower():
            kind = re.sub(r"[^a-z0-9]+", "_", line.lower().split("error:")[-1].strip())[:48]
        else:
            continue
        errors[kind] = errors.get(kind, 0) + 1
    return errors


def run_result(scenario, target, rnd):
    """One measurement: the loadgen's or pgbench's numbers plus the monitor's."""
    base = os.path.join(RAW, f"{scenario}.{target}.r{rnd}")
    if os.path.exists(base + ".skipped"):
        return {"skipped": open(base + ".skipped").read().strip()}
    mon = load(base + ".monitor.json") or {}
    res = {"round": rnd}
    loadj = load(base + ".load.json")
    wrapj = load(base + ".wrap.json")
    stdout = open(base + ".stdout").read() if os.path.exists(base + ".stdout") else ""
    stderr = open(base + ".stderr").read() if os.path.exists(base + ".stderr") else ""
    if loadj is not None:
        if "runs" in loadj:  # stream / pgread: several reads of the same query
            runs = loadj["runs"] or [{"error": "no run"}]
            failed = [r for r in runs if r.get("error") or r.get("status", 200) != 200]
            if failed:
                res["error"] = str(failed[0].get("error") or f"status {failed[0].get('status')}")[:300]
            ok = [r for r in runs if r not in failed]
            if ok:
                res.update({
                    "rows": ok[0].get("rows"),
                    "bytes": ok[0].get("bytes") or ok[0].get("value_bytes"),
                    "seconds": round(statistics.median(r["seconds"] for r in ok), 3),
                    "rows_per_s": round(statistics.median(r["rows_per_s"] for r in ok)),
                    "complete": all(r.get("complete") for r in ok) and all(r.get("rows") == ok[0].get("rows") for r in ok),
                    "reads": len(ok),
                })
                fb = [r["first_byte_ms"] for r in ok if r.get("first_byte_ms") is not None]
                if fb:
                    res["first_byte_ms"] = round(statistics.median(fb), 1)
            res["format"] = loadj.get("format") or loadj.get("mode")
        else:
            res.update({
                "tool": "loadgen " + loadj.get("mode", ""),
                "clients": loadj.get("clients"),
                "ok": loadj.get("ok"),
                "failed": loadj.get("failed"),
                "errors": loadj.get("errors", {}),
                "throughput_rps": loadj.get("throughput_rps"),
                "window_s": loadj.get("window_s"),
                "latency_us": loadj.get("latency_us"),
                "connects": loadj.get("connects"),
            })
        load_cpu, load_wall = loadj.get("cpu_s"), loadj.get("wall_s") or mon.get("wall_s")
    elif wrapj is not None:
        logdir = base + ".pgbench-log"
        reconnect = " -C" in stdout or "reconnection" in stdout or scenario.startswith("cold")
        tps = re.search(r"tps = ([0-9.]+)", stdout)
        processed = re.search(r"number of transactions actually processed: (\d+)", stdout)
        clients = re.search(r"number of clients: (\d+)", stdout)
        errors = pgbench_errors(stdout, stderr)
        res.update({
            "tool": "pgbench" + (" -C" if reconnect else ""),
            "clients": int(clients.group(1)) if clients else None,
            "ok": int(processed.group(1)) if processed else 0,
            "failed": sum(errors.values()),
            "errors": errors,
            "throughput_rps": float(tps.group(1)) if tps else 0.0,
            "latency_us": latency_summary(pgbench_latencies(logdir, reconnect)),
            "exit_code": wrapj.get("exit_code"),
        })
        if not tps:
            res["error"] = (stderr.strip().splitlines() or ["pgbench printed no tps"])[-1][:300]
        load_cpu, load_wall = wrapj.get("cpu_s"), wrapj.get("wall_s")
    else:
        return {"round": rnd, "error": (stderr.strip().splitlines() or ["no output"])[-1][:300]}
    cpu = mon.get("cpu_s") or {}
    wall = mon.get("wall_s") or 0
    if wall:
        res["cpu_cores"] = {
            "load_generator": round(load_cpu / load_wall, 2) if load_cpu and load_wall else None,
            "gateway": round(cpu["gateway"] / wall, 2) if cpu.get("gateway") is not None else None,
            "postgres": round(cpu.get("postgres", 0) / wall, 2),
            "machine": round(cpu.get("machine_busy", 0) / wall, 2),
        }
    # Gateway CPU per request: the gateway's CPU time over the phase (from /proc) per second,
    # divided by the requests completed per second.
    if (res.get("cpu_cores") or {}).get("gateway") is not None and res.get("throughput_rps"):
        res["gateway_cpu_us_per_req"] = round(cpu["gateway"] / wall / res["throughput_rps"] * 1e6, 1)
    if res.get("cpu_cores"):
        c = res["cpu_cores"]
        known = sum(v for k, v in c.items() if k != "machine" and v is not None)
        c["other"] = round(max(0.0, c["machine"] - known), 2)
    res["listen_overflows"] = mon.get("listen_overflows")
    res["peak_backends"] = mon.get("peak_backends")
    res["gateway_rss_kb_start"] = mon.get("gateway_rss_kb_start")
    res["gateway_rss_kb_peak"] = mon.get("gateway_rss_kb_peak")
    res["gateway_hwm_kb"] = mon.get("gateway_hwm_kb")
    return res


def rounds_of(scenario, target):
    out = []
    for path in sorted(glob.glob(os.path.join(RAW, f"{scenario}.{target}.r*.*"))):
        m = re.search(r"\.r(\d+)\.", path)
        if m and int(m.group(1)) not in out:
            out.append(int(m.group(1)))
    return [run_result(scenario, target, r) for r in sorted(out)]


def mean(values, digits=1):
    values = [v for v in values if v is not None]
    return round(statistics.mean(values), digits) if values else None


def median(values, digits=1):
    """The rounds' median: one round the shared machine slowed does not move it (with two
    rounds it is their mean)."""
    values = [v for v in values if v is not None]
    return round(statistics.median(values), digits) if values else None


def aggregate(runs):
    """Median of the rounds for rates, CPU and percentiles; sums for errors; maxima for peaks."""
    good = [r for r in runs if "skipped" not in r and "error" not in r]
    if not good:
        reason = next((r.get("skipped") or r.get("error") for r in runs if r.get("skipped") or r.get("error")), "not run")
        return {"skipped" if any("skipped" in r for r in runs) else "error": reason, "rounds": runs}
    agg = {"rounds": runs, "n": len(good)}
    for key in ("throughput_rps", "rows_per_s", "gateway_cpu_us_per_req"):
        if any(r.get(key) is not None for r in good):
            agg[key] = median([r.get(key) for r in good])
    lats = [r["latency_us"] for r in good if r.get("latency_us")]
    if lats:
        agg["latency_us"] = {q: median([l.get(q) for l in lats]) for q in ("p50", "p90", "p99", "p999", "max", "mean")}
    errors = {}
    for r in good:
        for k, v in (r.get("errors") or {}).items():
            errors[k] = errors.get(k, 0) + v
    agg["errors"] = errors
    agg["ok"] = sum(r.get("ok") or 0 for r in good)
    agg["failed"] = sum(r.get("failed") or 0 for r in good)
    lo = [r.get("listen_overflows") for r in good if r.get("listen_overflows") is not None]
    agg["listen_overflows"] = sum(lo) if lo else None
    peaks = [r.get("peak_backends") for r in good if r.get("peak_backends") is not None]
    agg["peak_backends"] = max(peaks) if peaks else None
    rss = [r.get("gateway_rss_kb_peak") for r in good if r.get("gateway_rss_kb_peak")]
    agg["gateway_rss_kb_peak"] = max(rss) if rss else None
    cores = [r["cpu_cores"] for r in good if r.get("cpu_cores")]
    if cores:
        agg["cpu_cores"] = {k: median([c.get(k) for c in cores], 2) for k in ("load_generator", "gateway", "postgres", "other", "machine")}
    for key in ("rows", "bytes", "seconds", "first_byte_ms", "clients", "tool", "format"):
        vals = [r.get(key) for r in good if r.get(key) is not None]
        if vals:
            agg[key] = mean(vals) if isinstance(vals[0], (int, float)) and not isinstance(vals[0], bool) else vals[0]
    return agg


def ratio(a, b):
    return round(a / b, 2) if a and b else None


scenarios = {}
for scen in ("warm", "warm_tls", "cold_plain", "cold_tls", "burst", "single"):
    names = ("sluice", "pgbouncer", "direct") + (("pgbouncer_tp", "direct_tp") if scen.startswith("cold") else ())
    targets = {t: aggregate(rounds_of(scen, t)) for t in names}
    compare = dict(targets)
    ext = aggregate(rounds_of(scen, "pgbouncer_ext"))
    if ext.get("throughput_rps"):
        # pgbench through PgBouncer in both protocols: the faster one is PgBouncer's number.
        targets = {"sluice": targets["sluice"], "pgbouncer": targets["pgbouncer"], "pgbouncer_ext": ext,
                   **{k: v for k, v in targets.items() if k not in ("sluice", "pgbouncer")}}
        faster = max(("pgbouncer", "pgbouncer_ext"), key=lambda k: targets[k].get("throughput_rps") or 0)
        compare["pgbouncer"] = targets[faster]
        targets[faster]["faster_mode"] = True
    s = targets["sluice"]
    ratios = {}
    for other_name in names[1:]:
        other = compare[other_name]
        r = {"throughput": ratio(s.get("throughput_rps"), other.get("throughput_rps")),
             "gateway_cpu_per_req": ratio(s.get("gateway_cpu_us_per_req"), other.get("gateway_cpu_us_per_req"))}
        for q in ("p50", "p99", "p999"):
            r[q] = ratio((s.get("latency_us") or {}).get(q), (other.get("latency_us") or {}).get(q))
        ratios["sluice/" + other_name] = r
    scenarios[scen] = {"targets": targets, "ratios": ratios}

reset = {t: aggregate(rounds_of("reset", t)) for t in ("sluice", "sluice_always")}
scenarios["reset"] = {"targets": reset, "ratios": {"sluice/sluice_always": {
    "throughput": ratio(reset["sluice"].get("throughput_rps"), reset["sluice_always"].get("throughput_rps")),
    **{q: ratio((reset["sluice"].get("latency_us") or {}).get(q), (reset["sluice_always"].get("latency_us") or {}).get(q))
       for q in ("p50", "p99", "p999")}}}}

floor = aggregate(rounds_of("single_http", "sluice"))
if "latency_us" in floor:
    scenarios["single"]["targets"]["sluice_healthz"] = floor

large = {t: aggregate(rounds_of("large", t)) for t in ("sluice", "pgbouncer", "direct", "sluice_json")}
for t, agg in large.items():
    good = [r for r in agg.get("rounds", []) if "skipped" not in r and "error" not in r]
    # Each run has a freshly started gateway: growth = its peak VmRSS minus its VmRSS at the start.
    runs_with_rss = [r for r in good if r.get("gateway_rss_kb_start") is not None and r.get("gateway_rss_kb_peak")]
    if runs_with_rss:
        agg["gateway_rss_kb_baseline"] = max(r["gateway_rss_kb_start"] for r in runs_with_rss)
        agg["gateway_rss_growth_kb"] = max(r["gateway_rss_kb_peak"] - r["gateway_rss_kb_start"] for r in runs_with_rss)
    rates = [r.get("rows_per_s") for r in good if r.get("rows_per_s")]
    if rates:
        agg["rows_per_s"] = round(statistics.median(rates))
    incomplete = [r for r in good if not r.get("complete") or (r.get("rows") or 0) != 100000]
    agg["reads"] = sum(r.get("reads") or 0 for r in good)
    if incomplete:
        agg["incomplete_runs"] = len(incomplete)
scenarios["large"] = {
    "targets": large,
    "ratios": {
        "sluice/pgbouncer": {"rows_per_s": ratio(large["sluice"].get("rows_per_s"), large["pgbouncer"].get("rows_per_s"))},
        "sluice/direct": {"rows_per_s": ratio(large["sluice"].get("rows_per_s"), large["direct"].get("rows_per_s"))},
    },
}

idle = {t: load(os.path.join(RAW, f"idle.{t}.r1.load.json")) for t in ("sluice", "sluice_norequest", "pgbouncer")}
scenarios["idle"] = {"targets": {
    "sluice": idle["sluice"] or {"error": "no result"},
    "sluice_norequest": idle["sluice_norequest"] or {"error": "no result"},
    "pgbouncer": idle["pgbouncer"] or {"error": "no result"},
    "direct": {"skipped": "not applicable: every Postgres connection is a backend process, and max_connections=100"},
}}

# ---- goals ------------------------------------------------------------------------------------


def goal(scenario, text, measured, met, note=""):
    return {"scenario": scenario, "goal": text, "measured": measured,
            "met": met, "note": note}


goals = []
w = scenarios["warm"]["ratios"]
goals.append(goal("warm", "sluice ≥ 1.25 × PgBouncer throughput", w["sluice/pgbouncer"]["throughput"],
                  None if w["sluice/pgbouncer"]["throughput"] is None else w["sluice/pgbouncer"]["throughput"] >= 1.25))
cr = w["sluice/pgbouncer"].get("gateway_cpu_per_req")


def paired_cpu_ratios(scen):
    """sluice's CPU per request over PgBouncer's (its faster mode in that round), round by
    round. The machine's speed drifts over minutes and moves both targets of a round alike, so
    these pairs vary less than the ratio of the two medians."""
    by_round = lambda t: {r["round"]: r for r in rounds_of(scen, t) if "error" not in r and "skipped" not in r}
    s, b, e = by_round("sluice"), by_round("pgbouncer"), by_round("pgbouncer_ext")
    out = []
    for rnd in sorted(s):
        modes = [m for m in (b.get(rnd), e.get(rnd)) if m and m.get("throughput_rps")]
        if not modes or not s[rnd].get("gateway_cpu_us_per_req"):
            continue
        faster = max(modes, key=lambda m: m["throughput_rps"])
        out.append(ratio(s[rnd]["gateway_cpu_us_per_req"], faster.get("gateway_cpu_us_per_req")))
    return [r for r in out if r is not None]


pairs = paired_cpu_ratios("warm")
scenarios["warm"]["paired_cpu_ratios"] = pairs
pair_note = (f"round by round: {', '.join(f'{r:.2f}' for r in pairs)} (median {statistics.median(pairs):.2f})"
             if pairs else "")
goals.append(goal("warm", "sluice's gateway CPU per request ≤ 1.25 × PgBouncer's", cr, None if cr is None else cr <= 1.25,
                  pair_note))
goals.append(goal("warm", "sluice ≥ 0.8 × direct Postgres throughput", w["sluice/direct"]["throughput"],
                  None if w["sluice/direct"]["throughput"] is None else w["sluice/direct"]["throughput"] >= 0.8))
for scen, label in (("cold_plain", "cold, plain"), ("cold_tls", "cold, TLS on both")):
    skipped = scenarios[scen]["targets"]["sluice"].get("skipped")
    note = ("skipped: " + skipped) if skipped else ""
    r = scenarios[scen]["ratios"]["sluice/pgbouncer"]["throughput"]
    goals.append(goal(label, "sluice ≥ 3 × PgBouncer `pgbench -C` throughput", r, None if r is None else r >= 3, note))
    r = scenarios[scen]["ratios"]["sluice/pgbouncer_tp"]["throughput"]
    goals.append(goal(label, "(stricter) sluice ≥ 3 × PgBouncer with a tokio-postgres cold client", r,
                      None if r is None else r >= 3, note))
bs, bb = scenarios["burst"]["targets"]["sluice"], scenarios["burst"]["targets"]["pgbouncer"]
goals.append(goal("burst", "sluice: zero failed requests", bs.get("failed"),
                  None if bs.get("failed") is None else bs.get("failed") == 0))
goals.append(goal("burst", f"sluice: backends never above the budget ({POOL})", bs.get("peak_backends"),
                  None if bs.get("peak_backends") is None else bs["peak_backends"] <= POOL))
p99s, p99b = (bs.get("latency_us") or {}).get("p99"), (bb.get("latency_us") or {}).get("p99")
goals.append(goal("burst", "sluice p99 below PgBouncer's", ratio(p99s, p99b),
                  None if not (p99s and p99b) else p99s < p99b))
ss, sd = scenarios["single"]["targets"]["sluice"], scenarios["single"]["targets"]["direct"]
p50s, p50d = (ss.get("latency_us") or {}).get("p50"), (sd.get("latency_us") or {}).get("p50")
added = round(p50s - p50d, 1) if (p50s and p50d) else None
goals.append(goal("single client", "gateway adds ≤ 60 µs to a direct query's p50", added,
                  None if added is None else added <= 60))
sb = next((a for k, a in scenarios["single"]["targets"].items() if k.startswith("pgbouncer") and a.get("faster_mode")),
          scenarios["single"]["targets"]["pgbouncer"])
p50bb = (sb.get("latency_us") or {}).get("p50")
added_b = round(p50bb - p50d, 1) if (p50bb and p50d) else None
goals.append(goal("single client", "gateway adds no more than PgBouncer to a direct query's p50",
                  None if added is None or added_b is None else round(added - added_b, 1),
                  None if added is None or added_b is None else added <= added_b))
ls, ld = large["sluice"], large["direct"]
lr = ratio(ls.get("rows_per_s"), ld.get("rows_per_s"))
goals.append(goal("large result", "NDJSON ≥ 0.7 × tokio-postgres row rate", lr, None if lr is None else lr >= 0.7,
                  ("skipped: " + ls["skipped"]) if ls.get("skipped") else ""))
growth, nbytes = ls.get("gateway_rss_growth_kb"), ls.get("bytes")
flat = None if growth is None or not nbytes else growth * 1024 <= 0.25 * nbytes
goals.append(goal("large result", "gateway memory flat (peak RSS growth < 1/4 of the bytes streamed)",
                  growth, flat, ("skipped: " + ls["skipped"]) if ls.get("skipped") else ""))
per = (idle["sluice"] or {}).get("bytes_per_connection")
goals.append(goal("idle connections", "≤ 4 KiB of gateway memory per idle keep-alive connection",
                  None if per is None else round(per), None if per is None else per <= 4096))

def text_file(name):
    path = os.path.join(RAW, name)
    return open(path).read().strip() if os.path.exists(path) else ""


logs = {"sluice_warnings": text_file("sluice-log-summary.txt"), "pgbouncer_warnings": text_file("pgbouncer-log-summary.txt")}

result = {
    "date": datetime.date.today().isoformat(),
    "quick": PARAMS.get("quick") == "1",
    "machine": {k: MACHINE.get(k) for k in ("nproc", "cpu_model", "kernel", "os", "memory_kb")},
    "versions": {k: MACHINE.get(k) for k in ("sluice", "sluice_commit", "sluice_build", "postgres", "pgbench", "pgbouncer", "rustc", "openssl")},
    "durations_s": {"build": MACHINE.get("build_s"), "measure": MACHINE.get("measure_s")},
    "parameters": PARAMS,
    "skipped": {k: MACHINE.get(k) for k in ("tls_skip", "ndjson_skip") if MACHINE.get(k)},
    "scenarios": scenarios,
    "goals": goals,
    "logs": logs,
}
with open(OUT_JSON, "w") as f:
    json.dump(result, f, indent=1, ensure_ascii=False)
    f.write("\n")

# ---- Markdown ---------------------------------------------------------------------------------


def us(v):
    if v is None:
        return "–"
    return f"{v:.0f} µs" if v < 1000 else f"{v / 1000:.2f} ms" if v < 100_000 else f"{v / 1000:.0f} ms"


def cpu_us(v):
    return "–" if v is None else f"{v:.1f} µs"


def num(v, unit=""):
    if v is None:
        return "–"
    return f"{v:,.0f}{unit}"


def x(v):
    return "–" if v is None else f"{v:.2f}×"


def errs(agg):
    e = agg.get("errors") or {}
    text = ", ".join(f"{k}: {v:,}" for k, v in sorted(e.items(), key=lambda kv: -kv[1])) if e else "0"
    if agg.get("listen_overflows"):
        # Not errors the client saw, but the cause of 1-second stalls: the listener's accept queue
        # was full and the connection had to wait for a retransmitted SYN-ACK.
        text += f" (accept-queue overflows: {agg['listen_overflows']:,})"
    return text


def cores(agg):
    c = agg.get("cpu_cores")
    if not c:
        return "–"
    f = lambda v: "–" if v is None else f"{v:.2f}"
    return f"{f(c['load_generator'])} / {f(c['gateway'])} / {f(c['postgres'])} / {f(c.get('other'))} / {f(c['machine'])}"


def mib(kb):
    return "–" if kb is None else f"{kb / 1024:.1f} MiB"


lines = []
P = PARAMS
title = f"# sluice benchmark — {result['date']}" + (" (quick smoke run: numbers not meaningful)" if result["quick"] else "")
lines += [title, ""]
m, v = result["machine"], result["versions"]
lines += [
    f"Machine: {m['nproc']} × {m['cpu_model']}, {int(m['memory_kb'] or 0) // 1048576} GiB, {m['os']}, kernel {m['kernel']}. "
    f"{v['sluice']} ({v['sluice_commit']}{', ' + v['sluice_build'] + ' build' if v.get('sluice_build') else ''}), "
    f"{v['postgres']}, {v['pgbouncer']}, {v['rustc']}.",
    "",
    f"Each scenario ran its targets alternately (sluice, PgBouncer, direct), {P.get('rounds')} round(s) (warm: "
    f"{P.get('warm_rounds', P.get('rounds'))}, every other one in reverse order; warm over TLS: 1); the "
    f"numbers are the median of the rounds. Pool/budget {POOL} for sluice and PgBouncer (transaction mode); Postgres max_connections="
    f"{P.get('pg_max_connections')}. Measuring took {MACHINE.get('measure_s')} s (builds {MACHINE.get('build_s')} s).",
    "",
    "**CPU split.** All three programs — load generator, gateway, Postgres — share the machine's "
    f"{m['nproc']} cores. The \"CPU\" column gives cores used on average over the phase: load generator / gateway / "
    "Postgres (all its processes) / other (kernel, anything else running on the machine) / whole machine busy. A load "
    "generator that needs more CPU leaves less for the target, so read the ratios with it.",
    "",
    "## Goals",
    "",
    "| scenario | goal | measured | |",
    "|---|---|---|---|",
]
for g in goals:
    meas = g["measured"]
    if g["goal"].startswith("gateway adds no more"):
        meas_s = "–" if meas is None else f"{meas:+.0f} µs vs PgBouncer"
    elif g["goal"].startswith("gateway adds"):
        meas_s = "–" if meas is None else f"+{meas:.0f} µs"
    elif "memory flat" in g["goal"]:
        meas_s = "–" if meas is None else f"+{meas / 1024:.1f} MiB"
    elif "KiB" in g["goal"]:
        meas_s = "–" if meas is None else f"{meas:,} B"
    elif "backends" in g["goal"] or "failed" in g["goal"]:
        meas_s = "–" if meas is None else f"{meas:,}"
    else:
        meas_s = x(meas)
    if g["note"] and g["met"] is not None:
        meas_s += f" ({g['note']})"
    verdict = "**met**" if g["met"] else "missed" if g["met"] is False else (g["note"] or "not measured")
    lines.append(f"| {g['scenario']} | {g['goal']} | {meas_s} | {verdict} |")
lines.append("")


def load_table(scen, heading, extra_note=""):
    data = scenarios[scen]
    lines.extend([f"## {heading}", ""])
    if extra_note:
        lines.extend([extra_note, ""])
    lines.append("| target | tool | clients | throughput (req/s) | gateway CPU / request | p50 | p99 | p99.9 | errors | peak backends | gateway peak RSS | CPU (cores) |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in data["targets"]:
        a = data["targets"][t]
        if "skipped" in a or "error" in a:
            lines.append(f"| {TARGET_NAMES[t]} | {'skipped' if 'skipped' in a else 'error'}: {a.get('skipped') or a.get('error')} ||||||||||| ")
            continue
        l = a.get("latency_us") or {}
        lines.append(
            f"| {TARGET_NAMES[t]}{' (the faster mode)' if a.get('faster_mode') else ''} | {a.get('tool', '')} | {num(a.get('clients'))} | "
            f"{num(a.get('throughput_rps'))} | {cpu_us(a.get('gateway_cpu_us_per_req'))} | {us(l.get('p50'))} | "
            f"{us(l.get('p99'))} | {us(l.get('p999'))} | {errs(a)} | {num(a.get('peak_backends'))} | {mib(a.get('gateway_rss_kb_peak'))} | {cores(a)} |")
    for k, r in data["ratios"].items():
        name = "sluice / " + TARGET_NAMES[k.split("/")[1]]
        if k == "sluice/pgbouncer" and "pgbouncer_ext" in data["targets"]:
            name += " (the faster mode)"
        lines.append(f"| *{name}* | | | *{x(r['throughput'])}* | *{x(r.get('gateway_cpu_per_req'))}* | *{x(r['p50'])}* | *{x(r['p99'])}* | *{x(r['p999'])}* | | | | |")
    lines.append("")


load_table("warm", f"1. Warm — persistent connections",
           f"{P.get('warm_clients')} clients on keep-alive HTTP (sluice) and `pgbench -S`-style `-c {P.get('warm_clients')}` "
           f"(PgBouncer, `-M {P.get('bouncer_mode')}` and `-M extended`; the ratio is against the faster); direct Postgres with "
           f"{P.get('warm_direct_clients')} clients (`-M {P.get('direct_mode')}`). "
           f"{P.get('warm_s')} s measured after {P.get('warm_up_s')} s of warm-up; pgbench's percentiles come from a second run "
           "with `-l`, its throughput from the run without. sluice runs with its default logging (an access line per request). "
           "Gateway CPU per request: the gateway process's CPU time over the phase (`/proc/<pid>/stat`) per second, divided by "
           "the requests per second.")
if any("skipped" not in a and "error" not in a for a in reset.values()):
    load_table("reset", "1c. Session reset — what `session_reset = \"always\"` costs",
               "The warm load (1) through two tenants of one gateway: `auto` (the default; this select needs no "
               "reset) and `always` (the session reset pipelined behind every statement: one more simple-protocol "
               "round of work for Postgres per request, no extra round trip). The CPU column's Postgres share is "
               "the cost that matters.")
load_table("warm_tls", "1b. Warm over TLS — persistent connections, TLS on each",
           f"As 1 with TLS on every client connection (one full handshake each, then keep-alive): HTTPS to sluice "
           f"(HTTP/1.1), `PGSSLMODE=require` to PgBouncer and Postgres. Next to 1 and 2b it shows what TLS costs "
           "when connections are reused and when they are not.")
load_table("cold_plain", "2a. Cold — a new connection per request, plain",
           f"{P.get('cold_clients')} concurrent clients, each request on a new connection: a new TCP connection per HTTP request "
           "(sluice), `pgbench -C` (PgBouncer, direct: TCP + SCRAM-SHA-256 every time; `-j` = clients so that libpq's "
           "blocking connect does not serialise them). Latency is the whole cycle: connect, authenticate, query, close "
           "(for pgbench, the time between a client's consecutive completions in its `-l` log, since pgbench's own "
           "latency leaves the connection out). The *tokio-postgres* rows repeat PgBouncer and direct with an async Rust "
           "client (connect + SCRAM + one unnamed-statement query + close per request): libpq's client-side SCRAM is "
           "CPU-heavy here and the load generator's CPU column shows how much it takes from the target.")
load_table("cold_tls", "2b. Cold — a new connection per request, TLS",
           "As 2a with a full TLS handshake per request (TLS 1.3, ECDSA P-256, no session resumption): HTTPS to sluice, "
           "`PGSSLMODE=require` to PgBouncer (`client_tls_sslmode`) and Postgres (`ssl=on`).")
load_table("burst", "3. Burst — 1,000 clients at once against a pool of 20",
           f"{P.get('burst_clients')} clients released at the same instant, each opening a connection and sending "
           f"{P.get('burst_requests_per_client')} requests (keep-alive HTTP for sluice; tokio-postgres, SCRAM, unnamed "
           "statements for PgBouncer and direct). Postgres max_connections=100: direct clients beyond it are refused "
           "with 53300 and their requests never run (`unserved_after_refusal`). Latency includes the connect for each "
           "client's first request; throughput is requests served over the time to the last one.")
load_table("single", "4. Single client latency — sequential requests",
           f"One client, one request at a time, {P.get('single_s')} s per round: keep-alive HTTP (sluice), pgbench -c 1 "
           f"(`-M {P.get('bouncer_mode')}` and `-M extended` through PgBouncer, `-M {P.get('direct_mode')}` direct). The last row is the "
           "same HTTP client against sluice's `GET /healthz`: the HTTP and runtime floor, without the pool or Postgres.")

lines += ["## 5. Large result — 100,000 rows × 10 mixed columns", "",
          "`select * from bench_wide` (int4, int8, text, bool, float8, numeric, timestamptz, uuid, jsonb, date). sluice: "
          "`Accept: application/x-ndjson`, `rowMode: \"array\"`, read to the last line; PgBouncer and direct: tokio-postgres "
          "reading the same query in text format (simple query protocol), the reference row rate. The whole-JSON response "
          f"(not streamed, limited by max_response_bytes) is shown for comparison. Each round reads the query "
          f"{P.get('large_repeat')} times on one connection through a freshly started gateway; rows/s is the median read. "
          "Memory: the gateway's VmRSS sampled every 20 ms; growth is the peak minus the VmRSS at the round's start.", "",
          "| target | rows/s | rows | bytes | seconds | first byte | gateway RSS baseline | peak growth | CPU (cores) |",
          "|---|---|---|---|---|---|---|---|---|"]
for t in ("sluice", "sluice_json", "pgbouncer", "direct"):
    a = large[t]
    if "skipped" in a or "error" in a:
        lines.append(f"| {TARGET_NAMES[t]} | {'skipped' if 'skipped' in a else 'error'}: {a.get('skipped') or a.get('error')} |||||||| ")
        continue
    nb = a.get("bytes") or a.get("value_bytes")
    size = "–" if not nb else f"{nb / 1048576:.1f} MiB"
    secs = "–" if a.get("seconds") is None else f"{a['seconds']:.2f}"
    fb = "–" if a.get("first_byte_ms") is None else f"{a['first_byte_ms']:.1f} ms"
    growth_s = "–" if a.get("gateway_rss_growth_kb") is None else "+" + mib(a["gateway_rss_growth_kb"])
    inc = f" (incomplete runs: {a['incomplete_runs']})" if a.get("incomplete_runs") else ""
    lines.append(
        f"| {TARGET_NAMES[t]} | {num(a.get('rows_per_s'))} | {num(a.get('rows'))}{inc} | {size} | {secs} | {fb} | "
        f"{mib(a.get('gateway_rss_kb_baseline'))} | {growth_s} | {cores(a)} |")
r = scenarios["large"]["ratios"]
lines += [f"| *sluice NDJSON / PgBouncer* | *{x(r['sluice/pgbouncer']['rows_per_s'])}* |||||||",
          f"| *sluice NDJSON / direct* | *{x(r['sluice/direct']['rows_per_s'])}* |||||||", ""]

lines += ["## 6. Idle keep-alive connections", "",
          f"Connections opened against a freshly started gateway, one query sent on each, then held idle for {P.get('idle_hold_s')} s; "
          "memory is the gateway's VmRSS after they are all open minus before. The second row opens connections that never "
          "send a request (sluice drops those after `header_read_timeout_ms`, 10 s, which is why fewer are still open). PgBouncer: idle client connections (SCRAM login and one "
          "query each), fewer of them because each login costs the client a PBKDF2 computation. Direct Postgres: not "
          "applicable (a process per connection, 100 at most).", "",
          "| target | connections | still open after hold | RSS before | RSS with all open | per connection |",
          "|---|---|---|---|---|---|"]
for t in ("sluice", "sluice_norequest", "pgbouncer"):
    a = idle[t]
    if not a:
        lines.append(f"| {TARGET_NAMES[t]} | error: no result |||||")
        continue
    e = a.get("errors") or {}
    est = f"{a.get('established', 0):,} of {a.get('connections_requested', 0):,}" + (f" (errors: {e})" if e else "")
    per = a.get("bytes_per_connection")
    lines.append(f"| {TARGET_NAMES[t]} | {est} | {num(a.get('still_open_after_hold'))} after {a.get('hold_s', P.get('idle_hold_s'))} s | "
                 f"{mib(a.get('gateway_rss_kb_before'))} | {mib(a.get('gateway_rss_kb_open'))} | "
                 f"{'–' if per is None else f'{per:,.0f} B'} |")
lines.append("| direct Postgres | not applicable ||||| ")
lines.append("")
if result["skipped"]:
    lines += ["## Skipped", ""] + [f"- {k}: {v}" for k, v in result["skipped"].items()] + [""]
lines += ["## What the gateways logged", "",
          "sluice runs with its default logging (info: an access line per request, counted, not shown); "
          "its other lines are below, identical ones counted. PgBouncer: its WARNING and ERROR lines.", ""]
for name, key in (("sluice", "sluice_warnings"), ("PgBouncer", "pgbouncer_warnings")):
    text = logs[key]
    if text:
        lines += [f"{name}:", "", "```", *[l[:300] for l in text.splitlines()], "```", ""]
    else:
        lines += [f"{name}: nothing.", ""]

with open(OUT_MD, "w") as f:
    f.write("\n".join(lines))
