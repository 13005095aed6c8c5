#!/usr/bin/env python3
"""Scale benchmark for layercache-server (python3 stdlib only, issue 14).

Starts the release server on a loopback port with a fresh data dir (or uses --url), fills it with
small hand-made entries spread over 50 namespaces, and after each fill size (default 1k, 10k,
100k entries, filled incrementally into the same store) measures the latency of every route an
operator or runner hits:

- the dashboard `/`, `/v1/largest`, `/v1/stats`, `/metrics`;
- `/v1/entries` (first page, all namespaces) and `/v1/entries?namespace=NS`;
- lookups: an exact hit, a plain miss, a miss whose first instruction is shared by a quarter of
  all entries (asked in a namespace holding none of them: every shared row is a candidate), and a
  prefix hit on that shared instruction;
- `GET /v1/images/NS/KEY` of an entry's tarball (a few KB);
- exact-hit lookups while another client polls `/` without pause.

How the store is filled: every entry is one image of two layers, a base layer shared by all
entries plus a unique small layer, and a ~300-byte config; every fourth entry's first
instruction-prefix hash is one shared value, the rest are unique.
- `--fill http` (default): through the public API, from --fill-clients threads: `PUT /v1/blobs`
  of the unique layer and the config, then `PUT /v1/images/NS/KEY/manifest`. One fsync per write
  makes this ~30-100 entries/s.
- `--fill direct`: stops the server, runs the hidden `layercache-server bench-fill` on the data
  dir (the same `commit_entry` transactions and triggers, blob files written in place, but no
  upload validation and `synchronous = OFF`; see cache-server/src/store/bench_fill.rs), and
  starts it again: 100k entries in minutes. Not with --url.

Each route gets up to --samples requests or --route-seconds seconds, whichever ends first (at
least 3 requests), so a route that takes seconds at 100k still finishes. Prints a markdown table of
p50/p99 (ms) per size and the ratio of the largest size's p99 to the smallest's.

    cargo build --release -p layercache-server
    python3 bench/scale.py --sizes 1000,10000,100000
"""

import argparse
import http.client
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import free_port, sha, tar_of  # noqa: E402  (one tar and digest helper for the benches)

NAMESPACES = 50


BASE = tar_of([("base/shared.bin", random.Random(0).randbytes(4096))])
BASE_ID = sha(BASE)
SHARED_PREFIX = sha(b"shared-instruction")


def ns_of(i):
    return f"team{i % NAMESPACES}"


def key_of(i):
    return f"k{i}"


def entry(i):
    """(blobs to PUT as (digest, bytes), commit body) of entry i."""
    layer = tar_of([(f"app/{i}.txt", f"entry {i}\n".encode())])
    diff_ids = [BASE_ID, sha(layer)]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "base"}, {"created_by": f"app {i}"}],
    }).encode()
    first = SHARED_PREFIX if i % 4 == 0 else sha(f"p1-{i}".encode())
    body = json.dumps({
        "images": [{"id": sha(config), "tags": [f"gen{i}:latest"]}],
        "prefixes": [first, sha(f"p2-{i}".encode())],
    }).encode()
    return [(diff_ids[1], layer), (sha(config), config)], body


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()


class Client:
    """A keep-alive connection that reconnects after an error."""

    def __init__(self, host, port):
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=600)

    def __call__(self, method, path, body=None, headers=None):
        try:
            return request(self.conn, method, path, body, headers)
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=600)
            raise


