//! End-to-end tests: the real `layercache-server` and `layercache` binaries against real, private
//! Docker engines (Engine 20.10 from Debian's docker.io). Run through `scripts/test.sh`, which installs
//! the engine and builds the binaries first.
//!
//! - [`server`]: `docker save` → PUT → wipe → GET | `docker load` → rebuild hits the cache; bad input.

mod server;
mod util;
