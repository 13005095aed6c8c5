#!/usr/bin/env python3
"""layercache's registry protocol (issue 10) side by side with Debian's docker-registry
(distribution 2.8), in one run, both on loopback:

  docker pull / docker push of a ~250 MiB image (FROM scratch, layers of mixed random/text data)
      on Engine 26.1 with the containerd image store, and on Engine 20.10 (--no-v20 leaves it out);
  BuildKit (Engine 26.1, containerd store, `docker` driver): export of a mode=max registry cache
      (--cache-to, every step already built locally) and a build on a wiped engine importing it
      (--cache-from, every step must be CACHED or the run fails);
  blob GET through /v2/ vs nginx sendfile of the same file (and vs distribution, for reference);
  the layercache server's peak RSS over everything above.

Each measurement runs --runs times (default 3) with the two registries taking turns; the table shows
medians and layercache / distribution ratios against issue 10's targets.

Usage: python3 bench/registry.py [--size-mib 256] [--layers 6] [--runs 3] [--blob-mib 256] [--no-v20]
Needs root (dockerd, bridges), Engine 26.1 from scripts/install-engine26.sh (run if missing).
Builds the release server (cargo build --release -p layercache-server) unless --server-bin is given.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the shared helpers: processes, engines, contexts, timing, tables)
from bench import ROOT, Procs, free_port, interleaved, log, make_context, peak_rss_mib, sh, wait_http  # noqa: E402

ENGINE26 = Path(os.environ.get("LAYERCACHE_ENGINE26", "/opt/layercache-engine26"))


class Engine26:
    """A private Engine 26.1 on the containerd image store, on its own bridge, with its own
    DOCKER_CONFIG holding buildx (the recipe of ../shared/ENGINES.md, as tests/e2e/util.rs does)."""

    def __init__(self, procs, work):
        self.dir = Path(tempfile.mkdtemp(prefix="lc-bench-dk", dir="/tmp"))
        self.host = f"unix://{self.dir}/sock"
        self.bridge = self._claim_bridge()
        config = self.dir / "config"
        (config / "cli-plugins").mkdir(parents=True)
        (config / "cli-plugins" / "docker-buildx").symlink_to(
            ENGINE26 / "usr/libexec/docker/cli-plugins/docker-buildx")
        (self.dir / "daemon.json").write_text('{"features": {"containerd-snapshotter": true}}')
        self.cli = str(ENGINE26 / "usr/bin/docker")
        self.env = dict(os.environ, DOCKER_HOST=self.host, DOCKER_CONFIG=str(config))
        path = f"{ENGINE26}/usr/bin:{ENGINE26}/usr/sbin:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"
        self.proc = procs.start(
            [str(ENGINE26 / "usr/sbin/dockerd"), "--config-file", str(self.dir / "daemon.json"),
             "--data-root", f"{self.dir}/data", "--exec-root", f"{self.dir}/exec", "--pidfile",
             f"{self.dir}/pid", "-H", self.host, f"--bridge={self.bridge}", "--iptables=false",
             "--ip-masq=false"], work / "dockerd26.log", env=dict(os.environ, PATH=path))
        for _ in range(240):
            if subprocess.run([self.cli, "version"], env=self.env, capture_output=True).returncode == 0:
                return
            time.sleep(0.25)
        raise SystemExit(f"Engine 26 did not start; see {work / 'dockerd26.log'}")

    @staticmethod
    def _claim_bridge():
        """`ip link add` fails on an existing name, so creating lcbbN claims N (and 10.232.N.0/24)."""
        for n in range(250):
            name = f"lcbb{n}"
            if subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True).returncode == 0:
                sh(["ip", "addr", "add", f"10.232.{n}.1/24", "dev", name])
                sh(["ip", "link", "set", name, "up"])
                return name
        raise SystemExit("no free bridge name lcbb0..lcbb249")

    def docker(self, *args, **kw):
        return sh([self.cli, *args], env=self.env, **kw)

    def build(self, flag, ctx):
        """`docker buildx build --progress=plain -t bench/app:1 FLAG CTX`; returns its log (stdout and
        stderr, where buildx writes its progress)."""
        r = subprocess.run([self.cli, "buildx", "build", "--progress=plain", "-t", "bench/app:1", flag, str(ctx)],
                           env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise SystemExit(f"docker buildx build {flag} failed:\n{r.stdout}")
        return r.stdout

    def wipe(self):
        """Images and BuildKit's cache go, so the next pull or build fetches everything."""
        self.docker("image", "prune", "-a", "-f")
        self.docker("builder", "prune", "-a", "-f")
        os.sync()

    def close(self, procs):
        procs.stop(self.proc)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Registries:
    """layercache-server and docker-registry on fixed loopback ports, each restartable on empty
    storage; tracks the layercache server's peak RSS over every process it started."""

    def __init__(self, procs, work, server_bin):
        self.procs, self.work, self.server_bin = procs, work, server_bin
        self.lc_host = f"127.0.0.1:{free_port()}"
        self.dist_host = f"127.0.0.1:{free_port()}"
        self.lc = self.dist = None
        self.lc_rss = 0.0
        self.dist_rss = 0.0
        self.generation = 0

    def fresh(self):
        """Both registries restarted on empty storage, so a push uploads every blob."""
        self.stop()
        self.generation += 1
        g = self.generation
        for d in self.work.glob("lc-data-*"):
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.work / "dist-data", ignore_errors=True)
        self.lc = self.procs.start(
            [str(self.server_bin), "--open", "--listen", self.lc_host, "--data-dir", str(self.work / f"lc-data-{g}")],
            self.work / "server.log", env=dict(os.environ, RUST_LOG="warn"))
        cfg = self.work / "registry.yml"
        cfg.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: "
                       f"{self.work / 'dist-data'}\n  delete:\n    enabled: true\nhttp:\n  addr: {self.dist_host}\n")
        self.dist = self.procs.start(["docker-registry", "serve", str(cfg)], self.work / "registry.log")
        wait_http(f"http://{self.lc_host}/v2/")
        wait_http(f"http://{self.dist_host}/v2/")

    def sample_rss(self):
        if self.lc and self.lc.poll() is None:
            self.lc_rss = max(self.lc_rss, peak_rss_mib(self.lc.pid))
        if self.dist and self.dist.poll() is None:
            self.dist_rss = max(self.dist_rss, peak_rss_mib(self.dist.pid))

    def stop(self):
        self.sample_rss()
        for p in (self.lc, self.dist):
            if p is not None:
                self.procs.stop(p)
        if self.lc is not None and self.lc.returncode not in (0, -15):
            raise SystemExit(f"layercache-server exited with {self.lc.returncode}; see {self.work / 'server.log'}")


