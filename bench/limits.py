#!/usr/bin/env python3
"""Input limits benchmark for layercache-server (issue 12; python3 stdlib only).

Each case runs on a fresh release server and records the answer, the wall time and the server's
peak RSS (VmHWM) afterwards:

- chain: a commit (PUT .../manifest) naming an N-image parent chain listed children first
  (the configs are uploaded first, not timed); median of --repeat commits.
- manifest: a 57 MiB `manifest.json` of 20 M layer paths.
- history: a config with 2.3 M `history` entries in an otherwise valid image.
- members: one image of 300 layers of 1 MiB + 1 B.
- gzip-bomb: a ~1 MiB gzip layer inflating to 1 GiB, server run with --max-upload-bytes 16MiB.

With --baseline (an older binary), each case also runs on it and the table gains its columns and
the time ratio.

    cargo build --release -p layercache-server
    python3 bench/limits.py [--baseline /path/to/old/layercache-server]
"""

import argparse
import gzip
import http.client
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import free_port, sha  # noqa: E402  (the benches' digest helper)


class Server:
    """The binary on a fresh data dir; killed on exit."""

    def __init__(self, binary, *args):
        self.tmp = tempfile.mkdtemp(prefix="lc-limits-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [binary, "--open", "--listen", f"127.0.0.1:{self.port}", "--data-dir",
             os.path.join(self.tmp, "data"), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(400):
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.05)
        sys.exit(f"{binary} did not become healthy")

    def request(self, method, path, body=None, headers=None, timeout=600):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        except (BrokenPipeError, ConnectionResetError):
            return "closed", b""  # refused from a header while the body was still being sent
        finally:
            c.close()

    def peak_mib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


def tar_header(name, size):
    h = bytearray(512)
    h[0:len(name)] = name.encode()
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = f"{size:011o}\0".encode()
    h[136:148] = b"00000000000\0"
    h[156:157] = b"0"
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = b" " * 8
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def pad(size):
    return b"\0" * (-size % 512)


def member(name, data):
    return tar_header(name, len(data)) + data + pad(len(data))


END = b"\0" * 1024


def config(diff_ids, history="[]"):
    return (f'{{"rootfs":{{"type":"layers","diff_ids":{json.dumps(diff_ids)}}},'
            f'"history":{history}}}').encode()


def manifest(cfg_id, layers):
    return json.dumps([{"Config": cfg_id.split(":")[1] + ".json", "RepoTags": ["t:1"],
                        "Layers": layers}]).encode()


def image_tarball(cfg, layer_members):
    cid = sha(cfg)
    names = [n for n, _ in layer_members]
    parts = [member(cid.split(":")[1] + ".json", cfg)]
    parts += [member(n, d) for n, d in layer_members]
    parts += [member("manifest.json", manifest(cid, names)), END]
    return b"".join(parts)


def case_chain(binary, n, repeat):
    with Server(binary) as s:
        ids = []
        c = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60)
        for i in range(n):
            cfg = config([], f'[{{"comment":"{i}"}}]')
            c.request("PUT", f"/v1/blobs/{sha(cfg)}", body=cfg)
            r = c.getresponse()
            r.read()
            assert r.status in (200, 201), r.status
            ids.append(sha(cfg))
        c.close()
        images = []
        for i in reversed(range(n)):
            img = {"id": ids[i]}
            if i > 0:
                img["parent"] = ids[i - 1]
            images.append(img)
        # Compact, no tags: under the 2 MiB that axum allowed JSON bodies before issue 12.
        body = json.dumps({"images": images}, separators=(",", ":")).encode()
        times = []
        status = None
        for k in range(repeat):
            t = time.monotonic()
            status, _ = s.request("PUT", f"/v1/images/ns/chain{k}/manifest", body=body,
                                  headers={"Content-Type": "application/json"})
            times.append(time.monotonic() - t)
        return status, statistics.median(times), s.peak_mib()


def case_manifest(binary):
    n = 20_000_000
    data = b'[{"Config":"c.json","Layers":[' + b",".join([b'""'] * n) + b"]}]"
    body = member("manifest.json", data) + END
    with Server(binary) as s:
        t = time.monotonic()
        status, _ = s.request("PUT", "/v1/images/ns/k", body=body)
        return status, time.monotonic() - t, s.peak_mib()


def case_history(binary):
    layer = member("f", b"x")
    cfg = config([sha(layer)], "[" + ",".join(["{}"] * 2_300_000) + "]")
    body = image_tarball(cfg, [("l/layer.tar", layer)])
    with Server(binary) as s:
        t = time.monotonic()
        status, _ = s.request("PUT", "/v1/images/ns/k", body=body)
        return status, time.monotonic() - t, s.peak_mib()


def case_members(binary):
    n = 300
    content = bytes(i % 253 for i in range((1 << 20) + 1))
    cfg = config([sha(content)] * n)
    body = image_tarball(cfg, [(f"l{i}/layer.tar", content) for i in range(n)])
    with Server(binary) as s:
        t = time.monotonic()
        status, _ = s.request("PUT", "/v1/images/ns/k", body=body)
        return status, time.monotonic() - t, s.peak_mib()


def case_bomb(binary):
    one = gzip.compress(b"\0" * (16 << 20), 9)
    bomb = one * 64
    cfg = config([sha(b"made up")])
    body = image_tarball(cfg, [("l/layer.tar.gz", bomb)])
    with Server(binary, "--max-upload-bytes", str(16 << 20)) as s:
        t = time.monotonic()
        status, _ = s.request("PUT", "/v1/images/ns/k", body=body)
        return f"{status} ({len(bomb) >> 10} KiB gz)", time.monotonic() - t, s.peak_mib()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="target/release/layercache-server")
    ap.add_argument("--baseline", help="an older binary to compare with")
    ap.add_argument("--chain", type=int, default=12_000, help="images in the parent chain")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", help="run only the cases whose name contains this")
    args = ap.parse_args()
    for b in [args.server] + ([args.baseline] if args.baseline else []):
        if not os.path.exists(b):
            sys.exit(f"{b} is missing: run `cargo build --release -p layercache-server`")

    cases = [
        (f"chain commit ({args.chain} images)", lambda b: case_chain(b, args.chain, args.repeat)),
        ("manifest.json 57 MiB, 20 M paths", case_manifest),
        ("config, 2.3 M history entries", case_history),
        ("300 layers of 1 MiB + 1 B", case_members),
        ("gzip bomb 1 GiB, limit 16 MiB", case_bomb),
    ]
    head = "| case | answer | time (s) | peak RSS (MiB) |"
    rule = "| --- | --- | ---: | ---: |"
    if args.baseline:
        head += " baseline answer | baseline time (s) | baseline RSS (MiB) | time ratio |"
        rule += " --- | ---: | ---: | ---: |"
    print(head)
    print(rule)
    for name, run in cases:
        if args.only and args.only not in name:
            continue
        status, secs, peak = run(args.server)
        row = f"| {name} | {status} | {secs:.2f} | {peak:.0f} |"
        if args.baseline:
            bstatus, bsecs, bpeak = run(args.baseline)
            row += f" {bstatus} | {bsecs:.2f} | {bpeak:.0f} | {bsecs / max(secs, 1e-9):.1f}x |"
        print(row, flush=True)


if __name__ == "__main__":
    main()
