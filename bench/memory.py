#!/usr/bin/env python3
"""Gateway memory under hostile load: does RSS come back after the burst?

usage: bench/memory.py [--sluice target/release/sluice] [--rounds 3] [--clients 2000]

Starts `sluice dev --json` for a throwaway Postgres, then a `sluice serve` of its own in front of
it (rate limits out of the way), and runs, each for several rounds:

  bodies     N clients at once, each sending a ~1 MB JSON body (`select length($1)`)
  big_value  one `select repeat('x', 300000000)`: a 300 MB value, refused as response_too_large

sampling the gateway's VmRSS every 20 ms: before the round, the peak, and 3 s after the last
answer. Prints a table (and JSON with --json). Standard library only; traffic goes to 127.0.0.1
only, every phase is bounded in time.
"""

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time

from harness import free_port, new_key, rss_kb, serve, start_dev, stop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Sampler(threading.Thread):
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_kb(self.pid))
            time.sleep(0.02)


async def post(port, key, body, timeout=120):
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    head = (f"POST /v1/query HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {key}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n")
    writer.write(head.encode() + body)
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout)
    await asyncio.wait_for(reader.read(), timeout)
    writer.close()
    return int(status_line.split()[1])


async def burst(port, key, clients, body):
    results = await asyncio.gather(*(post(port, key, body) for _ in range(clients)), return_exceptions=True)
    statuses = {}
    for r in results:
        k = str(r) if isinstance(r, int) else type(r).__name__
        statuses[k] = statuses.get(k, 0) + 1
    return statuses


def measure(pid, work):
    time.sleep(1)
    before = rss_kb(pid)
    sampler = Sampler(pid)
    sampler.start()
    outcome = work()
    time.sleep(3)
    sampler.running = False
    sampler.join()
    after = rss_kb(pid)
    return {"before_kb": before, "peak_kb": max(sampler.peak, after), "after_kb": after, "outcome": outcome}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sluice", default=os.path.join(ROOT, "target/release/sluice"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))

    work = tempfile.mkdtemp(prefix="sluice-memory-")
    dev, info = start_dev(args.sluice, work)
    gateway = None
    try:
        key, key_hash = new_key(args.sluice)
        port = free_port()
        config = os.path.join(work, "sluice.toml")
        with open(config, "w") as f:
            f.write(f"""[server]
listen = "127.0.0.1:{port}"
[[upstreams]]
name = "main"
url = "{info['databaseUrl']}"
max_connections = 10
[[tenants]]
id = "bench"
api_keys = ["{key_hash}"]
pool_size = 10
rate_per_second = 1000000
burst = 1000000
max_waiting = 100000
queue_timeout_ms = 60000
statement_timeout_ms = 60000
""")
        gateway = serve(args.sluice, config, port, work)
        results = {"bodies": [], "big_value": []}
        body = json.dumps({"sql": "select length($1) as n", "params": ["x" * 1_000_000]}).encode()
        big = json.dumps({"sql": "select repeat('x', 300000000) as v"}).encode()
        for _ in range(args.rounds):
            results["bodies"].append(measure(gateway.pid, lambda: asyncio.run(burst(port, key, args.clients, body))))
        for _ in range(args.rounds):
            results["big_value"].append(measure(gateway.pid, lambda: asyncio.run(burst(port, key, 1, big))))
        if args.json:
            print(json.dumps(results, indent=2))
        print("| workload | round | RSS before | peak | 3 s after | after / before | answers |")
        print("|---|---|---|---|---|---|---|")
        for name, rounds in results.items():
            for i, r in enumerate(rounds, 1):
                print(f"| {name} | {i} | {r['before_kb'] / 1024:.1f} MiB | {r['peak_kb'] / 1024:.1f} MiB | "
                      f"{r['after_kb'] / 1024:.1f} MiB | {r['after_kb'] / max(r['before_kb'], 1):.2f} | {r['outcome']} |")
    finally:
        for p in (gateway, dev):
            stop(p, 30)


if __name__ == "__main__":
    sys.exit(main())
