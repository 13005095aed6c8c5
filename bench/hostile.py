#!/usr/bin/env python3
"""Hostile-client benchmark for layercache-server (issue 12; python3 stdlib only).

Runs the release server twice on a fresh data dir each time: once with N runners (default 32,
the clients of bench/load.py: lookup, restore, blob PUT, tarball push) alone, and once with the
same runners while hostile clients are held open the whole time:

- 500 stalled uploads: `POST /v1/blobs` announcing 1 MiB, 10 bytes sent, then nothing;
- 200 slowloris clients: a request header sent one byte per second, never finished;
- 1000 idle connections: connected, nothing sent.

The hostile clients run in their own process (their loop would otherwise take the runners' GIL);
whatever the server closes is reopened at once, so the counts hold for the whole run. At the end
the server gets SIGTERM with the hostile clients still connected. Prints a markdown table: runner
errors, restore throughput (and hostile/baseline ratio), lookup p50/p99, the server's peak RSS
(VmHWM) and SIGTERM-to-exit time. Exits 1 when a runner saw an error.

    cargo build --release -p layercache-server
    python3 bench/hostile.py --seconds 60
    python3 bench/hostile.py --seconds 5 --shutdown-timeout 3   # a quick run, about 20 s in all
"""

import argparse
import http.client
import multiprocessing
import os
import random
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import load  # noqa: E402  (the runners' client loop, images and stats)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def vm_hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Hostile:
    """Holds stalled uploads, slowloris senders and idle connections open, reopening closed ones."""

    def __init__(self, host, port, stalled, slowloris, idle):
        self.addr = (host, port)
        self.want = {"stalled": stalled, "slowloris": slowloris, "idle": idle}
        self.sel = selectors.DefaultSelector()
        self.socks = {}  # socket -> kind
        self.reopened = 0
        self.connect_failures = 0
        self.samples = {k: [] for k in self.want}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def open(self, kind):
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(self.addr)
            if kind == "stalled":
                s.sendall(b"POST /v1/blobs HTTP/1.1\r\nHost: h\r\n"
                          b"Content-Length: 1048576\r\n\r\n" + b"\0" * 10)
            elif kind == "slowloris":
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: h\r\n")
        except OSError:
            self.connect_failures += 1
            s.close()
            return
        s.setblocking(False)
        self.sel.register(s, selectors.EVENT_READ, kind)
        self.socks[s] = kind

    def close(self, s):
        self.sel.unregister(s)
        del self.socks[s]
        s.close()

    def fill(self):
        counts = {k: 0 for k in self.want}
        for kind in self.socks.values():
            counts[kind] += 1
        for kind, n in self.want.items():
            for _ in range(n - counts[kind]):
                if self.stop.is_set():
                    return
                self.open(kind)

    def start(self):
        self.fill()
        self.thread.start()

    def run(self):
        last_drip = time.monotonic()
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.2):
                s = key.fileobj
                try:
                    data = s.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    data = b""
                if not data:  # closed by the server (a timeout or eviction): reopen it
                    self.close(s)
                    self.reopened += 1
            if time.monotonic() - last_drip >= 1.0:
                last_drip = time.monotonic()
                for s, kind in list(self.socks.items()):
                    if kind == "slowloris":
                        try:
                            s.send(b"X")
                        except OSError:
                            self.close(s)
                            self.reopened += 1
            self.fill()
            counts = {k: 0 for k in self.want}
            for kind in self.socks.values():
                counts[kind] += 1
            for k, n in counts.items():
                self.samples[k].append(n)

    def held(self, kind):
        v = self.samples[kind]
        return min(v) if v else 0

    def freeze(self):
        """Stops reopening and sampling; the connections stay open (for the SIGTERM)."""
        self.stop.set()
        self.thread.join(timeout=10)

    def close_all(self):
        for s in list(self.socks):
            self.close(s)


def hostile_process(host, port, stalled, slowloris, idle, pipe):
    """The hostile clients in their own process, so their loop does not take the runners' GIL.

    Protocol on `pipe`: sends "ready" once all are open; on "freeze" stops reopening and sends
    its counts (the sockets stay open); on "close" closes everything and exits.
    """
    raise_nofile()
    h = Hostile(host, port, stalled, slowloris, idle)
    h.start()
    pipe.send("ready")
    assert pipe.recv() == "freeze"
    h.freeze()
    held = {k: h.held(k) for k in h.want}
    held["open_at_sigterm"] = len(h.socks)
    held["reopened"] = h.reopened
    held["connect_failures"] = h.connect_failures
    pipe.send(held)
    assert pipe.recv() == "close"
    h.close_all()


