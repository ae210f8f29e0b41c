#!/usr/bin/env python3
"""Soak: mixed load for N minutes, a reload every minute, a Postgres restart every ten.

usage: bench/soak.py [--sluice target/release/sluice] [--minutes 30] [--workers 32]
                     [--think-ms 200] [--reload-every 60] [--restart-every 10] [--warmup 2]
                     [--out bench/results/soak-<date>]

Starts `sluice dev --json` for a throwaway Postgres (only its database is used), makes a login
role `soak` there with psql, then a `sluice serve` of its own in front of it: upstream budget
`max_connections = 16`, tenant `a` (pool_size alternating 8 / 14 on each reload) and tenant `b`
(pool_size 6), so the pools add up to more than the budget half of the time. Then, for --minutes:

  load      --workers asyncio clients (keep-alive HTTP/1.1, a random pause of 0-2 x --think-ms
            between requests; every fourth one uses tenant b), each picking per request:
            /v1/query with parameters, /v1/batch (insert + select), an interactive transaction
            (begin, one or two queries, commit or rollback), an NDJSON stream of 3,000 rows read
            to its last line, or a client that sends `select pg_sleep(2)` on a new connection and
            closes the socket after 200 ms
  reload    every --reload-every seconds: rewrite the config file (tenant a's pool_size), then
            POST /v1/admin/reload with an admin key
  restart   every --restart-every minutes: `pg_ctl restart -m fast` on the data directory
            (`show data_directory`), run as the user that owns it
  sample    every second: gateway VmRSS and open file descriptors (/proc), GET /v1/admin/pools,
            and the backends of role `soak` in pg_stat_activity (one psql process)

Every request's outcome is counted: its HTTP status (503/429 noting Retry-After), or
conn_error/timeout when no status came back, or `disconnected` for the deliberate disconnects.
Pass criteria, each printed PASS/FAIL: RSS drift < 5 % between the end of warm-up and the end
(medians over 30 s windows), FDs flat (same, or within 16 of the warm-up figure), backends <=
budget at every sample, every request answered. Writes <out>.md (per-minute table) and <out>.json
(every sample and event). Standard library only; traffic goes to 127.0.0.1 only, every phase is
bounded in time.
"""

import argparse
import asyncio
import datetime
import glob
import json
import os
import pwd
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

from harness import free_port, new_key, rss_kb, serve, start_dev, stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUDGET = 16
POOL_A = (8, 14)
POOL_B = 6
REQUEST_TIMEOUT = 30.0
WEIGHTS = [("query", 45), ("batch", 18), ("tx", 15), ("ndjson", 12), ("disconnect", 10)]


def pg_bin(name):
    env = os.environ.get("SLUICE_PG_BIN")
    if env:
        return os.path.join(env, name)
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    if dirs:
        return os.path.join(dirs[-1], name)
    return name


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def with_user(url, user, password):
    u = urllib.parse.urlsplit(url)
    host = u.hostname + (f":{u.port}" if u.port else "")
    return urllib.parse.urlunsplit((u.scheme, f"{user}:{password}@{host}", u.path, u.query, u.fragment))


def psql(url, sql, timeout=10):
    out = subprocess.run([pg_bin("psql"), url, "-XAtqc", sql], capture_output=True, text=True,
                         timeout=timeout, check=True)
    return out.stdout.strip()


class Http:
    """One keep-alive HTTP/1.1 connection (reconnects when the server closed it)."""

    def __init__(self, port):
        self.port, self.reader, self.writer = port, None, None

    def close(self):
        if self.writer:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, method, path, key, body=None, accept=None, close=False):
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {path} HTTP/1.1\r\nhost: soak\r\nauthorization: Bearer {key}\r\n"
        if body is not None:
            head += "content-type: application/json\r\n"
        if accept:
            head += f"accept: {accept}\r\n"
        if close:
            head += "connection: close\r\n"
        head += f"content-length: {len(data)}\r\n\r\n"
        self.writer.write(head.encode() + data)
        await self.writer.drain()
        line = await self.reader.readline()
        if not line:
            raise ConnectionResetError("closed before the status line")
        status = int(line.split()[1])
        headers = {}
        while True:
            h = await self.reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                if size == 0:
                    while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append((await self.reader.readexactly(size + 2))[:-2])
            payload = b"".join(parts)
        elif "content-length" in headers:
            payload = await self.reader.readexactly(int(headers["content-length"]))
        else:
            payload = await self.reader.read()
            self.close()
        if close or headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, payload


