//! Dev-only fixtures for layercache's tests; no shipped crate depends on this one.
//!
//! Tests of the server (`cache-server/tests`) and the end-to-end tests (`tests/e2e`) need
//! `docker save` tarballs whose every byte they know, so they can compare what the server stores
//! and serves with what was sent. They are built here by hand, independently of
//! `layercache_shared::archive` (the code under test).
//!
//! - [`garage`]: a real S3 store (Garage), one node or a 3-node cluster with replication factor 3.
//! - [`haproxy`]: haproxy from Debian in front of server replicas, with the config the README ships.
//! - [`postgres`]: a real PostgreSQL server per test binary, a fresh database per test.
//! - [`tarball`]: deterministic [`noise`](tarball::noise), layer tars, image configs and the legacy
//!   `docker save` layout.

pub mod garage;
pub mod haproxy;
pub mod postgres;
pub mod tarball;
