#!/usr/bin/env python3
"""Load benchmark for layercache-server (python3 stdlib only).

Starts the release server on a loopback port with a fresh data dir (or uses --url), then runs N
concurrent clients (default 32) for a bounded time. Each round a client picks one of K keys whose
generated images share a base layer, does a lookup, restores the entry on a hit (and checks the
restored tarball carries exactly the layers pushed for that key), uploads a blob, and pushes the
tarball on a miss or every few rounds.

Prints requests/s, p50/p99 latency of lookups, blob GET and PUT throughput, the server's RSS, and
fails (exit 1) on any error or mismatch.

    cargo build --release -p layercache-server
    python3 bench/load.py --seconds 30 --clients 32
"""

import argparse
import hashlib
import http.client
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse


def sha(b):
    return "sha256:" + hashlib.sha256(b).hexdigest()


def tar_of(files):
    """An uncompressed tar of (name, bytes) with fixed metadata."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Image:
    """A generated image: a shared base layer plus one unique layer, as a docker save tarball."""

    def __init__(self, seed, base, kib):
        rnd = random.Random(seed)
        self.layers = [base, tar_of([(f"app/{seed}.bin", rnd.randbytes(kib * 1024))])]
        self.diff_ids = [sha(l) for l in self.layers]
        self.config = json.dumps({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": self.diff_ids},
            "history": [{"created_by": "base"}, {"created_by": f"app {seed}"}],
        }).encode()
        self.id = sha(self.config)
        files = []
        paths = []
        for layer, d in zip(self.layers, self.diff_ids):
            hexd = d.split(":")[1]
            files += [(f"{hexd}/VERSION", b"1.0"), (f"{hexd}/layer.tar", layer)]
            paths.append(f"{hexd}/layer.tar")
        cfg = self.id.split(":")[1] + ".json"
        files.append((cfg, self.config))
        manifest = [{"Config": cfg, "RepoTags": [f"gen{seed}:latest"], "Layers": paths}]
        files.append(("manifest.json", json.dumps(manifest).encode()))
        self.tarball = tar_of(files)


def restored_layers(body):
    """diff_ids of the layers in a served tarball, in manifest order; checks each layer's hash."""
    with tarfile.open(fileobj=io.BytesIO(body), mode="r:") as t:
        members = {m.name: m for m in t.getmembers()}
        manifest = json.load(t.extractfile(members["manifest.json"]))
        out = []
        for path in manifest[-1]["Layers"]:
            out.append(sha(t.extractfile(members[path]).read()))
        return out


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.lookup_ms = []
        self.requests = 0
        self.get_bytes = 0
        self.get_secs = 0.0
        self.put_bytes = 0
        self.put_secs = 0.0
        self.errors = []

    def add(self, **kw):
        with self.lock:
            for k, v in kw.items():
                if k == "lookup_ms":
                    self.lookup_ms.append(v)
                elif k == "error":
                    self.errors.append(v)
                else:
                    setattr(self, k, getattr(self, k) + v)


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    return r.status, r.read()


