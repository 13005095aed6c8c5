//! End-to-end tests: the real `layercache-server` and `layercache` binaries against real, private
//! Docker engines (Engine 20.10 from Debian's docker.io; Engine 26.1 unpacked by
//! `scripts/install-engine26.sh`). Run through `scripts/test.sh`, which installs the engines and
//! builds the binaries first.
//!
//! - [`conformance`]: the OCI distribution-spec conformance suite against the registry (`/v2/`).
//! - [`dashboard`]: the dashboard of a server with docker-built entries, rendered by headless Chromium.
//! - [`engines`]: each engine kind (20.10, 26.1 classic store, 26.1 containerd store) starts as said.
//! - [`faults`]: SIGKILL during uploads/eviction/GC, a full disk, 32 concurrent runners.
//! - [`matrix`]: `layercache build` on each engine kind and builder: a feature branch's build on a
//!   wiped engine reuses main's every step (engine output), a changed last step reruns only itself.
//! - [`registry`]: `/v2/` with real clients: docker push/pull (20.10, 26.1 both stores), skopeo, BuildKit's
//!   registry cache across engines, docker login with tokens.
//! - [`replicas`]: three servers on one Garage cluster and one PostgreSQL behind haproxy
//!   (`docs/haproxy.cfg`): runner builds and docker push/pull through it; `kill -9` of a replica,
//!   a Garage node down, PostgreSQL restarted, each during 8 concurrent pushes.
//! - [`retries`]: the runner retries a busy server's 503s and a cut-off download, through [`flaky`].
//! - [`runner`]: `layercache build` on fresh workers: exact, prefix and fallback hits, two workers, multi-stage;
//!   `.dockerignore` leaves out what the Docker CLI leaves out.
//! - [`server`]: `docker save` → PUT → wipe → GET | `docker load` → rebuild hits the cache; bad input.
//! - [`steps`]: `layercache steps` runs the sample Jet project: parallel steps, own databases, tag gating.

mod conformance;
mod dashboard;
mod engines;
mod faults;
mod flaky;
mod matrix;
mod registry;
mod replicas;
mod retries;
mod runner;
mod server;
mod steps;
mod util;
