//! End-to-end tests: the real `layercache-server` and `layercache` binaries against real, private
//! Docker engines (Engine 20.10 from Debian's docker.io). Run through `scripts/test.sh`, which installs
//! the engine and builds the binaries first.
//!
//! - [`faults`]: SIGKILL during uploads/eviction/GC, a full disk, 32 concurrent runners.
//! - [`runner`]: `layercache build` on fresh workers: exact, prefix and fallback hits, two workers, multi-stage.
//! - [`server`]: `docker save` → PUT → wipe → GET | `docker load` → rebuild hits the cache; bad input.

mod faults;
mod runner;
mod server;
mod util;