def client(idx, host, port, images, deadline, stats, ns):
    conn = http.client.HTTPConnection(host, port, timeout=120)
    rnd = random.Random(idx)
    rounds = 0
    while time.monotonic() < deadline:
        k = rnd.randrange(len(images))
        img = images[k]
        key = f"k{k}"
        try:
            t0 = time.perf_counter()
            status, body = request(conn, "POST", "/v1/lookup",
                                   json.dumps({"namespaces": [ns], "key": key}),
                                   {"content-type": "application/json"})
            stats.add(lookup_ms=(time.perf_counter() - t0) * 1000, requests=1)
            if status not in (200, 404):
                stats.add(error=f"lookup {key}: {status} {body[:200]!r}")
                continue
            if status == 200:
                t0 = time.perf_counter()
                st, tarball = request(conn, "GET", f"/v1/images/{ns}/{key}")
                stats.add(get_secs=time.perf_counter() - t0, get_bytes=len(tarball), requests=1)
                if st != 200:
                    stats.add(error=f"restore {key}: {st}")
                elif restored_layers(tarball) != img.diff_ids:
                    stats.add(error=f"restore {key}: layers differ from what was pushed")
            # A blob PUT (the unique layer) measures upload throughput on its own.
            layer = img.layers[1]
            t0 = time.perf_counter()
            st, _ = request(conn, "PUT", "/v1/blobs/" + img.diff_ids[1], layer)
            stats.add(put_secs=time.perf_counter() - t0, put_bytes=len(layer), requests=1)
            if st not in (200, 201):
                stats.add(error=f"blob PUT {key}: {st}")
            if status == 404 or rounds % 4 == 0:
                t0 = time.perf_counter()
                st, body = request(conn, "PUT", f"/v1/images/{ns}/{key}", img.tarball)
                stats.add(put_secs=time.perf_counter() - t0, put_bytes=len(img.tarball),
                          requests=1)
                if st != 201:
                    stats.add(error=f"push {key}: {st} {body[:200]!r}")
        except (OSError, http.client.HTTPException, tarfile.TarError, KeyError) as e:
            stats.add(error=f"client {idx}: {e!r}")
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=120)
        rounds += 1


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(len(v) * p / 100))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--keys", type=int, default=24)
    ap.add_argument("--layer-kib", type=int, default=2048, help="unique layer size per image")
    ap.add_argument("--url", help="use a running server instead of starting one")
    ap.add_argument("--server", default="target/release/layercache-server")
    args = ap.parse_args()

    proc = None
    tmp = None
    if args.url:
        u = urllib.parse.urlparse(args.url)
        host, port = u.hostname, u.port or 80
    else:
        if not os.path.exists(args.server):
            sys.exit(f"{args.server} is missing: run `cargo build --release -p layercache-server`")
        tmp = tempfile.mkdtemp(prefix="lc-bench-")
        host, port = "127.0.0.1", free_port()
        proc = subprocess.Popen([args.server, "--open", "--listen", f"{host}:{port}", "--data-dir",
                                 os.path.join(tmp, "data")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                c = http.client.HTTPConnection(host, port, timeout=1)
                if request(c, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        else:
            sys.exit("the server did not become healthy")

    base = tar_of([("base/shared.bin", random.Random(0).randbytes(1 << 20))])
    images = [Image(1000 + i, base, args.layer_kib) for i in range(args.keys)]
    ns = f"bench-{int(time.time())}"
    stats = Stats()
    deadline = time.monotonic() + args.seconds
    start = time.monotonic()
    rss_peak = 0
    threads = [threading.Thread(target=client,
                                args=(i, host, port, images, deadline, stats, ns))
               for i in range(args.clients)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        if proc:
            rss_peak = max(rss_peak, rss_kib(proc.pid) or 0)
        time.sleep(0.2)
    elapsed = time.monotonic() - start
    if proc:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)

    mib = 1 << 20
    print(f"clients={args.clients} keys={args.keys} layer={args.layer_kib} KiB "
          f"time={elapsed:.1f}s")
    print(f"requests/s:          {stats.requests / elapsed:10.1f}  ({stats.requests} requests)")
    print(f"lookup latency p50:  {pct(stats.lookup_ms, 50):10.2f} ms")
    print(f"lookup latency p99:  {pct(stats.lookup_ms, 99):10.2f} ms")
    print(f"blob GET throughput: {stats.get_bytes / mib / elapsed:10.1f} MiB/s "
          f"(aggregate; {stats.get_bytes / mib:.0f} MiB restored)")
    print(f"PUT throughput:      {stats.put_bytes / mib / elapsed:10.1f} MiB/s "
          f"(aggregate; {stats.put_bytes / mib:.0f} MiB uploaded)")
    if proc:
        print(f"server RSS peak:     {rss_peak / 1024:10.1f} MiB")
    if stats.errors:
        print(f"{len(stats.errors)} errors, first: {stats.errors[:5]}", file=sys.stderr)
        sys.exit(1)
    print("every restored tarball matched what was pushed")


if __name__ == "__main__":
    main()
