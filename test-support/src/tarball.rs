//! Layer tars, image configs and legacy-layout `docker save` tarballs, built by hand.
//!
//! Everything is deterministic (mtime 0, mode 0644, seeded noise), so the same calls give the same
//! bytes, the same layer digests and the same image IDs in every run. Each function panics only if
//! writing a tar into memory fails, which a test should see as a failure of its own setup.

use std::collections::HashSet;

use layercache_shared::Digest;
use serde_json::{Value, json};

/// `len` pseudo-random bytes from `seed`: layers made of them neither compress nor collide, and
/// a test can rebuild the same layer from the same seed. Different seeds give different bytes (the
/// seed goes through one bijective LCG step, then drives an xorshift generator).
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A layer: an uncompressed tar of `files` (path, content), in the given order.
pub fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        add_file(&mut b, path, content);
    }
    b.into_inner().expect("a tar in memory")
}

/// Appends a regular file with fixed metadata, so the tar's bytes depend on path and content only.
fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    b.append_data(&mut h, path, content)
        .expect("a file appended to a tar in memory");
}

/// An image as `docker save` writes it: layer tars plus a config naming their digests.
pub struct Image {
    /// Layer tars, base first; their digests are the config's `rootfs.diff_ids`.
    pub layers: Vec<Vec<u8>>,
    /// One `created_by` per history entry: the build steps prefix matching is keyed on.
    pub steps: Vec<String>,
    /// The manifest's `RepoTags`; `docker load` tags the image with them.
    pub tags: Vec<String>,
    /// The manifest's `Parent` (the legacy builder's chain): an image ID, usually of another image
    /// saved in the same tarball.
    pub parent: Option<Digest>,
}

impl Image {
    /// An untagged image without a parent.
    pub fn new(layers: Vec<Vec<u8>>, steps: &[&str]) -> Image {
        Image {
            layers,
            steps: steps.iter().map(|s| s.to_string()).collect(),
            tags: Vec::new(),
            parent: None,
        }
    }

    /// This image with `tag` added to its tags.
    pub fn tagged(mut self, tag: &str) -> Image {
        self.tags.push(tag.to_string());
        self
    }

    /// This image with `parent`'s ID as its `Parent`.
    pub fn child_of(mut self, parent: &Image) -> Image {
        self.parent = Some(parent.id());
        self
    }

    /// The digests of the layers, in order.
    pub fn diff_ids(&self) -> Vec<Digest> {
        self.layers.iter().map(|l| Digest::of(l)).collect()
    }

    /// The config JSON (linux/amd64, the layers' diff_ids, one history entry per step).
    pub fn config(&self) -> Vec<u8> {
        let history: Vec<Value> = self
            .steps
            .iter()
            .map(|s| json!({ "created_by": s }))
            .collect();
        serde_json::to_vec(&json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": self.diff_ids() },
            "history": history,
        }))
        .expect("a config serialises")
    }

    /// The image ID: the digest of [`config`](Self::config).
    pub fn id(&self) -> Digest {
        Digest::of(&self.config())
    }
}

/// A legacy-layout `docker save` tarball of `images`: each layer once as `<hex>/VERSION` and
/// `<hex>/layer.tar` (in first-use order), each config as `<id hex>.json`, and `manifest.json`
/// with one item per image, in the given order, carrying `Parent` where the image has one.
pub fn save(images: &[&Image]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut written = HashSet::new();
    let mut manifest = Vec::new();
    for img in images {
        let mut layer_paths = Vec::new();
        for l in &img.layers {
            let hex = Digest::of(l).hex();
            let path = format!("{hex}/layer.tar");
            if written.insert(hex.clone()) {
                add_file(&mut b, &format!("{hex}/VERSION"), b"1.0");
                add_file(&mut b, &path, l);
            }
            layer_paths.push(path);
        }
        let config_name = format!("{}.json", img.id().hex());
        add_file(&mut b, &config_name, &img.config());
        let mut item =
            json!({ "Config": config_name, "RepoTags": img.tags, "Layers": layer_paths });
        if let Some(p) = img.parent {
            item["Parent"] = json!(p.to_string());
        }
        manifest.push(item);
    }
    let manifest = serde_json::to_vec(&manifest).expect("a manifest serialises");
    add_file(&mut b, "manifest.json", &manifest);
    b.into_inner().expect("a tar in memory")
}
