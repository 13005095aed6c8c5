//! `layercache-server bench-fill` (hidden): fills a data dir with small hand-made entries for
//! `bench/scale.py`, as fast as SQLite allows, so the scale benchmark can reach 100k entries in
//! minutes instead of the hour the HTTP API takes at one fsync per commit.
//!
//! Honest about what it skips: entries go through [`Db::commit_entry`] (the same transaction,
//! refcounts and triggers as a `PUT .../manifest`) and their blobs are written where the blob
//! store keeps them, but nothing is validated or hashed from a tarball, and the fill runs with
//! `synchronous = OFF` (a crash during the fill can lose it; the server reopens the file with its
//! usual settings). The entries mirror `bench/scale.py`'s: namespace `team{i % 50}`, key `k{i}`,
//! one image of a base layer shared by all and a small layer of its own; every fourth entry's
//! first instruction is the shared one (`sha256("shared-instruction")`).

use std::fs;

use layercache_shared::Digest;

use crate::error::ServerError;
use crate::store::Store;
use crate::store::sqlite::{NewEntry, NewImage};

/// Namespaces the entries are spread over.
const NAMESPACES: u64 = 50;

/// Writes `bytes` as blob `digest` unless stored already.
fn put_blob(store: &Store, bytes: &[u8]) -> Result<(Digest, u64), ServerError> {
    let digest = Digest::of(bytes);
    // Where `FsBlobStore` keeps it: `<data>/blobs/sha256/<2 hex>/<hex>`.
    let hex = digest.hex();
    let path = store
        .tmp_dir
        .with_file_name("blobs")
        .join("sha256")
        .join(&hex[..2])
        .join(&hex);
    if !path.exists() {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| ServerError::io("creating", dir, e))?;
        }
        fs::write(&path, bytes).map_err(|e| ServerError::io("writing", &path, e))?;
    }
    Ok((digest, bytes.len() as u64))
}

/// Commits entries `from..to`.
pub fn fill(store: &Store, from: u64, to: u64) -> Result<(), ServerError> {
    // A fill is throwaway data: SQLite need not fsync each commit (PostgreSQL keeps its own
    // settings).
    if let Some(db) = store.db.as_sqlite() {
        db.conn().pragma_update(None, "synchronous", "OFF")?;
    }
    let base = put_blob(store, &vec![b'b'; 4096])?;
    let shared = Digest::of(b"shared-instruction");
    for i in from..to {
        let layer = put_blob(store, format!("entry {i}\n").as_bytes())?;
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux", "config": {},
            "rootfs": {"type": "layers", "diff_ids": [base.0.to_string(), layer.0.to_string()]},
            "history": [{"created_by": "base"}, {"created_by": format!("app {i}")}],
        })
        .to_string();
        let (id, config_size) = put_blob(store, config.as_bytes())?;
        let first = if i % 4 == 0 {
            shared
        } else {
            Digest::of(format!("p1-{i}").as_bytes())
        };
        store.db.commit_entry(&NewEntry {
            namespace: format!("team{}", i % NAMESPACES).parse()?,
            key: format!("k{i}").parse()?,
            images: vec![NewImage {
                id,
                parent: None,
                tags: vec![format!("gen{i}:latest")],
                config_size,
                layers: vec![base, layer],
            }],
            prefixes: vec![first, Digest::of(format!("p2-{i}").as_bytes())],
        })?;
    }
    Ok(())
}
