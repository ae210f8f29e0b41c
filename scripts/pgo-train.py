#!/usr/bin/env python3
"""The training workload for a profile-guided build (scripts/build-pgo).

Drives a running gateway (`sluice dev`: tenant "demo", database "postgres") with the mix a
serverless fleet sends, so that the profile weighs every route as production does: mostly
single parameterised queries on keep-alive connections, then Neon's /sql, batches, scripts,
interactive transactions, NDJSON streams, requests on fresh connections, and the errors
clients cause (bad SQL, a wrong key, malformed JSON). A route the profile never sees would be
laid out as cold code, so each one is exercised, in proportion.

With TLS_URL and CA_FILE, a quarter of the threads use HTTPS (HTTP/1.1), verifying the
gateway's certificate against CA_FILE. Exits non-zero if any kind of request did not get the
answer it should (a mix that drifted from the API would train the profile on error paths);
tests/pgo_training.rs runs it in `cargo test` for that reason.

Usage: pgo-train.py URL API_KEY ADMIN_KEY REQUESTS [TLS_URL CA_FILE]
(stdlib only; bounded in count and time)
"""

import collections
import http.client
import json
import os
import ssl
import sys
import threading
import time
import urllib.parse

URL, KEY, ADMIN, REQUESTS = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
TLS_URL, CA_FILE = (sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else (None, None)
THREADS = 8
DEADLINE = time.monotonic() + 300


class Client:
    """One keep-alive connection (reopened when the gateway closes it)."""

    def __init__(self, url=URL):
        self.conn = None
        self.target = urllib.parse.urlsplit(url)
        self.tls = ssl.create_default_context(cafile=CA_FILE) if self.target.scheme == "https" else None

    def connect(self):
        if self.tls is not None:
            return http.client.HTTPSConnection(self.target.hostname, self.target.port,
                                               timeout=30, context=self.tls)
        return http.client.HTTPConnection(self.target.hostname, self.target.port, timeout=30)

    def post(self, path, body, key=KEY, headers=None, fresh=False):
        sent = {"Content-Type": "application/json"}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        if fresh:
            sent["Connection"] = "close"
        sent.update(headers or {})
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        # A kept-alive connection the gateway has closed (idle, or after an answer it ended
        # the connection with) fails on reuse: then once more on a new one.
        for attempt in range(2):
            if self.conn is None or (fresh and attempt == 0):
                if self.conn is not None:
                    self.conn.close()
                self.conn = self.connect()
            try:
                self.conn.request("POST", path, data, sent)
                response = self.conn.getresponse()
                payload = response.read()
            except (OSError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                continue
            if fresh or response.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            return response.status, payload
        return 0, b""

    def get(self, path, key):
        conn = self.connect()
        conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
        status = conn.getresponse().status
        conn.close()
        return status


SETUP = """
create table if not exists pgo_items (
  id int primary key, name text not null, price numeric(10,2), tags text[],
  meta jsonb, born timestamptz default now(), ok boolean default true);
insert into pgo_items (id, name, price, tags, meta)
  select i, 'item ' || i, i * 1.25, array['a', 'b' || i], jsonb_build_object('n', i, 's', 'x')
  from generate_series(1, 2000) as i
  on conflict (id) do nothing;
create table if not exists pgo_events (id bigserial primary key, item int, note text);
"""

# `sluice dev`'s tenant and database, unless told otherwise (tests/pgo_training.rs).
TENANT = os.environ.get("PGO_TENANT", "demo")
DATABASE = os.environ.get("PGO_DATABASE", "postgres")
NEON = {
    "Neon-Connection-String": f"postgresql://{TENANT}:{KEY}@gateway/{DATABASE}",
    "Neon-Raw-Text-Output": "true",
    "Neon-Array-Mode": "true",
}


TALLY = collections.Counter()
TALLY_LOCK = threading.Lock()


def expect(kind, answer, wanted=200):
    """Counts whether a request got the status its kind should get: a mix that drifted from
    the API (a renamed field, a changed status) would train the profile on error paths."""
    status, body = answer
    with TALLY_LOCK:
        TALLY[(kind, status == wanted)] += 1
    return status, body


def one(client, i):
    """Request number i of the mix (by its residue, so every thread sends every kind)."""
    kind = i % 100
    item = i % 2000 + 1
    if kind == 97 and i >= 500:
        # Five wrong keys in all: more would trip the failed-authentication limit per address
        # (`auth_failures_per_minute`), and every request after it would train the 429 path.
        kind = 0
    if kind < 55:
        expect("query", client.post("/v1/query", {
            "sql": "select id, name, price from pgo_items where id = $1", "params": [item]}))
    elif kind < 62:
        expect("query rows", client.post("/v1/query", {
            "sql": "select * from pgo_items where id between $1 and $2",
            "params": [item, item + 20], "rowMode": "array"}))
    elif kind < 66:
        expect("query text", client.post("/v1/query", {
            "sql": "select id, meta, tags, born from pgo_items where id = $1",
            "params": [str(item)], "types": "text"}))
    elif kind < 76:
        expect("neon query", client.post("/sql", {
            "query": "select id, name from pgo_items where id = $1", "params": [item]},
            key=None, headers=NEON))
    elif kind < 79:
        expect("neon batch", client.post("/sql", {"queries": [
            {"query": "select count(*) from pgo_items where price > $1", "params": [item]},
            {"query": "insert into pgo_events (item, note) values ($1, $2)", "params": [item, "neon"]},
        ]}, key=None, headers=NEON))
    elif kind < 84:
        expect("batch", client.post("/v1/batch", {"statements": [
            {"sql": "insert into pgo_events (item, note) values ($1, $2) returning id",
             "params": [item, "batch"]},
            {"sql": "update pgo_items set price = price + 0 where id = $1", "params": [item]},
        ]}))
    elif kind < 87:
        status, body = expect("transaction", client.post("/v1/transactions", {}), 201)
        if status == 201:
            tx = json.loads(body)["id"]
            expect("transaction query", client.post(f"/v1/transactions/{tx}/query", {
                "sql": "select name from pgo_items where id = $1 for update", "params": [item]}))
            expect("transaction batch", client.post(f"/v1/transactions/{tx}/batch", {"statements": [
                {"sql": "insert into pgo_events (item, note) values ($1, 'tx')", "params": [item]}]}))
            end = "commit" if i % 2 else "rollback"
            expect(f"transaction {end}", client.post(f"/v1/transactions/{tx}/{end}", b""))
    elif kind < 89:
        expect("ndjson", client.post("/v1/query", {
            "sql": "select * from pgo_items order by id", "rowMode": "array"},
            headers={"Accept": "application/x-ndjson"}))
    elif kind < 94:
        expect("fresh connection", client.post("/v1/query", {
            "sql": "select $1::int + 1 as n", "params": [item]}, fresh=True))
    elif kind < 95:
        expect("script", client.post("/v1/batch", {
            "script": "select 1; select count(*) from pgo_events;"}))
    elif kind < 97:
        expect("database error", client.post("/v1/query", {
            "sql": "select * from no_such_table where id = $1", "params": [item]}), 400)
    elif kind < 98:
        expect("wrong key", client.post("/v1/query", {"sql": "select 1"}, key="sluice_sk_wrong"), 401)
    elif kind < 99:
        expect("malformed json", client.post("/v1/query", b'{"sql": "select 1", "params": ['), 400)
    else:
        expect("slow query", client.post("/v1/query", {
            "sql": "select pg_sleep(0.001), $1::text as id", "params": [item], "timeoutMs": 2000}))


def worker(offset, done):
    client = Client(TLS_URL if TLS_URL and offset >= THREADS * 3 // 4 else URL)
    for i in range(offset, REQUESTS, THREADS):
        if time.monotonic() > DEADLINE:
            break
        one(client, i)
        done[offset] += 1


def main():
    status, body = Client().post("/v1/batch", {"script": SETUP})
    if status == 0:
        sys.exit(f"pgo-train: no answer from {URL}")
    if status != 200:
        sys.exit(f"pgo-train: setting up the tables failed: {status} {body[:300]!r}")
    done = [0] * THREADS
    threads = [threading.Thread(target=worker, args=(t, done)) for t in range(THREADS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for path in ("/v1/admin/pools", "/metrics", "/healthz", "/readyz"):
        Client().get(path, ADMIN)
    print(f"pgo-train: {sum(done)} requests in {time.monotonic() - started:.1f} s")
    kinds = sorted({kind for kind, _ in TALLY})
    wrong = [f"{kind}: {TALLY[(kind, False)]} of {TALLY[(kind, False)] + TALLY[(kind, True)]}"
             for kind in kinds if TALLY[(kind, False)] > TALLY[(kind, True)] // 100]
    if wrong:
        sys.exit("pgo-train: requests that did not get the answer their kind should: "
                 + "; ".join(wrong))


main()
