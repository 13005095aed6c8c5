#!/usr/bin/env python3
"""One replica vs three behind haproxy, on the same Garage and PostgreSQL (python3 stdlib only).

Starts a 3-node Garage cluster (replication factor 3, scripts/install-s3.sh) and a private
PostgreSQL (Debian's), then for each run and each replica count: a fresh database and bucket
prefix, that many release servers (`--blob-store s3://bench/<prefix> --database postgres://…`),
haproxy with docs/haproxy.cfg (the README's config) in front, and the compiled load generator
(bench/loadgen: 32 clients looking up, restoring with every layer checked, uploading blobs,
pushing images) against haproxy for --seconds. Runs alternate 1, 3, 1, 3, …; prints the medians
of each figure and the ratio 3 replicas / 1.

Every process runs on this machine: with 2 cores, three replicas share the CPU one replica had,
so the figures show what spreading over replicas costs (haproxy's hop, one more pool of database
connections each), not what more machines would gain.

    cargo build --release -p layercache-server -p layercache-loadgen
    scripts/install-s3.sh
    python3 bench/replicas.py [--seconds 20] [--runs 3] [--clients 32]
"""

import argparse
import json
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from load import free_port  # noqa: E402
from s3 import Garage, start_server  # noqa: E402  (one Garage and server starter for the benches)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAPROXY_CFG = os.path.join(ROOT, "docs", "haproxy.cfg")


class Postgres:
    """A private PostgreSQL on a free loopback port, run as `postgres` when we are root."""

    def __init__(self, work):
        bins = sorted((int(v), f"/usr/lib/postgresql/{v}/bin") for v in os.listdir("/usr/lib/postgresql")
                      if v.isdigit())
        if not bins:
            sys.exit("PostgreSQL is not installed: apt-get install -y postgresql")
        self.bin = bins[-1][1]
        self.dir = os.path.join(work, "pg")
        os.makedirs(self.dir)
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            os.chmod(work, 0o711)  # mkdtemp's 0700 would keep the postgres user out of its own dir
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        subprocess.run([*self.user, f"{self.bin}/initdb", "-D", f"{self.dir}/data", "-U", "postgres",
                        "--auth=trust", "--no-sync", "--no-locale"], check=True, stdout=subprocess.DEVNULL)
        self.port = free_port()
        log = open(os.path.join(work, "pg.log"), "w")
        self.proc = subprocess.Popen([*self.user, f"{self.bin}/postgres", "-D", f"{self.dir}/data",
                                      "-p", str(self.port), "-k", self.dir, "-c", "listen_addresses=127.0.0.1",
                                      "-c", "max_connections=500", "-c", "fsync=off"],
                                     stdout=log, stderr=log)
        deadline = time.time() + 60
        while self.psql("SELECT 1").returncode != 0:
            if time.time() > deadline or self.proc.poll() is not None:
                sys.exit("PostgreSQL did not start")
            time.sleep(0.1)
        self.dbs = 0

    def psql(self, sql):
        return subprocess.run([*self.user, f"{self.bin}/psql", "-h", "127.0.0.1", "-p", str(self.port),
                               "-U", "postgres", "-d", "postgres", "-c", sql], capture_output=True)

    def fresh(self):
        self.dbs += 1
        name = f"bench{self.dbs}"
        out = self.psql(f"CREATE DATABASE {name}")
        if out.returncode != 0:
            sys.exit(f"CREATE DATABASE: {out.stderr.decode()}")
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def haproxy(addrs, work):
    """haproxy with docs/haproxy.cfg in front of `addrs`; returns (process, port, admin socket)."""
    port = free_port()
    sock = os.path.join(work, f"haproxy-{port}.sock")
    env = {**os.environ, "LAYERCACHE_LB_BIND": f"127.0.0.1:{port}", "LAYERCACHE_LB_ADMIN_SOCKET": sock}
    for i, a in enumerate(addrs):
        env[f"LAYERCACHE_REPLICA_{i + 1}"] = a
    log = open(os.path.join(work, "haproxy.log"), "a")
    proc = subprocess.Popen(["haproxy", "-db", "-f", HAPROXY_CFG], env=env, stdout=log, stderr=log)
    return proc, port, sock