def start_server(binary, tmp, shutdown_secs):
    host, port = "127.0.0.1", load.free_port()
    log = open(os.path.join(tmp, "server.log"), "wb")
    proc = subprocess.Popen([binary, "--open", "--listen", f"{host}:{port}", "--data-dir",
                             os.path.join(tmp, "data"),
                             "--shutdown-timeout-secs", str(shutdown_secs)],
                            stdout=subprocess.DEVNULL, stderr=log)
    for _ in range(400):
        try:
            c = http.client.HTTPConnection(host, port, timeout=1)
            if load.request(c, "GET", "/healthz")[0] == 200:
                return proc, host, port
        except OSError:
            time.sleep(0.05)
    sys.exit("the server did not become healthy")


def one_run(args, images, hostile):
    tmp = tempfile.mkdtemp(prefix="lc-hostile-")
    proc, host, port = start_server(args.server, tmp, args.shutdown_timeout)
    h = None
    if hostile:
        pipe, child_end = multiprocessing.Pipe()
        h = multiprocessing.Process(target=hostile_process,
                                    args=(host, port, args.stalled, args.slowloris, args.idle,
                                          child_end))
        h.start()
        if pipe.recv() != "ready":
            sys.exit("the hostile clients did not start")
    ns = f"bench-{int(time.time())}"
    stats = load.Stats()
    start = time.monotonic()
    deadline = start + args.seconds
    threads = [threading.Thread(target=load.client,
                                args=(i, host, port, images, deadline, stats, ns))
               for i in range(args.runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    rss = vm_hwm_kib(proc.pid) or 0
    held = None
    if h:
        pipe.send("freeze")
        held = pipe.recv()
    t0 = time.monotonic()
    proc.terminate()
    try:
        proc.wait(timeout=args.shutdown_timeout + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    exit_secs = time.monotonic() - t0
    if h:
        pipe.send("close")
        h.join(timeout=30)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "errors": stats.errors,
        "restore_mib_s": stats.get_bytes / (1 << 20) / elapsed,
        "p50": load.pct(stats.lookup_ms, 50),
        "p99": load.pct(stats.lookup_ms, 99),
        "rss_mib": rss / 1024,
        "exit_secs": exit_secs,
        "requests": stats.requests,
        "held": held,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60, help="runner time per run")
    ap.add_argument("--runners", type=int, default=32)
    ap.add_argument("--keys", type=int, default=24)
    ap.add_argument("--layer-kib", type=int, default=2048)
    ap.add_argument("--stalled", type=int, default=500)
    ap.add_argument("--slowloris", type=int, default=200)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--shutdown-timeout", type=int, default=10,
                    help="the server's --shutdown-timeout-secs")
    ap.add_argument("--server", default="target/release/layercache-server")
    args = ap.parse_args()
    if not os.path.exists(args.server):
        sys.exit(f"{args.server} is missing: run `cargo build --release -p layercache-server`")
    nofile = raise_nofile()
    need = args.stalled + args.slowloris + args.idle + args.runners + 64
    if nofile < need:
        sys.exit(f"this process may open {nofile} files, the run needs {need}: raise `ulimit -Hn`")

    base = load.tar_of([("base/shared.bin", random.Random(0).randbytes(1 << 20))])
    images = [load.Image(1000 + i, base, args.layer_kib) for i in range(args.keys)]
    base_run = one_run(args, images, hostile=False)
    host_run = one_run(args, images, hostile=True)

    ratio = host_run["restore_mib_s"] / base_run["restore_mib_s"] if base_run["restore_mib_s"] else 0
    print(f"{args.runners} runners for {args.seconds:.0f} s; hostile: {args.stalled} stalled "
          f"uploads, {args.slowloris} slowloris, {args.idle} idle connections; "
          f"shutdown deadline {args.shutdown_timeout} s\n")
    print("| run | runner errors | requests | restore MiB/s | vs baseline | lookup p50 ms "
          "| lookup p99 ms | server peak RSS MiB | SIGTERM to exit s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r, rel in [("baseline", base_run, 1.0), ("hostile", host_run, ratio)]:
        print(f"| {name} | {len(r['errors'])} | {r['requests']} | {r['restore_mib_s']:.1f} "
              f"| {rel:.2f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['rss_mib']:.1f} "
              f"| {r['exit_secs']:.2f} |")
    held = host_run["held"]
    print(f"\nhostile connections held (minimum over the run): {held['stalled']} stalled, "
          f"{held['slowloris']} slowloris, {held['idle']} idle ({held['open_at_sigterm']} open at "
          f"SIGTERM); {held['reopened']} reopened after the server closed them, "
          f"{held['connect_failures']} connects failed")
    failed = False
    for name, r in [("baseline", base_run), ("hostile", host_run)]:
        if r["errors"]:
            failed = True
            print(f"{name}: {len(r['errors'])} errors, first: {r['errors'][:5]}", file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