def push_blob(host, repo, path):
    """A monolithic upload through /v2/ (POST, then PUT with the whole body); returns the digest."""
    digest = "sha256:" + sh(["sha256sum", str(path)]).split()[0]
    req = urllib.request.Request(f"http://{host}/v2/{repo}/blobs/uploads/", method="POST", data=b"")
    with urllib.request.urlopen(req) as r:
        location = r.headers["Location"]
    if location.startswith("/"):
        location = f"http://{host}{location}"
    sep = "&" if "?" in location else "?"
    sh(["curl", "-sf", "-o", "/dev/null", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
        "--data-binary", f"@{path}", f"{location}{sep}digest={digest}"])
    return digest


def all_steps_cached(output):
    """Whether every Dockerfile step (`#N [i/n] …`) of a --progress=plain log is `#N CACHED`."""
    steps, cached = set(), set()
    for line in output.splitlines():
        head, _, rest = line.partition(" ")
        if not head.startswith("#"):
            continue
        label = rest[1:].split("]")[0] if rest.startswith("[") else ""
        counter = label.split(" ")[-1]
        if "/" in counter and counter.replace("/", "").isdigit():
            steps.add(head)
        elif rest.strip() == "CACHED":
            cached.add(head)
    return bool(steps) and steps <= cached


