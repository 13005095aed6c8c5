//! End-to-end tests: the real `layercache-server` and `layercache` binaries against real, private
//! Docker engines (Engine 20.10 from Debian's docker.io). Run through `scripts/test.sh`, which installs
//! the engine and builds the binaries first.
//!
//! - [`conformance`]: the OCI distribution-spec conformance suite against the registry (`/v2/`).
//! - [`dashboard`]: the dashboard of a server with docker-built entries, rendered by headless Chromium.
//! - [`faults`]: SIGKILL during uploads/eviction/GC, a full disk, 32 concurrent runners.
//! - [`runner`]: `layercache build` on fresh workers: exact, prefix and fallback hits, two workers, multi-stage.
//! - [`server`]: `docker save` → PUT → wipe → GET | `docker load` → rebuild hits the cache; bad input.
//! - [`steps`]: `layercache steps` runs the sample Jet project: parallel steps, own databases, tag gating.

mod conformance;
mod dashboard;
mod faults;
mod runner;
mod server;
mod steps;
mod util;