class Soak:
    def __init__(self, args, port, keys, admin_key, su_url, config, config_args, gateway_pid):
        self.args, self.port, self.keys, self.admin_key = args, port, keys, admin_key
        self.su_url, self.config, self.config_args, self.pid = su_url, config, config_args, gateway_pid
        self.t0 = time.monotonic()
        self.stop = False
        self.outcomes = []  # (t, kind, outcome)
        self.samples = []
        self.events = []

    def now(self):
        return time.monotonic() - self.t0

    def record(self, kind, outcome):
        self.outcomes.append((round(self.now(), 3), kind, outcome))

    async def call(self, http, kind, method, path, key, body=None, accept=None, close=False):
        """One request; returns (status, payload) or None when no status came back."""
        try:
            status, headers, payload = await asyncio.wait_for(
                http.request(method, path, key, body, accept, close), REQUEST_TIMEOUT)
        except asyncio.TimeoutError:
            http.close()
            self.record(kind, "timeout")
            return None
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as e:
            http.close()
            self.record(kind, "conn_error")
            self.events.append({"t": round(self.now(), 3), "event": "conn_error", "kind": kind,
                                "error": f"{type(e).__name__}: {e}"})
            return None
        outcome = str(status)
        if status in (429, 503) and "retry-after" not in headers:
            outcome += "_no_retry_after"
        if kind == "ndjson" and status == 200:
            last = payload.rstrip(b"\n").rsplit(b"\n", 1)[-1]
            if b'"command"' not in last:
                outcome = "200_stream_error"
        self.record(kind, outcome)
        return status, payload

    async def worker(self, i):
        key = self.keys["b"] if i % 4 == 3 else self.keys["a"]
        http = Http(self.port)
        rng = random.Random(i)
        kinds, weights = zip(*WEIGHTS)
        while not self.stop:
            kind = rng.choices(kinds, weights)[0]
            if kind == "query":
                a, b = rng.randrange(1000), rng.randrange(1000)
                await self.call(http, kind, "POST", "/v1/query", key,
                                {"sql": "select $1::int + $2::int as n, $3::text as s", "params": [a, b, f"w{i}"]})
            elif kind == "batch":
                v = rng.randrange(1_000_000)
                await self.call(http, kind, "POST", "/v1/batch", key, {"statements": [
                    {"sql": "insert into soak_t(v) values ($1) returning id", "params": [v]},
                    {"sql": "select count(*) as n from soak_t where v = $1", "params": [v]}]})
            elif kind == "ndjson":
                await self.call(http, kind, "POST", "/v1/query", key,
                                {"sql": "select g, md5(g::text) as h from generate_series(1, $1) g",
                                 "params": [3000]}, accept="application/x-ndjson")
            elif kind == "tx":
                r = await self.call(http, kind, "POST", "/v1/transactions", key, {})
                if r and r[0] == 201:
                    tx = json.loads(r[1])["id"]
                    for _ in range(rng.randint(1, 2)):
                        r = await self.call(http, kind, "POST", f"/v1/transactions/{tx}/query", key,
                                            {"sql": "select $1::int * 2 as n, txid_current() as x",
                                             "params": [rng.randrange(1000)]})
                        if not r or r[0] != 200:
                            break
                    end = "commit" if rng.random() < 0.7 else "rollback"
                    await self.call(http, kind, "POST", f"/v1/transactions/{tx}/{end}", key)
            else:
                await self.disconnect(key)
            await asyncio.sleep(rng.uniform(0, 2 * self.args.think_ms / 1000))
        http.close()

    async def disconnect(self, key):
        """Sends a 2 s query on a new connection and closes the socket after 200 ms."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", self.port), 5)
        except (OSError, asyncio.TimeoutError):
            self.record("disconnect", "conn_error")
            return
        body = json.dumps({"sql": "select pg_sleep(2)"}).encode()
        writer.write((f"POST /v1/query HTTP/1.1\r\nhost: soak\r\nauthorization: Bearer {key}\r\n"
                      f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n").encode() + body)
        try:
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 0.2)
            # An answer within 200 ms (a refusal during a restart): it was answered.
            self.record("disconnect", str(int(line.split()[1])) if line else "disconnected")
        except (asyncio.TimeoutError, OSError, IndexError, ValueError):
            self.record("disconnect", "disconnected")
        writer.close()

    def write_config(self, pool_a):
        with open(self.config, "w") as f:
            f.write(config_text(pool_a=pool_a, **self.config_args))

    async def reloader(self):
        http, n = Http(self.port), 0
        while not self.stop:
            await self.sleep_until(self.args.reload_every * (n + 1))
            if self.stop:
                break
            n += 1
            pool_a = POOL_A[n % 2]
            self.write_config(pool_a)
            t = self.now()
            # A connection of its own each time: a keep-alive connection idle for a minute may be
            # closed by the gateway just as the request goes out (the usual keep-alive race).
            r = await self.call(http, "reload", "POST", "/v1/admin/reload", self.admin_key, close=True)
            self.events.append({"t": round(t, 3), "event": "reload", "poolSizeA": pool_a,
                                "status": r[0] if r else None, "ms": round((self.now() - t) * 1000)})
        http.close()

    async def restarter(self):
        if self.args.restart_every <= 0:
            return
        data_dir = psql(self.su_url, "show data_directory")
        owner = pwd.getpwuid(os.stat(data_dir).st_uid).pw_name
        log = os.path.join(os.path.dirname(data_dir), "postgres-restarted.log")
        n = 0
        while not self.stop:
            n += 1
            at = self.args.restart_every * 60 * n
            if at >= self.args.minutes * 60:
                break
            await self.sleep_until(at)
            if self.stop:
                break
            cmd = [pg_bin("pg_ctl"), "-D", data_dir, "restart", "-m", "fast", "-w", "-t", "60", "-l", log]
            if os.geteuid() == 0 and owner != "root":
                cmd = ["runuser", "-u", owner, "--"] + cmd
            t = self.now()
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
            _, err = await proc.communicate()
            self.events.append({"t": round(t, 3), "event": "pg_restart", "rc": proc.returncode,
                                "ms": round((self.now() - t) * 1000), "stderr": err.decode()[-300:]})
            print(f"[{self.now():7.1f}s] postgres restarted (rc {proc.returncode}, "
                  f"{self.events[-1]['ms']} ms)", file=sys.stderr)

    async def sleep_until(self, t):
        while not self.stop and self.now() < t:
            await asyncio.sleep(min(1.0, t - self.now()))

    async def backends(self):
        proc = await asyncio.create_subprocess_exec(
            pg_bin("psql"), self.su_url, "-XAtqc",
            "select count(*) from pg_stat_activity where usename = 'soak'",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), 3)
            return int(out) if proc.returncode == 0 else None
        except (asyncio.TimeoutError, ValueError):
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            return None

    async def pools(self, http):
        try:
            status, _, payload = await asyncio.wait_for(
                http.request("GET", "/v1/admin/pools", self.admin_key), 3)
            if status != 200:
                return None
            up = json.loads(payload)["upstreams"][0]
            return {"budget": up["budget"], "open": up["open"], "connecting": up["connecting"],
                    "closing": up["closing"], "waiting": sum(t["waiting"] for t in up["tenants"]),
                    "inUse": sum(t["inUse"] for t in up["tenants"]),
                    "idle": sum(t["idle"] for t in up["tenants"]),
                    "transactionsOpen": sum(t["transactionsOpen"] for t in up["tenants"])}
        except (OSError, ValueError, KeyError, IndexError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            http.close()
            return None

    async def sampler(self):
        http, n = Http(self.port), 0
        while not self.stop:
            n += 1
            await self.sleep_until(n)
            t = self.now()
            backends, pools = await asyncio.gather(self.backends(), self.pools(http))
            self.samples.append({"t": round(t, 3), "rssKb": rss_kb(self.pid),
                                 "fds": len(os.listdir(f"/proc/{self.pid}/fd")), "cpuS": cpu_s(self.pid),
                                 "backends": backends, "pools": pools})
        http.close()

    async def run(self):
        end = self.args.minutes * 60
        tasks = [asyncio.create_task(self.worker(i)) for i in range(self.args.workers)]
        background = [asyncio.create_task(c) for c in (self.reloader(), self.restarter(), self.sampler())]
        last_report = 0
        while self.now() < end:
            await asyncio.sleep(1)
            if self.now() - last_report >= 60:
                last_report = self.now()
                s = self.samples[-1] if self.samples else {}
                print(f"[{self.now():7.1f}s] {len(self.outcomes)} requests, RSS {s.get('rssKb', 0) / 1024:.1f} MiB, "
                      f"fds {s.get('fds')}, backends {s.get('backends')}", file=sys.stderr)
        self.stop = True
        # Requests in flight finish (each is bounded by REQUEST_TIMEOUT); nothing is cut short.
        await asyncio.wait(tasks + background, timeout=REQUEST_TIMEOUT + 15)


def config_text(port, admin_hash, hash_a, hash_b, url, pool_a):
    tenant = """rate_per_second = 1000000