def ratio_row(name, lc, dist, target):
    r = lc / dist
    return [name, f"{lc:.2f}", f"{dist:.2f}", f"{r:.2f}x", f"<= {target:.2f}x", "yes" if r <= target else "NO"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256, help="approximate image size")
    ap.add_argument("--layers", type=int, default=6, help="data layers in the image")
    ap.add_argument("--runs", type=int, default=3, help="repetitions per measurement (median reported)")
    ap.add_argument("--blob-mib", type=int, default=256, help="blob size for the GET throughput row")
    ap.add_argument("--no-v20", action="store_true", help="leave out the Engine 20.10 pull/push rows")
    ap.add_argument("--server-bin", type=Path, help="a built layercache-server (default: build --release)")
    args = ap.parse_args()

    bench.ensure_packages()
    if not (ENGINE26 / "usr/sbin/dockerd").exists():
        log(f"Engine 26.1 missing in {ENGINE26}: running scripts/install-engine26.sh")
        sh([str(ROOT / "scripts/install-engine26.sh")], env=dict(os.environ, LAYERCACHE_ENGINE26=str(ENGINE26)),
           capture=False)
    server_bin = args.server_bin
    if server_bin is None:
        log("building the release server")
        sh(["cargo", "build", "--release", "-p", "layercache-server", "--manifest-path", str(ROOT / "Cargo.toml")],
           capture=False)
        server_bin = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "layercache-server"

    work = Path(tempfile.mkdtemp(prefix="lc-bench-reg-"))
    procs = Procs()
    engines = []
    try:
        run(args, work, procs, server_bin, engines)
    finally:
        for e in engines:
            if isinstance(e, Engine26):
                e.close(procs)
        procs.stop_all()
        shutil.rmtree(work, ignore_errors=True)
        for d in Path("/tmp").glob("lc-bench-dk*"):
            shutil.rmtree(d, ignore_errors=True)