def wait_all_up(sock, replicas, seconds=30):
    """Until haproxy counts `replicas` servers as UP (`show stat` on its admin socket)."""
    deadline = time.time() + seconds
    while True:
        up = 0
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(sock)
                s.sendall(b"show stat\n")
                csv = b"".join(iter(lambda: s.recv(65536), b"")).decode()
            rows = [r.split(",") for r in csv.splitlines() if not r.startswith("#")]
            up = sum(1 for r in rows if len(r) > 17 and r[0] == "replicas" and r[1] != "BACKEND"
                     and r[17].startswith("UP"))
        except OSError:
            pass
        if up == replicas:
            return
        if time.time() > deadline:
            sys.exit(f"haproxy counts {up} of {replicas} replicas as up after {seconds} s")
        time.sleep(0.05)


def one_run(args, garage, pg, work, replicas, run):
    prefix = f"run{run}-{replicas}"
    env = {**garage.env(), "RUST_LOG": "warn"}
    flags = ["--blob-store", f"s3://bench/{prefix}", "--database", pg.fresh()]
    procs, addrs = [], []
    try:
        for i in range(replicas):
            p, port = start_server(args.server, os.path.join(work, f"{prefix}-r{i}"), flags, env)
            procs.append(p)
            addrs.append(f"127.0.0.1:{port}")
        lb, lb_port, sock = haproxy(addrs, work)
        procs.append(lb)
        wait_all_up(sock, replicas)
        out = subprocess.run([args.loadgen, "--url", f"http://127.0.0.1:{lb_port}", "--seconds",
                              str(args.seconds), "--clients", str(args.clients), "--runs", "1", "--json"],
                             capture_output=True, text=True)
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if not lines:
            sys.exit(f"loadgen printed no figures:\n{out.stdout}\n{out.stderr}")
        figures = json.loads(lines[-1])
        print(f"run {run + 1}, {replicas} replica(s): {figures['requests_per_s']:.0f} req/s, "
              f"lookup p50 {figures['lookup_p50_ms']:.1f} ms p99 {figures['lookup_p99_ms']:.1f} ms, "
              f"restore {figures['restore_mib_s']:.0f} MiB/s, {figures['errors']} errors "
              f"{figures['first_errors'][:1]}", file=sys.stderr)
        return figures
    finally:
        for p in procs:
            p.terminate()
            p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--server", default="target/release/layercache-server")
    ap.add_argument("--loadgen", default="target/release/layercache-loadgen")
    ap.add_argument("--garage", default=os.environ.get("LAYERCACHE_GARAGE", "/opt/garage/bin/garage"))
    args = ap.parse_args()
    for path, hint in ((args.garage, "run scripts/install-s3.sh"),
                       (args.server, "cargo build --release -p layercache-server"),
                       (args.loadgen, "cargo build --release -p layercache-loadgen")):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: {hint}")
    work = tempfile.mkdtemp(prefix="layercache-bench-replicas-")
    garage = pg = None
    try:
        garage = Garage(args.garage, work, 3)
        pg = Postgres(work)
        results = {1: [], 3: []}
        for run in range(args.runs):
            for replicas in (1, 3):
                results[replicas].append(one_run(args, garage, pg, work, replicas, run))
        cols = [("requests/s", "requests_per_s"), ("lookup p50 (ms)", "lookup_p50_ms"),
                ("lookup p99 (ms)", "lookup_p99_ms"), ("restore (MiB/s)", "restore_mib_s"),
                ("push (MiB/s)", "push_mib_s")]
        print(f"\n{args.clients} clients through haproxy (docs/haproxy.cfg), Garage 3 nodes (RF 3) + "
              f"PostgreSQL, {args.seconds:g} s per run, median of {args.runs} runs, {os.cpu_count()} cores\n")
        print("| measurement | 1 replica | 3 replicas | 3 / 1 |")
        print("|---|---:|---:|---:|")
        for name, key in cols:
            one = statistics.median(r[key] for r in results[1])
            three = statistics.median(r[key] for r in results[3])
            print(f"| {name} | {one:.2f} | {three:.2f} | {three / one:.2f}x |")
        errors = [sum(r["errors"] for r in results[n]) for n in (1, 3)]
        print(f"| errors (all runs) | {errors[0]} | {errors[1]} | |")
        if sum(errors):
            sys.exit(f"{sum(errors)} errors")
    finally:
        if pg:
            pg.stop()
        if garage:
            garage.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
