#!/usr/bin/env python3
"""Restore from the object store vs from local disk (python3 stdlib only).

Starts Garage (scripts/install-s3.sh) on loopback, as one node or as a 3-node cluster with
replication factor 3 (--nodes 3), and two layercache servers side by side: one with the default
blob store (the data dir) and one with --blob-store s3://bench/blobs. Pushes the same generated
image (--size-mib, default 250, in --layers incompressible layers) to both with
PUT /v1/images, then restores it from each, alternating, --runs times (default 3), reading every
byte of the tarball; prints medians, MiB/s, and the ratio object store / local disk.

Then the blob path (what a client fetching layer by layer does): every layer with
GET /v1/blobs/<digest> from the local server, from the S3 server (bytes proxied through it), and
from a third server with --redirect-blobs (a 307 to a presigned URL, followed to Garage), medians
of --runs each. `--skip-blobs` leaves that part out.

Both stores sit on this machine's disk and page cache, so the ratio measures what the object-store
path costs (S3 requests, the extra hop, Garage's own work), not a network.

    cargo build --release -p layercache-server
    scripts/install-s3.sh
    python3 bench/s3.py [--nodes 3] [--size-mib 250] [--runs 3]
"""

import argparse
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import free_port, sha, tar_of  # noqa: E402  (one tar and digest helper for the benches)

MIB = 1 << 20
REGION = "garage"


def image(size_mib, layers, seed=1):
    """A legacy `docker save` tarball of one image with `layers` random layers."""
    rnd = random.Random(seed)
    per = size_mib * MIB // layers
    blobs = [tar_of([(f"data/{i}.bin", rnd.randbytes(per))]) for i in range(layers)]
    diff_ids = [sha(b) for b in blobs]
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"layer {i}"} for i in range(layers)],
    }).encode()
    files, paths = [], []
    for b, d in zip(blobs, diff_ids):
        hexd = d.split(":")[1]
        files += [(f"{hexd}/VERSION", b"1.0"), (f"{hexd}/layer.tar", b)]
        paths.append(f"{hexd}/layer.tar")
    cfg = sha(config).split(":")[1] + ".json"
    files.append((cfg, config))
    files.append(("manifest.json", json.dumps([{"Config": cfg, "RepoTags": ["bench:s3"], "Layers": paths}]).encode()))
    return tar_of(files)


