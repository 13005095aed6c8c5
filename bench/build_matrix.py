#!/usr/bin/env python3
"""`layercache build` on every engine kind of the matrix (issue 11), in one run:

  warm vs BuildKit's own registry cache (Engine 26.1, containerd store): a warm build on a wiped
      engine through layercache (registry cache on the layercache server, import + mode=max export)
      vs the same BuildKit build with --cache-from/--cache-to type=registry,mode=max against Debian's
      docker-registry (distribution 2.8); every step must be CACHED in both, or the run is void;
  warm / cold with a slow step (--slow-step, default 20 s) in each of two stages, on Engine 20.10,
      26.1 classic store and 26.1 containerd store: cold = wiped engine and empty server, warm =
      wiped engine, cache on the server (the summary must say no step ran);
  cache compression (Engine 26.1, containerd store, layercache server): export and import of a
      mode=max cache with compression=uncompressed, gzip and zstd.

Runs take turns (--runs, default 3; medians reported). Prints one markdown table.

Usage: python3 bench/build_matrix.py [--size-mib 128] [--layers 4] [--runs 3] [--slow-step 20]
                                     [--runner-bin PATH] [--server-bin PATH]
Needs root (dockerd, bridges) and Engine 26.1 from scripts/install-engine26.sh (run if missing).
Builds the release binaries unless --runner-bin/--server-bin are given.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import ROOT, Procs, interleaved, layer_step, log, sh  # noqa: E402
from registry import ENGINE26, Registries, all_steps_cached  # noqa: E402


class Engine26:
    """A private Engine 26.1 with the classic or the containerd image store, its own bridge and a
    DOCKER_CONFIG holding buildx."""

    def __init__(self, procs, work, containerd):
        self.containerd = containerd
        self.dir = Path(tempfile.mkdtemp(prefix="lc-bench-dk", dir="/tmp"))
        self.host = f"unix://{self.dir}/sock"
        self.bridge = self._claim_bridge()
        self.config = self.dir / "config"
        (self.config / "cli-plugins").mkdir(parents=True)
        (self.config / "cli-plugins" / "docker-buildx").symlink_to(
            ENGINE26 / "usr/libexec/docker/cli-plugins/docker-buildx")
        store = "true" if containerd else "false"
        (self.dir / "daemon.json").write_text(f'{{"features": {{"containerd-snapshotter": {store}}}}}')
        self.cli = str(ENGINE26 / "usr/bin/docker")
        self.env = dict(os.environ, DOCKER_HOST=self.host, DOCKER_CONFIG=str(self.config),
                        LAYERCACHE_DOCKER_CLI=self.cli)
        path = f"{ENGINE26}/usr/bin:{ENGINE26}/usr/sbin:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"
        self.proc = procs.start(
            [str(ENGINE26 / "usr/sbin/dockerd"), "--config-file", str(self.dir / "daemon.json"),
             "--data-root", f"{self.dir}/data", "--exec-root", f"{self.dir}/exec", "--pidfile",
             f"{self.dir}/pid", "-H", self.host, f"--bridge={self.bridge}", "--iptables=false",
             "--ip-masq=false"], work / f"dockerd26-{store}.log", env=dict(os.environ, PATH=path))
        for _ in range(240):
            if subprocess.run([self.cli, "version"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.25)
        raise SystemExit(f"Engine 26 did not start; see {work}")

    @staticmethod
    def _claim_bridge():
        """`ip link add` fails on an existing name, so creating lcmxN claims N (and 10.233.N.0/24)."""
        for n in range(250):
            name = f"lcmx{n}"
            if subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True).returncode == 0:
                sh(["ip", "addr", "add", f"10.233.{n}.1/24", "dev", name])
                sh(["ip", "link", "set", name, "up"])
                return name
        raise SystemExit("no free bridge name lcmx0..lcmx249")

    def docker(self, *args, **kw):
        return sh([self.cli, *args], env=self.env, **kw)

    def buildx(self, ctx, *flags):
        """`docker buildx build --progress=plain FLAGS CTX`; returns its log."""
        r = subprocess.run([self.cli, "buildx", "build", "--progress=plain", "-t", "bench/app:1", *flags, str(ctx)],
                           env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise SystemExit(f"docker buildx build {flags} failed:\n{r.stdout}")
        return r.stdout

    def wipe(self):
        self.docker("image", "prune", "-a", "-f")
        self.docker("builder", "prune", "-a", "-f")
        os.sync()

    def close(self, procs):
        procs.stop(self.proc)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


def two_stage_context(work, name, layers, layer_mib, slow):
    """Two stages, each with data layers and a `slow`-second step (0: none)."""
    ctx = work / name
    ctx.mkdir(exist_ok=True)
    shutil.copy("/bin/busybox", ctx / "busybox")
    sleep = f"RUN sleep {slow}\n" if slow else ""
    half = max(1, layers // 2)
    build_steps = "".join(layer_step(i, layer_mib) for i in range(half))
    final_steps = "".join(layer_step(i, layer_mib) for i in range(half, layers))
    (ctx / "Dockerfile").write_text(
        "FROM scratch AS build\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n' + build_steps + sleep +
        "RUN mkdir -p /out && cp /data0.bin /out/\n"
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\nCOPY --from=build /out /out\n' + final_steps + sleep)
    return ctx


def layercache_build(runner_bin, engine, server_url, ctx, namespace):
    """`layercache build --json`; returns the summary."""
    env = dict(engine.env, LAYERCACHE_SERVER=server_url)
    r = subprocess.run([str(runner_bin), "build", "--namespace", namespace, "-t", "bench/app:1", "--json",
                        str(ctx)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise SystemExit(f"layercache build failed:\n{r.stderr}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=128, help="approximate image size")
    ap.add_argument("--layers", type=int, default=4, help="data layers, split between the two stages")
    ap.add_argument("--runs", type=int, default=3, help="repetitions per measurement (median reported)")
    ap.add_argument("--slow-step", type=int, default=20, help="seconds of the slow step of each stage")
    ap.add_argument("--runner-bin", type=Path, help="a built layercache (default: build --release)")
    ap.add_argument("--server-bin", type=Path, help="a built layercache-server (default: build --release)")
    args = ap.parse_args()

    bench.ensure_packages()
    if not (ENGINE26 / "usr/sbin/dockerd").exists():
        sh([str(ROOT / "scripts/install-engine26.sh")], capture=False)
    release = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release"
    if args.runner_bin is None or args.server_bin is None:
        log("building the release binaries")
        sh(["cargo", "build", "--release", "-p", "layercache", "-p", "layercache-server", "--manifest-path",
            str(ROOT / "Cargo.toml")], capture=False)
    runner_bin = args.runner_bin or release / "layercache"
    server_bin = args.server_bin or release / "layercache-server"

    work = Path(tempfile.mkdtemp(prefix="lc-bench-mx-"))
    procs = Procs()
    engines = []
    try:
        run(args, work, procs, runner_bin, server_bin, engines)
    finally:
        for e in engines:
            if isinstance(e, Engine26):
                e.close(procs)
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        for d in Path("/tmp").glob("lc-bench-dk*"):
            shutil.rmtree(d, ignore_errors=True)


def run(args, work, procs, runner_bin, server_bin, engines):
    runs = args.runs
    layer_mib = max(1, args.size_mib // args.layers)
    regs = Registries(procs, work, server_bin)
    lc_url = f"http://{regs.lc_host}"
    rows = []

    e26c = Engine26(procs, work, containerd=True)
    engines.append(e26c)
    ctx = two_stage_context(work, "ctx", args.layers, layer_mib, 0)

    # 1. Warm build through layercache vs BuildKit's registry cache on distribution.
    log("priming both registries with a mode=max cache of the two-stage build")
    regs.fresh()
    layercache_build(runner_bin, e26c, lc_url, ctx, "bench/main")
    e26c.buildx(ctx, f"--cache-to=type=registry,ref={regs.dist_host}/bench/cache:main,mode=max")
    bad = []

    def via_layercache():
        s = layercache_build(runner_bin, e26c, lc_url, ctx, "bench/main")
        if s["steps_run"] != 0 or not s["pushed"]:
            bad.append(("layercache", s))

    def via_distribution():
        ref = f"{regs.dist_host}/bench/cache:main"
        out = e26c.buildx(ctx, f"--cache-from=type=registry,ref={ref}",
                          f"--cache-to=type=registry,ref={ref},mode=max")
        if not all_steps_cached(out):
            bad.append(("distribution", out[-2000:]))

    log("warm builds on a wiped Engine 26.1 (containerd store), in turns")
    warm = interleaved({"lc": via_layercache, "dist": via_distribution}, runs, setup=e26c.wipe)
    if bad:
        raise SystemExit(f"a warm build ran steps: the measurement is void: {bad}")
    ratio = warm["lc"] / warm["dist"]
    rows.append(["warm build, wiped Engine 26.1 containerd store: layercache vs BuildKit + distribution (s)",
                 f"{warm['lc']:.2f}", f"{warm['dist']:.2f}", f"{ratio:.2f}x", "<= 1.00x",
                 "yes" if ratio <= 1.0 else "NO"])

    # 2. Cache compression, export and import through the layercache server's registry.
    for comp in ("uncompressed", "gzip", "zstd"):
        exports, imports = [], []
        for _ in range(runs):
            regs.fresh()
            e26c.wipe()
            e26c.buildx(ctx)  # built locally first: the export alone is timed
            ref = f"{regs.lc_host}/bench/comp:{comp}"
            t0 = time.perf_counter()
            e26c.buildx(ctx, f"--cache-to=type=registry,ref={ref},mode=max,compression={comp}")
            exports.append(time.perf_counter() - t0)
            e26c.wipe()
            t0 = time.perf_counter()
            out = e26c.buildx(ctx, f"--cache-from=type=registry,ref={ref}")
            imports.append(time.perf_counter() - t0)
            if not all_steps_cached(out):
                raise SystemExit(f"import with compression={comp} ran steps: void")
        log(f"  compression={comp}: export {exports}, import {imports}")
        rows.append([f"cache compression={comp}: export / import (s)",
                     f"{statistics.median(exports):.2f} / {statistics.median(imports):.2f}", "", "", "", ""])

    # 3. Warm / cold with a slow step on each engine kind.
    slow_ctx = two_stage_context(work, "slow", args.layers, layer_mib, args.slow_step)
    e26k = Engine26(procs, work, containerd=False)
    engines.append(e26k)
    e20 = bench.Engine(procs, work)
    for name, engine in (("Engine 20.10", e20), ("Engine 26.1 classic store", e26k),
                         ("Engine 26.1 containerd store", e26c)):
        colds, warms = [], []
        for _ in range(runs):
            regs.fresh()
            engine.wipe()
            t0 = time.perf_counter()
            cold = layercache_build(runner_bin, engine, lc_url, slow_ctx, "bench/slow")
            colds.append(time.perf_counter() - t0)
            engine.wipe()
            t0 = time.perf_counter()
            hot = layercache_build(runner_bin, engine, lc_url, slow_ctx, "bench/slow")
            warms.append(time.perf_counter() - t0)
            if hot["steps_run"] != 0 or hot["cache"] == "miss":
                raise SystemExit(f"{name}: the warm build ran steps: void: {hot}")
        log(f"  {name} ({cold['builder']}): cold {colds}, warm {warms}")
        c, w = statistics.median(colds), statistics.median(warms)
        rows.append([f"warm / cold, {args.slow_step} s step per stage, {name} ({cold['path']}) (s)",
                     f"{w:.2f}", f"{c:.2f}", f"{w / c:.2f}", "<= 0.25", "yes" if w / c <= 0.25 else "NO"])
    regs.stop()

    print(f"\n## Build matrix (issue 11): two stages, {args.layers}x{layer_mib} MiB data layers, "
          f"median of {runs}\n")
    print("| measurement | layercache | baseline | ratio | target | met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()