def fill(host, port, start, end, clients):
    """Commits entries start..end through the HTTP API from `clients` threads."""
    c = Client(host, port)
    st, body = c("PUT", "/v1/blobs/" + BASE_ID, BASE)
    if st not in (200, 201):
        sys.exit(f"base blob PUT: {st} {body[:200]!r}")
    errors = []
    next_i = [start]
    lock = threading.Lock()

    def work():
        cl = Client(host, port)
        while True:
            with lock:
                i = next_i[0]
                if i >= end or errors:
                    return
                next_i[0] += 1
            blobs, commit = entry(i)
            try:
                for d, data in blobs:
                    st, b = cl("PUT", "/v1/blobs/" + d, data)
                    if st not in (200, 201):
                        raise RuntimeError(f"blob PUT {d}: {st} {b[:200]!r}")
                st, b = cl("PUT", f"/v1/images/{ns_of(i)}/{key_of(i)}/manifest", commit,
                           {"content-type": "application/json"})
                if st != 201:
                    raise RuntimeError(f"commit {i}: {st} {b[:200]!r}")
            except Exception as e:  # noqa: BLE001 - reported and fatal
                with lock:
                    errors.append(repr(e))
                return

    threads = [threading.Thread(target=work) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        sys.exit(f"fill failed: {errors[:3]}")


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def measure(fn, samples, seconds):
    """Latencies (ms) of up to `samples` calls of fn within `seconds` (at least 3)."""
    out = []
    deadline = time.monotonic() + seconds
    while len(out) < samples and (len(out) < 3 or time.monotonic() < deadline):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def routes(host, port, n, rnd):
    """(name, fn) of every measured route at store size n; each fn checks its status."""
    c = Client(host, port)

    def get(path, want=200):
        def f():
            st, body = c("GET", path)
            if st != want:
                raise RuntimeError(f"GET {path}: {st} {body[:200]!r}")
        return f

    def lookup(make, want):
        def f():
            body = json.dumps(make()).encode()
            st, b = c("POST", "/v1/lookup", body, {"content-type": "application/json"})
            if st != want:
                raise RuntimeError(f"lookup {body[:100]!r}: {st} {b[:200]!r}")
        return f

    def hit():
        i = rnd.randrange(n)
        return {"namespaces": [ns_of(i)], "key": key_of(i)}

    def miss():
        return {"namespaces": [ns_of(rnd.randrange(n))], "key": f"absent{rnd.random()}"}

    def shared_miss():
        # A namespace with no entries: every row of the shared first instruction is a candidate
        # of another namespace.
        return {"namespaces": ["nobody"], "key": f"absent{rnd.random()}",
                "prefixes": [SHARED_PREFIX, sha(str(rnd.random()).encode())]}

    def prefix_hit():
        # Entries 0, 4, 8, ... carry the shared instruction: ask one of their namespaces.
        return {"namespaces": [ns_of(4 * rnd.randrange(n // 4))], "key": f"absent{rnd.random()}",
                "prefixes": [SHARED_PREFIX, sha(str(rnd.random()).encode())]}

    def tarball():
        i = rnd.randrange(n)
        return get(f"/v1/images/{ns_of(i)}/{key_of(i)}")()

    return [
        ("dashboard `/`", get("/")),
        ("`/v1/largest`", get("/v1/largest")),
        ("`/v1/entries` (first page)", get("/v1/entries")),
        ("`/v1/entries?namespace=`", lambda: get(f"/v1/entries?namespace={ns_of(rnd.randrange(n))}")()),
        ("lookup exact hit", lookup(hit, 200)),
        ("lookup miss", lookup(miss, 404)),
        ("lookup miss, shared 1st instruction", lookup(shared_miss, 404)),
        ("lookup prefix hit", lookup(prefix_hit, 200)),
        ("GET entry tarball", tarball),
        ("`/v1/stats`", get("/v1/stats")),
        ("`/metrics`", get("/metrics")),
    ], lookup(hit, 200)


def while_polled(host, port, fn, samples, seconds):
    """Latencies of fn while another client polls `/` without pause."""
    stop = threading.Event()
    polls = [0]

    def poll():
        c = Client(host, port)
        while not stop.is_set():
            st, _ = c("GET", "/")
            polls[0] += 1
    t = threading.Thread(target=poll, daemon=True)
    t.start()
    time.sleep(0.2)
    try:
        return measure(fn, samples, seconds)
    finally:
        stop.set()
        t.join(timeout=600)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000", help="entry counts, ascending")
    ap.add_argument("--samples", type=int, default=200, help="max requests per route")
    ap.add_argument("--route-seconds", type=float, default=10, help="time budget per route")
    ap.add_argument("--fill-clients", type=int, default=16)
    ap.add_argument("--fill", choices=["http", "direct"], default="http")
    ap.add_argument("--skip", default="", help="comma-separated substrings of route names not to "
                    "measure (for a baseline whose dashboard takes minutes per request)")
    ap.add_argument("--url", help="use a running, empty, open server instead of starting one")
    ap.add_argument("--server", default="target/release/layercache-server")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    proc = tmp = None
    data = None

    def start_server():
        p = subprocess.Popen([args.server, "--open", "--listen", f"{host}:{port}",
                              "--data-dir", data],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(600):
            try:
                if request(http.client.HTTPConnection(host, port, timeout=1), "GET",
                           "/healthz")[0] == 200:
                    return p
            except OSError:
                time.sleep(0.05)
        sys.exit("the server did not become healthy")

    if args.url:
        if args.fill == "direct":
            sys.exit("--fill direct needs its own server: leave out --url")
        u = urllib.parse.urlparse(args.url)
        host, port = u.hostname, u.port or 80
    else:
        if not os.path.exists(args.server):
            sys.exit(f"{args.server} is missing: run `cargo build --release -p layercache-server`")
        tmp = tempfile.mkdtemp(prefix="lc-scale-")
        data = os.path.join(tmp, "data")
        host, port = "127.0.0.1", free_port()
        proc = start_server()

    results = {}  # size -> {route: (p50, p99)}
    order = []
    try:
        filled = 0
        for n in sizes:
            t0 = time.monotonic()
            if args.fill == "direct":
                proc.terminate()
                proc.wait(timeout=60)
                subprocess.run([args.server, "bench-fill", "--data-dir", data, "--from",
                                str(filled), "--to", str(n)], check=True)
                proc = start_server()
            else:
                fill(host, port, filled, n, args.fill_clients)
            print(f"filled {n} entries (+{n - filled} in {time.monotonic() - t0:.0f}s)",
                  file=sys.stderr, flush=True)
            filled = n
            rnd = random.Random(n)
            table, hit = routes(host, port, n, rnd)
            res = {}
            skip = [k for k in args.skip.split(",") if k]
            for name, fn in table:
                if any(k in name for k in skip):
                    continue
                lat = measure(fn, args.samples, args.route_seconds)
                res[name] = (pct(lat, 50), pct(lat, 99))
                print(f"  {n}: {name}: p50 {res[name][0]:.1f} ms p99 {res[name][1]:.1f} ms "
                      f"({len(lat)} requests)", file=sys.stderr, flush=True)
            name = "lookup exact hit while `/` is polled"
            if not any(k in name for k in skip):
                lat = while_polled(host, port, hit, args.samples, args.route_seconds)
                res[name] = (pct(lat, 50), pct(lat, 99))
                print(f"  {n}: {name}: p50 {res[name][0]:.1f} ms p99 {res[name][1]:.1f} ms "
                      f"({len(lat)} requests)", file=sys.stderr, flush=True)
            for r in res:  # routes in first-measured order
                if r not in order:
                    order.append(r)
            results[n] = res
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=60)

    done = [n for n in sizes if n in results]
    lo, hi = done[0], done[-1]
    head = " | ".join(f"{n // 1000}k p50 / p99" for n in done)
    print(f"| route | {head} | p99 {hi // 1000}k / {lo // 1000}k |")
    print("|---|" + "---|" * len(done) + "---|")
    for r in order:
        cells = " | ".join(f"{results[n][r][0]:.1f} / {results[n][r][1]:.1f} ms"
                           if r in results[n] else "–" for n in done)
        ratio = (f"{results[hi][r][1] / max(results[lo][r][1], 1e-9):.1f}×"
                 if r in results[hi] and r in results[lo] else "–")
        print(f"| {r} | {cells} | {ratio} |", flush=True)
    if tmp:
        # After the table: removing 100k entries' blob files takes a while.
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
