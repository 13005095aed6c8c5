//! Shared helpers live in `e2e/util.rs`; this crate only hosts the e2e test binary.