class Garage:
    """`nodes` Garage processes on loopback forming one cluster, a bucket and a key."""

    def __init__(self, binary, work, nodes):
        self.binary, self.procs, self.configs = binary, [], []
        secret = os.urandom(32).hex()
        replication = 3 if nodes >= 3 else 1
        for n in range(nodes):
            d = os.path.join(work, f"garage{n}")
            os.makedirs(d)
            s3, rpc = free_port(), free_port()
            cfg = os.path.join(d, "garage.toml")
            with open(cfg, "w") as f:
                f.write(f'''metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
replication_factor = {replication}
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"
[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"
''')
            if n == 0:
                self.endpoint = f"http://127.0.0.1:{s3}"
            self.configs.append(cfg)
            log = open(os.path.join(d, "stderr.log"), "w")
            self.procs.append(subprocess.Popen([binary, "-c", cfg, "server"], stdout=log, stderr=log,
                                               env={**os.environ, "RUST_LOG": "warn"}))
        ids = [self.wait(lambda c=c: self.cli(c, "node", "id", "-q")).strip() for c in self.configs]
        for peer in ids[1:]:
            self.cli(self.configs[0], "node", "connect", peer)
        for i in ids:
            self.wait(lambda i=i: self.cli(self.configs[0], "layout", "assign", "-z", "dc1", "-c", "10G", i.split("@")[0]))
        self.cli(self.configs[0], "layout", "apply", "--version", "1")
        self.wait(lambda: self.cli(self.configs[0], "bucket", "create", "bench"))
        key = json.loads(self.cli(self.configs[0], "json-api", "CreateKey", '{"name":"bench"}'))
        self.key_id, self.secret = key["accessKeyId"], key["secretAccessKey"]
        self.cli(self.configs[0], "bucket", "allow", "--read", "--write", "--owner", "bench", "--key", self.key_id)

    def cli(self, cfg, *args):
        out = subprocess.run([self.binary, "-c", cfg, *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"garage {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    @staticmethod
    def wait(f, seconds=60):
        deadline = time.time() + seconds
        while True:
            try:
                return f()
            except RuntimeError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    def env(self):
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": REGION, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_ALLOW_HTTP": "true"}

    def stop(self):
        for p in self.procs:
            p.kill()
            p.wait()


def start_server(binary, data_dir, extra, env):
    port = free_port()
    os.makedirs(data_dir)
    log = open(os.path.join(data_dir, "..", os.path.basename(data_dir) + ".log"), "w")
    proc = subprocess.Popen([binary, "--open", "--listen", f"127.0.0.1:{port}", "--data-dir", data_dir, *extra],
                            stdout=subprocess.DEVNULL, stderr=log, env={**os.environ, **env})
    deadline = time.time() + 60
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/healthz")
            if c.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            sys.exit(f"server {' '.join(extra) or '(local)'} did not start")
        time.sleep(0.05)


def timed(port, method, path, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t = time.perf_counter()
    c.request(method, path, body=body)
    r = c.getresponse()
    n = 0
    while True:
        b = r.read(4 * MIB)
        if not b:
            break
        n += len(b)
    if r.status >= 300:
        sys.exit(f"{method} {path}: {r.status}")
    return time.perf_counter() - t, n


def fetch(port, path, headers=None):
    """GET `path`, following one redirect to wherever it points (the object store); returns the
    seconds, the bytes read and whether it was redirected."""
    t = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("GET", path, headers=headers or {})
    r = c.getresponse()
    redirected = False
    if r.status in (301, 302, 303, 307, 308):
        r.read()
        u = urllib.parse.urlsplit(r.getheader("location"))
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
        c.request("GET", u.path + ("?" + u.query if u.query else ""), headers=headers or {})
        r = c.getresponse()
        redirected = True
    n = 0
    while True:
        b = r.read(4 * MIB)
        if not b:
            break
        n += len(b)
    if r.status >= 300:
        sys.exit(f"GET {path}: {r.status}")
    return time.perf_counter() - t, n, redirected


def blob_digests(port):
    """Layer digests of the bench entry, from its manifest."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", "/v1/entries/bench/k")
    m = json.loads(c.getresponse().read())["manifest"]
    return [layer["diff_id"] for img in m["images"] for layer in img["layers"]]


def blob_bench(servers, runs):
    """Times fetching every layer blob from each server; prints medians."""
    digests = blob_digests(servers[0][1])
    times = {name: [] for name, _ in servers}
    size = 0
    for _ in range(runs):
        for name, port in servers:
            t0, size, how = time.perf_counter(), 0, set()
            for d in digests:
                _, n, redirected = fetch(port, f"/v1/blobs/{d}")
                size += n
                how.add(redirected)
            times[name].append(time.perf_counter() - t0)
            if name.endswith("redirect") and how != {True}:
                sys.exit("the --redirect-blobs server did not redirect")
    print(f"\nlayer blobs one by one (GET /v1/blobs/<digest>), {len(digests)} blobs, {size / MIB:.0f} MiB, median of {runs}")
    print(f"{'path':<24} {'seconds':>8} {'MiB/s':>8}  runs")
    med = {}
    for name in times:
        med[name] = statistics.median(times[name])
        runs_s = " ".join(f"{t:.2f}" for t in times[name])
        print(f"{name:<24} {med[name]:>8.2f} {size / MIB / med[name]:>8.0f}  {runs_s}")
    base = med[servers[0][0]]
    for name in list(times)[1:]:
        print(f"ratio {name} / {servers[0][0]}: {med[name] / base:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=250)
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=1, choices=[1, 3], help="Garage nodes (3: replication factor 3)")
    ap.add_argument("--server", default="target/release/layercache-server")
    ap.add_argument("--garage", default=os.environ.get("LAYERCACHE_GARAGE", "/opt/garage/bin/garage"))
    ap.add_argument("--skip-blobs", action="store_true", help="only the tarball restores")
    args = ap.parse_args()
    if not os.path.exists(args.garage):
        sys.exit(f"garage not found at {args.garage}: run scripts/install-s3.sh")
    work = tempfile.mkdtemp(prefix="layercache-bench-s3-")
    procs = []
    garage = None
    try:
        tarball = image(args.size_mib, args.layers)
        garage = Garage(args.garage, work, args.nodes)
        local, lport = start_server(args.server, os.path.join(work, "local"), [], {})
        s3, sport = start_server(args.server, os.path.join(work, "s3"), ["--blob-store", "s3://bench/blobs"],
                                 garage.env())
        procs += [local, s3]
        push = {}
        for name, port in (("local disk", lport), ("object store", sport)):
            push[name], _ = timed(port, "PUT", "/v1/images/bench/k", tarball)
        times = {"local disk": [], "object store": []}
        size = 0
        for _ in range(args.runs):
            for name, port in (("local disk", lport), ("object store", sport)):
                t, size = timed(port, "GET", "/v1/images/bench/k")
                times[name].append(t)
        print(f"restore of a {size / MIB:.0f} MiB image ({args.layers} layers), median of {args.runs}; "
              f"Garage {args.nodes} node(s)")
        print(f"{'blob store':<14} {'push s':>8} {'restore s':>10} {'MiB/s':>8}  runs")
        med = {}
        for name in times:
            med[name] = statistics.median(times[name])
            runs = " ".join(f"{t:.2f}" for t in times[name])
            print(f"{name:<14} {push[name]:>8.2f} {med[name]:>10.2f} {size / MIB / med[name]:>8.0f}  {runs}")
        print(f"ratio object store / local disk (restore time): {med['object store'] / med['local disk']:.2f}")
        if not args.skip_blobs:
            # Its own prefix: a server sweeps objects its index does not know at start.
            redir, rport = start_server(args.server, os.path.join(work, "redirect"),
                                        ["--blob-store", "s3://bench/redirect", "--redirect-blobs"], garage.env())
            procs.append(redir)
            timed(rport, "PUT", "/v1/images/bench/k", tarball)
            blob_bench([("local disk", lport), ("object store, proxied", sport),
                        ("object store, redirect", rport)], args.runs)
    finally:
        for p in procs:
            p.terminate()
            p.wait()
        if garage:
            garage.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
