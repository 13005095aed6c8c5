#!/usr/bin/env python3
"""Times what `docker push` does for one layer through the registry protocol: POST a session,
PATCH the whole layer (chunked transfer encoding, streamed from a file), PUT ?digest= with an
empty body. Servers are started fresh per run (embedded default: SQLite + data-dir blobs), the
binaries given take turns; prints the median of each step per binary.

Usage: python3 bench/registry_push.py --size-mib 250 --runs 5 NAME=BINARY [NAME=BINARY ...]
"""
import argparse, hashlib, http.client, os, statistics, subprocess, tempfile, time, urllib.request

def start(binary, data_dir):
    p = subprocess.Popen([binary, "--open", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = p.stdout.readline().strip().rsplit(" ", 1)[-1]
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1)
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.05)
    return p, url

def push(url, path, digest):
    host = url.removeprefix("http://")
    c = http.client.HTTPConnection(host, timeout=300)
    t0 = time.perf_counter()
    c.request("POST", "/v2/bench/layer/blobs/uploads/", headers={"Content-Length": "0"})
    r = c.getresponse(); r.read(); assert r.status == 202, r.status
    loc = r.getheader("Location")
    t1 = time.perf_counter()
    with open(path, "rb") as f:
        def chunks():
            while True:
                b = f.read(1 << 20)
                if not b:
                    return
                yield b
        c.request("PATCH", loc, body=chunks(), encode_chunked=True,
                  headers={"Content-Type": "application/octet-stream", "Transfer-Encoding": "chunked"})
        r = c.getresponse(); r.read(); assert r.status == 202, r.status
    t2 = time.perf_counter()
    c.request("PUT", f"{loc}?digest={digest}", headers={"Content-Length": "0"})
    r = c.getresponse(); r.read(); assert r.status == 201, (r.status, r.read())
    t3 = time.perf_counter()
    return t3 - t0, t2 - t1, t3 - t2

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=250)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("bins", nargs="+")
    a = ap.parse_args()
    bins = [b.split("=", 1) for b in a.bins]
    with tempfile.TemporaryDirectory() as tmp:
        layer = os.path.join(tmp, "layer")
        with open(layer, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        h = hashlib.sha256()
        with open(layer, "rb") as f:
            for b in iter(lambda: f.read(1 << 20), b""):
                h.update(b)
        digest = "sha256:" + h.hexdigest()
        res = {n: [] for n, _ in bins}
        for run in range(a.runs):
            for name, binary in bins:
                d = tempfile.mkdtemp(dir=tmp)
                p, url = start(binary, d)
                try:
                    res[name].append(push(url, layer, digest))
                finally:
                    p.kill(); p.wait()
                    subprocess.run(["rm", "-rf", d])
                print(f"run {run} {name}: total {res[name][-1][0]:.3f}s patch {res[name][-1][1]:.3f}s put {res[name][-1][2]:.3f}s", flush=True)
        print(f"\n{a.size_mib} MiB layer, {a.runs} runs, medians (s)")
        print(f"{'binary':<10} {'total':>8} {'PATCH':>8} {'PUT':>8}")
        for name, _ in bins:
            t = list(zip(*res[name]))
            print(f"{name:<10} {statistics.median(t[0]):>8.3f} {statistics.median(t[1]):>8.3f} {statistics.median(t[2]):>8.3f}")

main()