burst = 1000000
max_waiting = 10000
queue_timeout_ms = 10000
statement_timeout_ms = 30000
"""
    return f"""[server]
listen = "127.0.0.1:{port}"
admin_keys = ["{admin_hash}"]
[[upstreams]]
name = "main"
url = "{url}"
max_connections = {BUDGET}
[[tenants]]
id = "a"
api_keys = ["{hash_a}"]
pool_size = {pool_a}
max_transactions = 4
{tenant}[[tenants]]
id = "b"
api_keys = ["{hash_b}"]
pool_size = {POOL_B}
max_transactions = 2
{tenant}"""


def window_median(samples, field, t_end, width=30):
    vals = [s[field] for s in samples if t_end - width <= s["t"] <= t_end and s[field] is not None]
    return statistics.median(vals) if vals else None


def summarise(soak, args):
    minutes = []
    answered_fail = 0
    totals, by_kind = {}, {}
    for t, kind, outcome in soak.outcomes:
        totals[outcome] = totals.get(outcome, 0) + 1
        by_kind.setdefault(kind, {})[outcome] = by_kind.setdefault(kind, {}).get(outcome, 0) + 1
    for m in range(args.minutes):
        lo, hi = m * 60, (m + 1) * 60
        outs = {}
        for t, kind, outcome in soak.outcomes:
            if lo <= t < hi or (m == args.minutes - 1 and t >= hi):
                outs[outcome] = outs.get(outcome, 0) + 1
        ss = [s for s in soak.samples if lo < s["t"] <= hi + (1e9 if m == args.minutes - 1 else 0)]
        bk = [s["backends"] for s in ss if s["backends"] is not None]
        po = [s["pools"]["open"] for s in ss if s["pools"]]
        minutes.append({"minute": m + 1, "outcomes": outs, "rssKb": ss[-1]["rssKb"] if ss else None,
                        "fds": ss[-1]["fds"] if ss else None, "fdsMax": max((s["fds"] for s in ss), default=None),
                        "maxBackends": max(bk, default=None), "maxPoolHeld": max(po, default=None),
                        "samplesWithoutBackends": sum(1 for s in ss if s["backends"] is None),
                        "events": [e["event"] for e in soak.events
                                   if e["event"] in ("reload", "pg_restart") and lo <= e["t"] < hi]})
    warm, end = args.warmup * 60, soak.samples[-1]["t"] if soak.samples else 0
    rss_w, rss_e = window_median(soak.samples, "rssKb", warm), window_median(soak.samples, "rssKb", end)
    fd_w, fd_e = window_median(soak.samples, "fds", warm), window_median(soak.samples, "fds", end)
    bk_all = [s["backends"] for s in soak.samples if s["backends"] is not None]
    # `open` is every slot held against the budget: connecting and closing ones included.
    pool_all = [s["pools"]["open"] for s in soak.samples if s["pools"]]
    unanswered = {o: n for o, n in totals.items() if o in ("conn_error", "timeout")}
    no_retry = {o: n for o, n in totals.items() if o.endswith("_no_retry_after")}
    answered_fail = sum(unanswered.values()) + sum(no_retry.values())
    rss_drift = (rss_e - rss_w) / rss_w if rss_w else None
    fd_drift = (fd_e - fd_w) / fd_w if fd_w else None
    criteria = [
        ("RSS drift < 5 % after warm-up", rss_drift is not None and rss_drift < 0.05,
         f"{rss_w / 1024:.1f} MiB at {warm:.0f} s -> {rss_e / 1024:.1f} MiB at {end:.0f} s ({rss_drift * 100:+.1f} %)"
         if rss_drift is not None else "no samples"),
        ("FDs flat (< 5 % or within 16)", fd_drift is not None and (fd_drift < 0.05 or fd_e - fd_w <= 16),
         f"{fd_w:.0f} at {warm:.0f} s -> {fd_e:.0f} at {end:.0f} s, max {max(s['fds'] for s in soak.samples)}"
         if fd_drift is not None else "no samples"),
        (f"backends <= budget ({BUDGET}) at every sample", bool(bk_all) and max(bk_all) <= BUDGET,
         f"max {max(bk_all, default=None)} over {len(bk_all)} samples "
         f"({len(soak.samples) - len(bk_all)} samples without a reading, Postgres restarting); "
         f"gateway's own count (`open` in /v1/admin/pools) max {max(pool_all, default=None)}"),
        ("every request answered", answered_fail == 0 and len(soak.outcomes) > 0,
         f"{len(soak.outcomes)} requests, unanswered {unanswered or 0}, 503/429 without Retry-After "
         f"{no_retry or 0}, deliberate disconnects {totals.get('disconnected', 0)}"),
    ]
    return {"minutes": minutes, "totals": totals, "byKind": by_kind, "criteria": criteria,
            "rssWarmKb": rss_w, "rssEndKb": rss_e, "fdsWarm": fd_w, "fdsEnd": fd_e}


def markdown(summary, soak, args, started):
    lines = [f"# Soak, {started:%Y-%m-%d %H:%M} UTC: {args.minutes} min", "",
             f"`bench/soak.py --minutes {args.minutes} --workers {args.workers} --think-ms {args.think_ms} "
             f"--reload-every {args.reload_every} --restart-every {args.restart_every} --warmup {args.warmup}` "
             f"against `{args.sluice}` (release build), on {os.cpu_count()} cores shared with other work. "
             f"Upstream budget `max_connections = {BUDGET}`; tenant a `pool_size` {POOL_A[0]}/{POOL_A[1]} "
             f"alternating on each reload, tenant b {POOL_B}. Load mix (weights): "
             + ", ".join(f"{k} {w}" for k, w in WEIGHTS) + ".", "", "## Pass criteria", ""]
    for name, ok, detail in summary["criteria"]:
        lines.append(f"- **{'PASS' if ok else 'FAIL'}** {name}: {detail}")
    lines += ["", "## Requests by outcome (total)", "",
              ", ".join(f"{k}: {v:,}" for k, v in sorted(summary["totals"].items())), "", "By kind:", ""]
    for kind, outs in sorted(summary["byKind"].items()):
        lines.append(f"- {kind}: " + ", ".join(f"{k}: {v:,}" for k, v in sorted(outs.items())))
    lines += ["",
              "## Per minute", "",
              "| min | requests | 2xx | other answers | unanswered | disconnected | RSS (MiB) | FDs (end / max) "
              "| max backends | max slots held (gateway) | events |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in summary["minutes"]:
        o = m["outcomes"]
        ok = sum(n for k, n in o.items() if k.startswith("2") and k != "200_stream_error")
        un = sum(n for k, n in o.items() if k in ("conn_error", "timeout"))
        dis = o.get("disconnected", 0)
        other = {k: n for k, n in o.items()
                 if not (k.startswith("2") and k != "200_stream_error") and k not in ("conn_error", "timeout", "disconnected")}
        lines.append(f"| {m['minute']} | {sum(o.values()):,} | {ok:,} | "
                     f"{', '.join(f'{k}: {n}' for k, n in sorted(other.items())) or '-'} | {un} | {dis} | "
                     f"{(m['rssKb'] or 0) / 1024:.1f} | {m['fds']} / {m['fdsMax']} | {m['maxBackends']} | "
                     f"{m['maxPoolHeld']} | {', '.join(m['events']) or '-'} |")
    if soak.samples:
        s0, s1 = soak.samples[0], soak.samples[-1]
        lines += ["", f"Gateway CPU: {s1['cpuS'] - s0['cpuS']:.0f} s over {s1['t'] - s0['t']:.0f} s "
                  f"({(s1['cpuS'] - s0['cpuS']) / max(s1['t'] - s0['t'], 1) * 100:.0f} % of one core), "
                  f"{len(soak.outcomes) / max(s1['t'], 1):.0f} requests/s on average."]
    lines += ["", "## Events", ""]
    for e in soak.events:
        if e["event"] == "reload":
            lines.append(f"- {e['t']:.0f} s: reload, tenant a pool_size {e['poolSizeA']}, status {e['status']}, {e['ms']} ms")
        elif e["event"] == "pg_restart":
            lines.append(f"- {e['t']:.0f} s: Postgres restart (`pg_ctl restart -m fast`), rc {e['rc']}, {e['ms']} ms")
    errs = [e for e in soak.events if e["event"] == "conn_error"]
    if errs:
        lines.append(f"- {len(errs)} connection errors (first: {errs[0]['t']:.0f} s, {errs[0]['kind']}, {errs[0]['error']})")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target/release/sluice"))
    ap.add_argument("--minutes", type=int, default=30)
    ap.add_argument("--workers", type=int, default=32)
    ap.add_argument("--think-ms", type=float, default=200)
    ap.add_argument("--reload-every", type=float, default=60, help="seconds")
    ap.add_argument("--restart-every", type=float, default=10, help="minutes (0: never)")
    ap.add_argument("--warmup", type=float, default=2, help="minutes")
    ap.add_argument("--out", help="path without extension (default bench/results/soak-<date>)")
    args = ap.parse_args()
    started = datetime.datetime.now(datetime.timezone.utc)
    out = args.out or os.path.join(ROOT, "bench/results", f"soak-{started:%Y-%m-%d}")

    work = tempfile.mkdtemp(prefix="sluice-soak-")
    dev, info = start_dev(args.sluice, work)
    gateway = None
    data_dir = None
    try:
        su_url = info["databaseUrl"]
        data_dir = psql(su_url, "show data_directory")
        psql(su_url, "create role soak login password 'soak-pw'; create table soak_t(id bigserial primary key, v int); "
                     "alter table soak_t owner to soak")
        (key_a, hash_a), (key_b, hash_b), (admin_key, admin_hash) = (new_key(args.sluice) for _ in range(3))
        port = free_port()
        config = os.path.join(work, "sluice.toml")
        config_args = {"port": port, "admin_hash": admin_hash, "hash_a": hash_a, "hash_b": hash_b,
                       "url": with_user(su_url, "soak", "soak-pw")}
        with open(config, "w") as f:
            f.write(config_text(pool_a=POOL_A[0], **config_args))
        gateway = serve(args.sluice, config, port, work,
                        env=dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn")))
        soak = Soak(args, port, {"a": key_a, "b": key_b}, admin_key, su_url, config, config_args, gateway.pid)
        asyncio.run(soak.run())
        summary = summarise(soak, args)
        md = markdown(summary, soak, args, started)
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        with open(out + ".md", "w") as f:
            f.write(md)
        with open(out + ".json", "w") as f:
            json.dump({"started": started.isoformat(), "args": vars(args), "budget": BUDGET,
                       "criteria": [{"name": n, "pass": ok, "detail": d} for n, ok, d in summary["criteria"]],
                       "totals": summary["totals"], "byKind": summary["byKind"], "minutes": summary["minutes"], "events": soak.events,
                       "samples": soak.samples}, f, indent=1)
        print(md)
        for name, ok, detail in summary["criteria"]:
            print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")
        print(f"written: {out}.md, {out}.json (logs in {work})")
        return 0 if all(ok for _, ok, _ in summary["criteria"]) else 1
    finally:
        stop(gateway, 40)
        if data_dir and os.path.exists(os.path.join(data_dir, "postmaster.pid")):
            # A restarted server is no longer `sluice dev`'s child: stop it here, before dev
            # removes its directory (dev stops only the server it started).
            cmd = [pg_bin("pg_ctl"), "-D", data_dir, "stop", "-m", "fast", "-w", "-t", "30"]
            owner = pwd.getpwuid(os.stat(data_dir).st_uid).pw_name
            if os.geteuid() == 0 and owner != "root":
                cmd = ["runuser", "-u", owner, "--"] + cmd
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        stop(dev, 40)


if __name__ == "__main__":
    sys.exit(main())