def run(args, work, procs, server_bin, engines):
    runs = args.runs
    e26 = Engine26(procs, work)
    engines.append(e26)
    regs = Registries(procs, work, server_bin)
    hosts = {"lc": regs.lc_host, "dist": regs.dist_host}

    layer_mib = max(1, args.size_mib // args.layers)
    ctx = make_context(work, "ctx", args.layers, layer_mib)
    log(f"building a {args.layers}x{layer_mib} MiB image on Engine 26.1 (BuildKit, containerd store)")
    e26.docker("buildx", "build", "-q", "-t", "bench/app:1", str(ctx))
    size = e26.docker("image", "inspect", "-f", "{{.Size}}", "bench/app:1").strip()
    image_mib = int(size) / 2**20

    def cache_ref(who):
        return f"{hosts[who]}/bench/cache:main"

    log("BuildKit export: --cache-to type=registry,mode=max, every step built locally (fresh registries each run)")
    exports = {"lc": [], "dist": []}
    for _ in range(runs):
        regs.fresh()
        for who in ("lc", "dist"):
            t0 = time.perf_counter()
            e26.build(f"--cache-to=type=registry,ref={cache_ref(who)},mode=max", ctx)
            exports[who].append(time.perf_counter() - t0)
    log(f"  runs: {exports}")

    log("BuildKit import: wiped engine, --cache-from type=registry, in turns")
    bad = []

    def import_from(who):
        def go():
            if not all_steps_cached(e26.build(f"--cache-from=type=registry,ref={cache_ref(who)}", ctx)):
                bad.append(who)
        return go

    imports = interleaved({"lc": import_from("lc"), "dist": import_from("dist")}, runs, setup=e26.wipe)
    if bad:
        raise SystemExit(f"a cache import did not make every step CACHED (from {bad}): the measurement is void")
    regs.sample_rss()

    rows = []
    pushes, pulls = push_pull(e26, "bench/app:1", hosts, regs, runs)
    rows += [ratio_row("docker pull, Engine 26.1 containerd store (s)", pulls["lc"], pulls["dist"], 1.0),
             ratio_row("docker push, Engine 26.1 containerd store (s)", pushes["lc"], pushes["dist"], 1.0)]
    rows += [ratio_row("BuildKit build importing a mode=max cache (s)", imports["lc"], imports["dist"], 1.0),
             ratio_row("BuildKit mode=max cache export (s)", statistics.median(exports["lc"]),
                       statistics.median(exports["dist"]), 1.0)]

    if not args.no_v20:
        e20 = bench.Engine(procs, work)
        engines.append(e20)
        # Built there, not pulled from Engine 26: a pulled containerd-store image lacks its attestation
        # manifest (pulls are per platform), so Engine 26 could not push it on.
        log("Engine 20.10: building the same Dockerfile with its classic builder (untimed)")
        e20.docker("build", "-q", "-t", "bench/app:1", str(ctx))
        pushes20, pulls20 = push_pull(e20, "bench/app:1", hosts, regs, runs)
        rows += [ratio_row("docker pull, Engine 20.10 (s)", pulls20["lc"], pulls20["dist"], 1.0),
                 ratio_row("docker push, Engine 20.10 (s)", pushes20["lc"], pushes20["dist"], 1.0)]

    rows += blob_get(args, work, procs, regs, runs)
    regs.stop()
    rows.append(["server peak RSS over the whole run (MiB)", f"{regs.lc_rss:.0f}", f"{regs.dist_rss:.0f}",
                 f"{regs.lc_rss / regs.dist_rss:.2f}x", "<= 100 MiB", "yes" if regs.lc_rss <= 100 else "NO"])

    print(f"\n## Registry (issue 10): image of {args.layers}x{layer_mib} MiB data layers, mixed content "
          f"({image_mib:.0f} MiB compressed as Engine 26 stores it), median of {runs}\n")
    print("| measurement | layercache | distribution 2.8 | ratio | target | met |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


def push_pull(engine, image, hosts, regs, runs):
    """docker push (fresh registries each run) and docker pull (wiped engine), the two registries in
    turns; returns their medians."""
    refs = {who: f"{host}/bench/app:1" for who, host in hosts.items()}
    for ref in refs.values():
        engine.docker("tag", image, ref)
    log(f"docker push on {type(engine).__name__} (fresh registries each run)")
    pushes = {"lc": [], "dist": []}
    for _ in range(runs):
        regs.fresh()
        os.sync()
        for who, ref in refs.items():
            t0 = time.perf_counter()
            engine.docker("push", "-q", ref)
            pushes[who].append(time.perf_counter() - t0)
    log(f"  runs: {pushes}")
    log(f"docker pull on {type(engine).__name__} (wiped engine each time)")
    pulls = interleaved({who: (lambda r=ref: engine.docker("pull", "-q", r)) for who, ref in refs.items()},
                        runs, setup=engine.wipe)
    regs.sample_rss()
    # The image back under its plain name for whatever comes next: the last pull is still there.
    engine.docker("tag", refs[list(refs)[-1]], image)
    return {who: statistics.median(t) for who, t in pushes.items()}, pulls


def blob_get(args, work, procs, regs, runs):
    """One blob stored through /v2/ on both registries and as a file under nginx; GETs in turns."""
    www = work / "www"
    www.mkdir()
    blob = www / "blob.bin"
    sh(f"head -c {args.blob_mib * 2**20} /dev/urandom > {blob}")
    regs.fresh()
    digest = push_blob(regs.lc_host, "bench/blob", blob)
    push_blob(regs.dist_host, "bench/blob", blob)
    nginx_port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(f"""daemon off; user root; worker_processes 1; pid {work}/nginx.pid; error_log {work}/nginx.err;
events {{ worker_connections 64; }}
http {{ access_log off; sendfile on; tcp_nopush on;
  server {{ listen 127.0.0.1:{nginx_port}; root {www}; }} }}""")
    procs.start(["nginx", "-c", str(conf)], work / "nginx.log")
    wait_http(f"http://127.0.0.1:{nginx_port}/blob.bin")

    def get(url):
        return lambda: sh(["curl", "-sfL", "-o", "/dev/null", url])

    log("blob GET: /v2/ on layercache and distribution vs nginx sendfile, in turns")
    gets = interleaved({
        "lc": get(f"http://{regs.lc_host}/v2/bench/blob/blobs/{digest}"),
        "dist": get(f"http://{regs.dist_host}/v2/bench/blob/blobs/{digest}"),
        "nginx": get(f"http://127.0.0.1:{nginx_port}/blob.bin"),
    }, runs * 2)
    regs.sample_rss()
    mb = blob.stat().st_size / 1e6
    lc, dist, nginx = (mb / gets[k] for k in ("lc", "dist", "nginx"))
    return [
        ["blob GET through /v2/ vs nginx sendfile (MB/s)", f"{lc:.0f}", f"nginx {nginx:.0f}",
         f"{lc / nginx:.2f}x", ">= 0.80x", "yes" if lc >= 0.8 * nginx else "NO"],
        ["  (reference) blob GET through /v2/ (MB/s)", f"{lc:.0f}", f"{dist:.0f}", f"{lc / dist:.2f}x", "report", "-"],
    ]


if __name__ == "__main__":
    main()
