#!/usr/bin/env python3
"""layercache benchmark: layercache side by side with the tools it replaces, in one run.

Starts everything it needs on this machine (a private Docker engine, a local Docker registry, nginx,
the release layercache-server), builds a test image FROM scratch, then measures each operation
`--runs` times and prints medians and ratios:

  server (issue 2)  GET|docker load vs docker load -i vs docker pull; ingest PUT vs docker push;
                    blob GET vs nginx sendfile; blob PUT vs openssl dgst -sha256; server peak RSS.
  runner (issue 3)  layercache restore vs docker load -i vs docker pull; first layercache push vs
                    docker push; bytes uploaded after a one-layer change; warm vs cold build.

Usage: python3 bench/bench.py [--size-mib 256] [--runs 3] [--rss-gib 1] [--only server|runner]
Needs root (dockerd). Installs docker.io, busybox-static, docker-registry and nginx if missing.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def sh(cmd, env=None, check=True, capture=True, stdin=None):
    r = subprocess.run(cmd, shell=isinstance(cmd, str), env=env, stdin=stdin,
                       stdout=subprocess.PIPE if capture else None,
                       stderr=subprocess.PIPE if capture else None, text=True)
    if check and r.returncode != 0:
        raise SystemExit(f"command failed ({r.returncode}): {cmd}\n{r.stderr}")
    return r.stdout if capture else ""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except Exception:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


def timed(fn, runs, setup=None):
    """Median seconds of fn() over runs, calling setup() untimed before each."""
    times = []
    for _ in range(runs):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def interleaved(fns, runs, setup=None):
    """Median seconds of each named fn, the fns taking turns within every run (A B C, A B C, ...)
    so that drift in a noisy machine's load weighs on all of them alike; setup() runs untimed
    before each call."""
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            if setup:
                setup()
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    log("  runs: " + ", ".join(f"{name} {[round(t, 2) for t in ts]}" for name, ts in times.items()))
    return {name: statistics.median(ts) for name, ts in times.items()}


class Procs:
    """Background processes, all stopped at exit."""

    def __init__(self):
        self.procs = []

    def start(self, args, logfile, env=None):
        p = subprocess.Popen(args, stdout=open(logfile, "w"), stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def stop_all(self):
        for p in reversed(self.procs):
            self.stop(p)


class Engine:
    def __init__(self, procs, work):
        self.dir = Path(tempfile.mkdtemp(prefix="lc-bench-dk", dir="/tmp"))
        self.host = f"unix://{self.dir}/sock"
        self.env = dict(os.environ, DOCKER_HOST=self.host, DOCKER_BUILDKIT="0")
        self.proc = procs.start(["dockerd", "--data-root", f"{self.dir}/data", "--exec-root", f"{self.dir}/exec",
                                 "--pidfile", f"{self.dir}/pid", "-H", self.host, "--bridge=none",
                                 "--iptables=false"], work / "dockerd.log")
        for _ in range(120):
            if subprocess.run([DOCKER, "version"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.25)
        raise SystemExit("dockerd did not start")

    def docker(self, *args, **kw):
        return sh([DOCKER, *args], env=self.env, **kw)

    def wipe(self):
        # prune -a removes a parent chain children-first; rmi of the chain would refuse parents.
        self.docker("image", "prune", "-a", "-f")
        # The next measurement should not pay for writing back what the last one left dirty.
        os.sync()

    def chain(self, ref):
        ids = [self.docker("image", "inspect", "-f", "{{.Id}}", ref).strip()]
        while True:
            parent = self.docker("image", "inspect", "-f", "{{.Parent}}", ids[-1]).strip()
            if not parent:
                return ids
            ids.append(parent)


def peak_rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


CONTENT = "mixed"


def layer_step(i, layer_mib):
    """A RUN step writing about `layer_mib` MiB. `random` is incompressible; `mixed` (the default)
    is half random bytes, half hex text (gzip ≈ 2.5x on that half), closer to real images whose
    binaries and text compress, which is what `docker push` spends its time gzipping."""
    if CONTENT == "random":
        return f"RUN dd if=/dev/urandom of=/data{i}.bin bs=1048576 count={layer_mib} 2>/dev/null\n"
    half = max(1, layer_mib // 2)
    text_bytes = (layer_mib - half) * 1048576
    return (f"RUN dd if=/dev/urandom of=/data{i}.bin bs=1048576 count={half} 2>/dev/null && "
            f"head -c {text_bytes // 3 + 4096} /dev/urandom | od -An -tx1 | head -c {text_bytes} > /text{i}.txt\n")


def make_context(work, name, layers, layer_mib, extra_steps=""):
    ctx = work / name
    ctx.mkdir(exist_ok=True)
    shutil.copy("/bin/busybox", ctx / "busybox")
    steps = "".join(layer_step(i, layer_mib) for i in range(layers))
    (ctx / "Dockerfile").write_text(
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n' + steps + extra_steps)
    return ctx


def table(title, rows):
    print(f"\n## {title}\n")
    print("| measurement | layercache | competitor | ratio | target | met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")
    sys.stdout.flush()


def ensure_packages():
    need = [p for p, probe in [("docker.io", "dockerd"), ("docker-registry", "docker-registry"), ("nginx", "nginx")]
            if shutil.which(probe) is None]
    if not Path("/bin/busybox").exists():
        need.append("busybox-static")
    if need:
        log(f"installing {' '.join(need)}")
        sh("apt-get update -qq", capture=False)
        sh(["apt-get", "install", "-y", "-qq", *need], env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256, help="approximate image size")
    ap.add_argument("--layers", type=int, default=6, help="data layers in the image")
    ap.add_argument("--runs", type=int, default=3, help="repetitions per measurement (median reported)")
    ap.add_argument("--blob-mib", type=int, default=256, help="blob size for blob GET/PUT throughput")
    ap.add_argument("--rss-gib", type=float, default=1.0, help="tarball size for the RSS check (0 skips)")
    ap.add_argument("--slow-step", type=int, default=20, help="seconds of the slow step in the warm-build check")
    ap.add_argument("--only", choices=["server", "runner"], help="run one half")
    ap.add_argument("--content", choices=["mixed", "random"], default="mixed",
                    help="layer data: half random + half hex text (default), or all random")
    args = ap.parse_args()
    global CONTENT
    CONTENT = args.content

    ensure_packages()
    log("building release binaries")
    sh(["cargo", "build", "--release", "--bins", "--manifest-path", str(ROOT / "Cargo.toml")], capture=False)
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    server_bin, runner_bin = target / "layercache-server", target / "layercache"

    work = Path(tempfile.mkdtemp(prefix="lc-bench-"))
    procs = Procs()
    try:
        run(args, work, procs, server_bin, runner_bin)
    finally:
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        for d in Path("/tmp").glob("lc-bench-dk*"):
            shutil.rmtree(d, ignore_errors=True)


def run(args, work, procs, server_bin, runner_bin):
    engine = Engine(procs, work)

    reg_port = free_port()
    reg_dir = work / "registry"

    registries = []

    def start_registry():
        """A registry on an empty storage dir (stopping the previous one), so every push is whole."""
        while registries:
            procs.stop(registries.pop())
        shutil.rmtree(reg_dir, ignore_errors=True)
        reg_dir.mkdir()
        cfg = work / "registry.yml"
        cfg.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {reg_dir}\n"
                       f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{reg_port}\n")
        p = procs.start(["docker-registry", "serve", str(cfg)], work / "registry.log")
        registries.append(p)
        wait_http(f"http://127.0.0.1:{reg_port}/v2/")
        return p

    srv_port = free_port()
    srv_url = f"http://127.0.0.1:{srv_port}"

    def start_server(data):
        p = procs.start([str(server_bin), "--open", "--listen", f"127.0.0.1:{srv_port}", "--data-dir", str(data)],
                        work / "server.log", env=dict(os.environ, RUST_LOG="warn"))
        wait_http(f"{srv_url}/healthz")
        return p

    layer_mib = max(1, args.size_mib // args.layers)
    log(f"building a {args.layers}x{layer_mib} MiB image")
    ctx = make_context(work, "ctx", args.layers, layer_mib)
    engine.docker("build", "-q", "-t", "bench/app:1", str(ctx))
    chain = engine.chain("bench/app:1")
    tarball = work / "image.tar"
    engine.docker("save", "-o", str(tarball), "bench/app:1", *chain[1:])
    tar_mib = tarball.stat().st_size / 2**20
    log(f"image tarball: {tar_mib:.0f} MiB, {len(chain)} images in the chain")
    reg_ref = f"127.0.0.1:{reg_port}/bench/app:1"

    runs = args.runs
    start_registry()
    server = start_server(work / "srv-data")

    def put_tarball(key):
        sh(["curl", "-sf", "-o", "/dev/null", "-T", str(tarball), f"{srv_url}/v1/images/bench/{key}"])

    put_tarball("warm")

    if args.only in (None, "server"):
        # The same tarball under the Dockerfile's key, for `layercache restore` to find.
        runner_env = dict(engine.env, LAYERCACHE_SERVER=srv_url, NO_COLOR="1")
        dkey = json.loads(sh([str(runner_bin), "key", "-f", str(ctx / "Dockerfile"), "--json"]))["key"]
        put_tarball(urllib.parse.quote(dkey, safe=""))
        log("docker load -i, GET | docker load, cat | docker load (the CLI's stdin path without the "
            "server), GET into the Engine's load API (layercache restore), in turns")
        loads = interleaved({
            "load_i": lambda: engine.docker("load", "-q", "-i", str(tarball)),
            "get_load": lambda: sh(f"curl -sf {srv_url}/v1/images/bench/warm | "
                                   f"DOCKER_HOST={engine.host} {DOCKER} load -q"),
            "cat_load": lambda: sh(f"cat {tarball} | DOCKER_HOST={engine.host} {DOCKER} load -q"),
            "api_load": lambda: sh([str(runner_bin), "restore", "--namespace", "bench", str(ctx)], env=runner_env),
        }, runs, setup=engine.wipe)
        load_i, get_load, cat_load, api_load = (loads[k] for k in ("load_i", "get_load", "cat_load", "api_load"))
        log("docker push (fresh registry each run)")

        def fresh_registry():
            start_registry()
            engine.wipe()
            engine.docker("load", "-q", "-i", str(tarball))
            engine.docker("tag", "bench/app:1", reg_ref)

        push, _ = timed(lambda: engine.docker("push", reg_ref), runs, setup=fresh_registry)
        log("docker pull")
        pull, _ = timed(lambda: engine.docker("pull", "-q", reg_ref), runs, setup=engine.wipe)
        log("ingest PUT (fresh server data dir each run)")
        # Each run uses a new server data dir so no layer is deduplicated.
        ingest_times = []
        for i in range(runs):
            procs.stop(server)
            data = work / f"srv-ingest-{i}"
            server = start_server(data)
            t0 = time.perf_counter()
            put_tarball("ingest")
            ingest_times.append(time.perf_counter() - t0)
            shutil.rmtree(work / f"srv-ingest-{i - 1}", ignore_errors=True)
        ingest = statistics.median(ingest_times)
        put_tarball("warm")

        log("blob GET vs nginx, blob PUT vs openssl")
        blob = work / "www" / "blob.bin"
        blob.parent.mkdir()
        sh(f"head -c {args.blob_mib * 2**20} /dev/urandom > {blob}")
        digest = "sha256:" + sh(["sha256sum", str(blob)]).split()[0]
        nginx_port = free_port()
        conf = work / "nginx.conf"
        conf.write_text(f"""daemon off; user root; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  server {{ listen 127.0.0.1:{nginx_port}; root {blob.parent}; }} }}""")
        procs.start(["nginx", "-c", str(conf)], work / "nginx.log")
        wait_http(f"http://127.0.0.1:{nginx_port}/blob.bin")
        sh(["curl", "-sf", "-o", "/dev/null", "-T", str(blob), f"{srv_url}/v1/blobs/{digest}"])
        size_mb = blob.stat().st_size / 1e6
        gets = interleaved({
            "blob": lambda: sh(["curl", "-sf", "-o", "/dev/null", f"{srv_url}/v1/blobs/{digest}"]),
            "nginx": lambda: sh(["curl", "-sf", "-o", "/dev/null", f"http://127.0.0.1:{nginx_port}/blob.bin"]),
        }, runs * 2)
        get_blob, get_nginx = gets["blob"], gets["nginx"]
        openssl, _ = timed(lambda: sh(["openssl", "dgst", "-sha256", str(blob)]), runs * 2)

        put_times = []
        for i in range(runs):
            procs.stop(server)
            shutil.rmtree(work / f"srv-blob-{i - 1}", ignore_errors=True)
            server = start_server(work / f"srv-blob-{i}")
            t0 = time.perf_counter()
            sh(["curl", "-sf", "-o", "/dev/null", "-T", str(blob), f"{srv_url}/v1/blobs/{digest}"])
            put_times.append(time.perf_counter() - t0)
        put_blob = statistics.median(put_times)

        rows = [
            ["GET tarball + docker load, through the Engine API (layercache restore, lookup included) (s)",
             f"{api_load:.2f}", f"docker load -i {load_i:.2f}",
             f"{api_load / load_i:.2f}x", "<= 1.10x", "yes" if api_load <= 1.10 * load_i else "NO"],
            ["GET tarball \\| docker load, through the CLI's stdin (s)", f"{get_load:.2f}",
             f"docker load -i {load_i:.2f}", f"{get_load / load_i:.2f}x", "<= 1.10x",
             "yes" if get_load <= 1.10 * load_i else "NO"],
            ["  (reference) the CLI's stdin path alone: cat file \\| docker load (s)", f"{get_load:.2f}",
             f"cat \\| load {cat_load:.2f} ({cat_load / load_i:.2f}x of load -i)",
             f"{get_load / cat_load:.2f}x", "report", "-"],
            ["  (reference) docker pull (s)", f"{get_load:.2f}", f"docker pull {pull:.2f}",
             f"{get_load / pull:.2f}x", "report", "-"],
            ["ingest PUT of the tarball (s)", f"{ingest:.2f}", f"docker push {push:.2f}",
             f"{push / ingest:.1f}x faster", ">= 3x", "yes" if push >= 3 * ingest else "NO"],
            ["blob GET (MB/s)", f"{size_mb / get_blob:.0f}", f"nginx {size_mb / get_nginx:.0f}",
             f"{get_nginx / get_blob * 100:.0f}%", ">= 80%", "yes" if get_blob <= get_nginx / 0.8 else "NO"],
            ["blob PUT, digest verified (MB/s)", f"{size_mb / put_blob:.0f}", f"openssl dgst {size_mb / openssl:.0f}",
             f"{openssl / put_blob * 100:.0f}%", ">= 40%", "yes" if put_blob <= openssl / 0.4 else "NO"],
        ]
        if args.rss_gib > 0:
            log(f"RSS while ingesting and serving a {args.rss_gib} GiB tarball")
            big_ctx = make_context(work, "big", 8, int(args.rss_gib * 1024 / 8))
            engine.docker("build", "-q", "-t", "bench/big:1", str(big_ctx))
            big_chain = engine.chain("bench/big:1")
            big = work / "big.tar"
            engine.docker("save", "-o", str(big), "bench/big:1", *big_chain[1:])
            engine.docker("rmi", "-f", "bench/big:1", check=False)
            procs.stop(server)
            server = start_server(work / "srv-rss")
            sh(["curl", "-sf", "-o", "/dev/null", "-T", str(big), f"{srv_url}/v1/images/bench/big"])
            sh(f"curl -sf {srv_url}/v1/images/bench/big -o /dev/null")
            rss = peak_rss_mib(server.pid)
            big.unlink()
            rows.append(["server peak RSS, 1 GiB in and out (MiB)", f"{rss:.0f}", "-", "-", "< 100 MiB",
                         "yes" if rss < 100 else "NO"])
            put_tarball("warm")
        table(f"Server (issue 2): {tar_mib:.0f} MiB image, {len(chain)} images, median of {runs}", rows)

    if args.only in (None, "runner"):
        def restart_server():
            nonlocal server
            procs.stop(server)
            server = start_server(Path(tempfile.mkdtemp(dir=work, prefix="srv-")))

        run_runner(args, work, engine, runner_bin, srv_url, reg_ref, start_registry, restart_server, runs)


def new_layers_budget(engine, work, new_ref, old_ref):
    """Bytes a push after a change must carry at least: the layers `new_ref`'s chain adds over
    `old_ref`'s, plus the configs of the images not in `old_ref`'s chain."""
    old_chain = set(engine.chain(old_ref))
    new_chain = [i for i in engine.chain(new_ref) if i not in old_chain]
    old_layers = set(json.loads(engine.docker("image", "inspect", "-f", "{{json .RootFS.Layers}}", old_ref)))
    out = work / "changed.tar"
    engine.docker("save", "-o", str(out), *new_chain)
    budget = 0
    with tarfile.open(out) as tf:
        manifest = json.load(tf.extractfile("manifest.json"))
        seen = set()
        for m in manifest:
            budget += tf.getmember(m["Config"]).size
            config = json.load(tf.extractfile(m["Config"]))
            for diff_id, path in zip(config["rootfs"]["diff_ids"], m["Layers"]):
                if diff_id not in old_layers and diff_id not in seen:
                    seen.add(diff_id)
                    member = tf.getmember(path)
                    while member.issym():
                        member = tf.getmember(os.path.normpath(os.path.join(os.path.dirname(path), member.linkname)))
                    budget += member.size
    out.unlink()
    return budget


def run_runner(args, work, engine, runner_bin, srv_url, reg_ref, start_registry, restart_server, runs):
    """The runner half. Every image here is built by `layercache build` itself: the legacy builder
    keys COPY steps on the client's context tar, so images built by the docker CLI are not reused."""
    env = dict(engine.env, LAYERCACHE_SERVER=srv_url, NO_COLOR="1")
    ctx = work / "ctx"

    def lc(*a):
        out = sh([str(runner_bin), *a], env=env)
        return json.loads(out) if "--json" in a else out

    log("runner: cold build of the image with layercache build --no-push")
    engine.wipe()
    lc("build", "--no-push", "--namespace", "bench", "-t", "bench/app:1", str(ctx))
    chain = engine.chain("bench/app:1")
    tarball = work / "runner-image.tar"
    engine.docker("save", "-o", str(tarball), "bench/app:1", *chain[1:])
    tar_mib = tarball.stat().st_size / 2**20

    log("first push: layercache save vs docker push (fresh server / registry each run)")
    push_lc, push_docker = [], []
    for _ in range(runs):
        restart_server()
        # Each push starts with nothing left to write back from the previous one.
        os.sync()
        t0 = time.perf_counter()
        lc("save", "--json", "--namespace", "bench", "--image", "bench/app:1", str(ctx))
        push_lc.append(time.perf_counter() - t0)
        start_registry()
        engine.docker("tag", "bench/app:1", reg_ref)
        os.sync()
        t0 = time.perf_counter()
        engine.docker("push", reg_ref)
        push_docker.append(time.perf_counter() - t0)
    log(f"  layercache push runs: {[round(t, 2) for t in push_lc]}, docker push: {[round(t, 2) for t in push_docker]}")
    first_push, push = statistics.median(push_lc), statistics.median(push_docker)

    log("restore: layercache restore vs docker load -i vs docker pull, in turns")
    restores = interleaved({
        "load_i": lambda: engine.docker("load", "-q", "-i", str(tarball)),
        "pull": lambda: engine.docker("pull", "-q", reg_ref),
        "restore": lambda: lc("restore", "--namespace", "bench", str(ctx)),
    }, runs, setup=engine.wipe)
    load_i, pull, restore = restores["load_i"], restores["pull"], restores["restore"]

    log("one-layer change: push after adding a last step")
    engine.wipe()
    lc("restore", "--namespace", "bench", str(ctx))
    df = (ctx / "Dockerfile").read_text()
    (ctx / "Dockerfile").write_text(df + "RUN echo changed > /changed.txt\n")
    changed = lc("build", "--json", "--namespace", "bench", "-t", "bench/app:2", str(ctx))
    budget = new_layers_budget(engine, work, "bench/app:2", "bench/app:1")
    (ctx / "Dockerfile").write_text(df)

    log(f"warm vs cold build with a {args.slow_step} s step")
    slow_ctx = make_context(work, "slow", 2, 8, extra_steps=f"RUN sleep {args.slow_step} && echo done > /slow.txt\n")
    colds, warms, warm_summary = [], [], {}
    for i in range(runs):
        engine.wipe()
        t0 = time.perf_counter()
        lc("build", "--json", "--namespace", f"bench-slow-{i}", "-t", "bench/slow:1", str(slow_ctx))
        colds.append(time.perf_counter() - t0)
        engine.wipe()
        t0 = time.perf_counter()
        warm_summary = lc("build", "--json", "--namespace", f"bench-slow-{i}", "-t", "bench/slow:1", str(slow_ctx))
        warms.append(time.perf_counter() - t0)
    cold, warm = statistics.median(colds), statistics.median(warms)

    up = changed.get("bytes_uploaded", 0)
    whole = tarball.stat().st_size
    rows = [
        ["restore: lookup+download+load (s)", f"{restore:.2f}", f"docker load -i {load_i:.2f}",
         f"{restore / load_i:.2f}x", "<= 1.10x", "yes" if restore <= 1.10 * load_i else "NO"],
        ["restore vs docker pull (s)", f"{restore:.2f}", f"docker pull {pull:.2f}", f"{restore / pull:.2f}x",
         "<= 1.00x", "yes" if restore <= pull else "NO"],
        ["first push (s)", f"{first_push:.2f}", f"docker push {push:.2f}", f"{push / first_push:.1f}x faster",
         ">= 3x", "yes" if push >= 3 * first_push else "NO"],
        ["bytes uploaded after a one-layer change", f"{up}", f"new layer + configs {budget}",
         f"{up / budget:.2f}x (whole tarball: {whole})", "<= 1.05x", "yes" if up <= 1.05 * budget else "NO"],
        [f"warm build with a {args.slow_step} s step (s)", f"{warm:.2f}", f"cold build {cold:.2f}",
         f"{warm / cold * 100:.0f}%", "< 25%", "yes" if warm < 0.25 * cold else "NO"],
    ]
    table(f"Runner (issue 3): {tar_mib:.0f} MiB image, {len(chain)} images, median of {runs}; "
          f"warm cache result: {warm_summary.get('cache')}, after the change: {changed.get('cache')}", rows)


if __name__ == "__main__":
    main()
