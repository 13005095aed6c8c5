//! Integration tests of `layercache_shared::archive`: reading `docker save` tarballs (legacy and OCI,
//! built in code and one saved by Engine 20.10), refusing bad ones, and the legacy writer.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};

use flate2::Compression;
use flate2::write::GzEncoder;
use layercache_shared::Digest;
use layercache_shared::archive::{
    ArchiveError, BlobSink, Limits, ParsedArchive, PlanImage, plan_legacy, read_archive, write_plan,
};

/// Keeps stored content in memory; a handle is the content itself.
#[derive(Default)]
struct MemSink {
    stores: usize,
}

impl BlobSink for MemSink {
    type Handle = Vec<u8>;
    fn store(&mut self, content: &mut dyn Read) -> io::Result<Vec<u8>> {
        self.stores += 1;
        let mut v = Vec::new();
        content.read_to_end(&mut v)?;
        Ok(v)
    }
}

/// Builds tarballs member by member, writing names raw so unsafe ones can be made too.
struct Tar {
    b: tar::Builder<Vec<u8>>,
}

impl Tar {
    fn new() -> Self {
        Tar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn entry(&mut self, path: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(path, tar::EntryType::Regular, "", data)
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Directory, "", b"")
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Symlink, target, b"")
    }

    fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

/// A small but real layer tar holding one file.
fn layer(name: &str, content: &[u8]) -> Vec<u8> {
    let mut t = Tar::new();
    t.file(name, content);
    t.finish()
}

/// Incompressible bytes (a fixed LCG), so gzip layers stay larger than the inline threshold.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u32 = 12345;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// An image config with these diff_ids and one history entry per layer.
fn config(diff_ids: &[Digest]) -> Vec<u8> {
    let history: Vec<_> = (0..diff_ids.len())
        .map(|i| serde_json::json!({"created_by": format!("step {i}")}))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    }))
    .unwrap()
}

fn read(tarball: &[u8]) -> Result<ParsedArchive<Vec<u8>>, ArchiveError> {
    read_archive(tarball, &mut MemSink::default(), &Limits::default())
}

/// Limits that keep configs and manifests (< 1 KiB) in memory but stream every layer (≥ 2 KiB).
fn streaming_limits() -> Limits {
    Limits {
        inline_threshold: 1024,
        ..Limits::default()
    }
}

/// A legacy two-image tarball: `base` (layer 1) and `app` (layers 1, 2; Parent = base), where
/// app's copy of layer 1 is a symlink and layer 2 is gzip-compressed.
struct LegacyFixture {
    tarball: Vec<u8>,
    base: Digest,
    app: Digest,
    l1: Vec<u8>,
    l2: Vec<u8>,
}

fn legacy_fixture() -> LegacyFixture {
    let l1 = layer("a.txt", b"hello a");
    let l2 = layer("b.txt", &noise(3000));
    let (d1, d2) = (Digest::of(&l1), Digest::of(&l2));
    let base_cfg = config(&[d1]);
    let app_cfg = config(&[d1, d2]);
    let (base, app) = (Digest::of(&base_cfg), Digest::of(&app_cfg));
    let manifest = serde_json::json!([
        {"Config": format!("{}.json", base.hex()), "RepoTags": null, "Layers": ["v1a/layer.tar"]},
        {"Config": format!("{}.json", app.hex()), "RepoTags": ["app:1", "app:latest"],
         "Layers": ["v1b/layer.tar", "v1c/layer.tar"], "Parent": base.to_string()},
    ]);
    let tarball = Tar::new()
        .file(&format!("{}.json", app.hex()), &app_cfg)
        .file(&format!("{}.json", base.hex()), &base_cfg)
        .dir("v1a/")
        .file("v1a/layer.tar", &l1)
        .dir("v1b/")
        .symlink("v1b/layer.tar", "../v1a/layer.tar")
        .dir("v1c/")
        .file("v1c/layer.tar", &gzip(&l2))
        .file("manifest.json", manifest.to_string().as_bytes())
        .file("repositories", br#"{"app":{"1":"v1c"}}"#)
        .finish();
    LegacyFixture {
        tarball,
        base,
        app,
        l1,
        l2,
    }
}

#[test]
fn reads_legacy_with_parent_symlinked_duplicate_and_gzip_layer() {
    let f = legacy_fixture();
    for limits in [Limits::default(), streaming_limits()] {
        let mut sink = MemSink::default();
        let parsed = read_archive(&f.tarball[..], &mut sink, &limits).unwrap();
        let ids: Vec<_> = parsed.images.iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![f.base, f.app], "parents first");
        assert_eq!(parsed.images[0].parent, None);
        assert_eq!(parsed.images[1].parent, Some(f.base));
        assert_eq!(parsed.images[1].tags, vec!["app:1", "app:latest"]);
        let (d1, d2) = (Digest::of(&f.l1), Digest::of(&f.l2));
        assert_eq!(parsed.images[1].diff_ids, vec![d1, d2]);
        assert_eq!(parsed.layers.len(), 2, "the symlinked layer is stored once");
        assert_eq!(
            sink.stores, 2,
            "each layer member goes through the sink once"
        );
        assert_eq!(parsed.layers[&d1].handle, f.l1);
        assert_eq!(
            parsed.layers[&d2].handle, f.l2,
            "gzip layer is stored uncompressed"
        );
        assert_eq!(parsed.layers[&d2].size, f.l2.len() as u64);
        assert_eq!(parsed.configs.len(), 2);
        assert_eq!(Digest::of(&parsed.configs[&f.app]), f.app);
    }
}

#[test]
fn images_come_parents_first_even_when_the_manifest_lists_children_first() {
    let f = legacy_fixture();
    // Reorder manifest.json: child before parent.
    let text = String::from_utf8_lossy(&f.tarball).into_owned();
    let start = text.find("[{\"Config\"").unwrap();
    let end = start + text[start..].find("}]").unwrap() + 2;
    let items: Vec<serde_json::Value> = serde_json::from_str(&text[start..end]).unwrap();
    let reversed = serde_json::to_string(&[&items[1], &items[0]]).unwrap();
    let l1 = layer("a.txt", b"hello a");
    let mut t = Tar::new();
    for (path, data) in members_of(&f.tarball) {
        if path == "manifest.json" {
            t.file(&path, reversed.as_bytes());
        } else if path == "v1b/layer.tar" {
            t.file(&path, &l1);
        } else if !path.ends_with('/') {
            t.file(&path, &data);
        }
    }
    let parsed = read(&t.finish()).unwrap();
    let ids: Vec<_> = parsed.images.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![f.base, f.app]);
}

/// Every regular file of a tarball (symlinks become empty files; callers replace them).
fn members_of(tarball: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut a = tar::Archive::new(tarball);
    a.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data)
        })
        .collect()
}

/// An OCI-layout tarball of one image whose second layer is gzip; with or without manifest.json.
struct OciFixture {
    tarball: Vec<u8>,
    id: Digest,
    /// The manifest's digest: the image ID on the containerd store.
    manifest: Digest,
    l1: Vec<u8>,
    l2: Vec<u8>,
}

fn oci_fixture(with_manifest_json: bool) -> OciFixture {
    let l1 = layer("a.txt", b"oci a");
    let l2 = layer("b.txt", &noise(2500));
    let l2gz = gzip(&l2);
    let cfg = config(&[Digest::of(&l1), Digest::of(&l2)]);
    let id = Digest::of(&cfg);
    let image_manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": id, "size": cfg.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "digest": Digest::of(&l1), "size": l1.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": Digest::of(&l2gz), "size": l2gz.len()},
        ],
    }))
    .unwrap();
    let mdigest = Digest::of(&image_manifest);
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": mdigest, "size": image_manifest.len(),
            "annotations": {
                "io.containerd.image.name": "docker.io/library/web:2",
                "org.opencontainers.image.ref.name": "2",
            },
        }],
    });
    let blob = |d: Digest| format!("blobs/sha256/{}", d.hex());
    let mut t = Tar::new();
    t.dir("blobs/")
        .dir("blobs/sha256/")
        .file(&blob(Digest::of(&l1)), &l1)
        .file(&blob(Digest::of(&l2gz)), &l2gz)
        .file(&blob(id), &cfg)
        .file(&blob(mdigest), &image_manifest)
        .file("index.json", index.to_string().as_bytes())
        .file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    if with_manifest_json {
        let manifest = serde_json::json!([{
            "Config": blob(id), "RepoTags": ["web:2"],
            "Layers": [blob(Digest::of(&l1)), blob(Digest::of(&l2gz))],
        }]);
        t.file("manifest.json", manifest.to_string().as_bytes());
    }
    OciFixture {
        tarball: t.finish(),
        id,
        manifest: mdigest,
        l1,
        l2,
    }
}

#[test]
fn reads_oci_layout_with_manifest_json() {
    let f = oci_fixture(true);
    for limits in [Limits::default(), streaming_limits()] {
        let parsed = read_archive(&f.tarball[..], &mut MemSink::default(), &limits).unwrap();
        assert_eq!(parsed.images.len(), 1);
        assert_eq!(parsed.images[0].id, f.id);
        assert_eq!(parsed.images[0].tags, vec!["web:2"]);
        assert_eq!(parsed.layers[&Digest::of(&f.l2)].handle, f.l2);
        // The containerd store's image ID, from index.json, though manifest.json was read.
        assert_eq!(parsed.images[0].manifests, vec![f.manifest]);
    }
}

#[test]
fn reads_oci_layout_from_index_json_alone_with_a_gzip_layer() {
    let f = oci_fixture(false);
    for limits in [Limits::default(), streaming_limits()] {
        let parsed = read_archive(&f.tarball[..], &mut MemSink::default(), &limits).unwrap();
        assert_eq!(parsed.images.len(), 1);
        let image = &parsed.images[0];
        assert_eq!(image.id, f.id);
        assert_eq!(
            image.tags,
            vec!["web:2"],
            "containerd name, in Docker's short form"
        );
        assert_eq!(image.parent, None);
        assert_eq!(image.manifests, vec![f.manifest]);
        assert_eq!(image.diff_ids, vec![Digest::of(&f.l1), Digest::of(&f.l2)]);
        assert_eq!(parsed.layers[&Digest::of(&f.l2)].handle, f.l2);
    }
}

#[test]
fn reads_the_tarball_engine_20_10_saved_with_parents() {
    // `docker save <step1> <step2> fixture:v1` of a FROM scratch image with three COPY steps, the
    // third re-adding the first file: Engine 20.10 writes that layer as a chain of symlinks.
    let tarball = include_bytes!("fixtures/engine20-legacy.tar");
    let parsed = read(tarball).unwrap();
    let ids: Vec<String> = parsed.images.iter().map(|i| i.id.to_string()).collect();
    let step1 = "sha256:6fd7dfa817b6787e82a85002abf25ac7cbedefcd8392c6f8bc9c24956a51dd24";
    let step2 = "sha256:86cf3ead8623fac6d691c99efe2fea3016f9485e99ed0bf72e49335e57234e58";
    let fin = "sha256:b5503cb1f988ac7b3d89805d5b7c91452e046966111818f321f55efa58e4937c";
    assert_eq!(ids, vec![step1, step2, fin]);
    assert_eq!(parsed.images[0].parent, None);
    assert_eq!(parsed.images[1].parent.unwrap().to_string(), step1);
    assert_eq!(parsed.images[2].parent.unwrap().to_string(), step2);
    assert_eq!(parsed.images[2].tags, vec!["fixture:v1"]);
    assert!(parsed.images[0].tags.is_empty());
    let d = &parsed.images[2].diff_ids;
    assert_eq!(d.len(), 3);
    assert_eq!(
        d[0], d[2],
        "COPY of the same file twice gives the same layer"
    );
    assert_eq!(parsed.layers.len(), 2);
    for (diff_id, blob) in &parsed.layers {
        assert_eq!(Digest::of(&blob.handle), *diff_id);
    }
}

fn plan_images(parsed: &ParsedArchive<Vec<u8>>) -> Vec<PlanImage> {
    parsed
        .images
        .iter()
        .map(|i| PlanImage {
            id: i.id,
            config_size: parsed.configs[&i.id].len() as u64,
            parent: i.parent,
            tags: i.tags.clone(),
            layers: i
                .diff_ids
                .iter()
                .map(|d| (*d, parsed.layers[d].size))
                .collect(),
        })
        .collect()
}

fn write_from(parsed: &ParsedArchive<Vec<u8>>, skip: &HashSet<Digest>) -> Vec<u8> {
    let plan = plan_legacy(&plan_images(parsed), skip);
    let mut out = Vec::new();
    write_plan(&plan, &mut out, |digest, _, w| {
        match parsed.configs.get(digest) {
            Some(cfg) => w.write_all(cfg),
            None => w.write_all(&parsed.layers[digest].handle),
        }
    })
    .unwrap();
    assert_eq!(out.len() as u64, plan.total_len, "total_len is exact");
    out
}

#[test]
fn round_trip_plan_write_read_keeps_images_parents_tags_and_layers() {
    for tarball in [
        legacy_fixture().tarball,
        include_bytes!("fixtures/engine20-legacy.tar").to_vec(),
    ] {
        let first = read(&tarball).unwrap();
        let written = write_from(&first, &HashSet::new());
        let second = read(&written).unwrap();
        assert_eq!(second.images, first.images);
        assert_eq!(second.configs, first.configs);
        let layers = |p: &ParsedArchive<Vec<u8>>| -> HashMap<Digest, Vec<u8>> {
            p.layers
                .iter()
                .map(|(d, b)| (*d, b.handle.clone()))
                .collect()
        };
        assert_eq!(layers(&second), layers(&first));
    }
}

#[test]
fn skipped_layers_stay_in_the_manifest_but_their_files_are_left_out() {
    let f = legacy_fixture();
    let parsed = read(&f.tarball).unwrap();
    let d1 = Digest::of(&f.l1);
    let written = write_from(&parsed, &HashSet::from([d1]));
    let members = members_of(&written);
    let names: Vec<&str> = members.iter().map(|(p, _)| p.as_str()).collect();
    assert!(!names.contains(&format!("{}/layer.tar", d1.hex()).as_str()));
    let manifest = &members
        .iter()
        .find(|(p, _)| p == "manifest.json")
        .unwrap()
        .1;
    assert!(String::from_utf8_lossy(manifest).contains(&format!("{}/layer.tar", d1.hex())));
    // And reading it back says exactly which member is missing.
    assert!(
        matches!(read(&written), Err(ArchiveError::MissingMember { path, .. })
        if path == format!("{}/layer.tar", d1.hex()))
    );
}

#[test]
fn write_plan_refuses_a_blob_of_the_wrong_size() {
    let f = legacy_fixture();
    let parsed = read(&f.tarball).unwrap();
    let plan = plan_legacy(&plan_images(&parsed), &HashSet::new());
    let short = write_plan(&plan, &mut Vec::new(), |_, _, w| w.write_all(b"x"));
    assert_eq!(short.unwrap_err().kind(), io::ErrorKind::InvalidData);
    let long = write_plan(&plan, &mut Vec::new(), |_, size, w| {
        w.write_all(&vec![0; size as usize + 1])
    });
    assert_eq!(long.unwrap_err().kind(), io::ErrorKind::InvalidData);
}

// ---- refusals: one per check, each asserting its variant ----

/// A legacy tarball of one image, with hooks to break it.
fn one_image(
    cfg: Vec<u8>,
    config_name: Option<String>,
    layers: &[(&str, Vec<u8>)],
    parent: Option<Digest>,
) -> Vec<u8> {
    let name = config_name.unwrap_or_else(|| format!("{}.json", Digest::of(&cfg).hex()));
    let mut item = serde_json::json!({
        "Config": name, "RepoTags": ["x:1"],
        "Layers": layers.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
    });
    if let Some(p) = parent {
        item["Parent"] = serde_json::json!(p);
    }
    let mut t = Tar::new();
    t.file(&name, &cfg);
    for (p, data) in layers {
        t.file(p, data);
    }
    t.file(
        "manifest.json",
        serde_json::json!([item]).to_string().as_bytes(),
    );
    t.finish()
}

#[test]
fn refuses_absolute_member_paths() {
    let t = Tar::new().file("/etc/passwd", b"x").finish();
    assert!(matches!(read(&t), Err(ArchiveError::UnsafePath { path }) if path == "/etc/passwd"));
}

#[test]
fn refuses_member_paths_with_dot_dot() {
    let t = Tar::new().file("a/../../x", b"x").finish();
    assert!(matches!(read(&t), Err(ArchiveError::UnsafePath { .. })));
}

#[test]
fn refuses_symlinks_leaving_the_archive() {
    let f = legacy_fixture();
    let mut t = Tar::new();
    for (path, data) in members_of(&f.tarball) {
        t.file(&path, &data);
    }
    t.symlink("v1d/layer.tar", "../../etc/passwd");
    assert!(
        matches!(read(&t.finish()), Err(ArchiveError::LinkEscapes { path, .. })
        if path == "v1d/layer.tar")
    );
    let abs = Tar::new().symlink("x", "/etc/passwd").finish();
    assert!(matches!(read(&abs), Err(ArchiveError::LinkEscapes { .. })));
}

#[test]
fn refuses_links_to_missing_members() {
    let t = Tar::new()
        .file("manifest.json", b"[]")
        .symlink("a/layer.tar", "../b/layer.tar")
        .finish();
    assert!(
        matches!(read(&t), Err(ArchiveError::MissingMember { path, referenced_by })
        if path == "b/layer.tar" && referenced_by == "a/layer.tar")
    );
    let hard = Tar::new()
        .entry("h", tar::EntryType::Link, "nowhere", b"")
        .finish();
    assert!(matches!(
        read(&hard),
        Err(ArchiveError::MissingMember { .. })
    ));
}

#[test]
fn refuses_symlink_loops() {
    let t = Tar::new().symlink("a", "b").symlink("b", "a").finish();
    assert!(matches!(read(&t), Err(ArchiveError::LinkLoop { .. })));
}

#[test]
fn refuses_device_files() {
    let t = Tar::new()
        .entry("dev/null", tar::EntryType::Char, "", b"")
        .finish();
    assert!(
        matches!(read(&t), Err(ArchiveError::UnsupportedMember { path, .. }) if path == "dev/null")
    );
}

#[test]
fn refuses_a_manifest_naming_an_absent_config() {
    let cfg = config(&[]);
    let name = format!("{}.json", Digest::of(&cfg).hex());
    let manifest = serde_json::json!([{"Config": name, "Layers": []}]);
    let t = Tar::new()
        .file("manifest.json", manifest.to_string().as_bytes())
        .finish();
    assert!(
        matches!(read(&t), Err(ArchiveError::MissingMember { path, referenced_by })
        if path == name && referenced_by == "manifest.json")
    );
}

#[test]
fn refuses_a_manifest_naming_an_absent_layer() {
    let l = layer("a", b"a");
    let cfg = config(&[Digest::of(&l)]);
    let name = format!("{}.json", Digest::of(&cfg).hex());
    let manifest = serde_json::json!([{"Config": name, "Layers": ["l/layer.tar"]}]);
    let t = Tar::new()
        .file(&name, &cfg)
        .file("m/layer.tar", &l)
        .file("manifest.json", manifest.to_string().as_bytes())
        .finish();
    assert!(
        matches!(read(&t), Err(ArchiveError::MissingMember { path, referenced_by })
        if path == "l/layer.tar" && referenced_by == "manifest.json")
    );
}

#[test]
fn refuses_a_config_whose_digest_differs_from_its_name() {
    let cfg = config(&[]);
    let wrong = format!("{}.json", Digest::of(b"other").hex());
    let t = one_image(cfg.clone(), Some(wrong.clone()), &[], None);
    match read(&t) {
        Err(ArchiveError::ConfigDigestMismatch {
            path,
            expected,
            found,
        }) => {
            assert_eq!(path, wrong);
            assert_eq!(expected, Digest::of(b"other"));
            assert_eq!(found, Digest::of(&cfg));
        }
        other => panic!("expected ConfigDigestMismatch, got {other:?}"),
    }
}

#[test]
fn refuses_an_oci_config_whose_digest_differs_from_its_blob_name() {
    let f = oci_fixture(false);
    let mut t = Tar::new();
    for (path, data) in members_of(&f.tarball) {
        if path == format!("blobs/sha256/{}", f.id.hex()) {
            t.file(&path, &[&data[..], b" "].concat());
        } else if !path.ends_with('/') {
            t.file(&path, &data);
        }
    }
    assert!(matches!(
        read(&t.finish()),
        Err(ArchiveError::ConfigDigestMismatch { .. })
    ));
}

#[test]
fn refuses_a_config_that_is_not_json_or_lacks_diff_ids() {
    let t = one_image(b"not json".to_vec(), None, &[], None);
    assert!(matches!(read(&t), Err(ArchiveError::BadJson { .. })));
    let t = one_image(br#"{"rootfs":{"type":"layers"}}"#.to_vec(), None, &[], None);
    assert!(
        matches!(read(&t), Err(ArchiveError::BadJson { reason, .. }) if reason.contains("diff_ids"))
    );
}

#[test]
fn refuses_a_layer_count_that_differs_from_diff_ids() {
    let l = layer("a", b"a");
    let cfg = config(&[Digest::of(&l), Digest::of(&l)]);
    let t = one_image(cfg, None, &[("l/layer.tar", l)], None);
    assert!(matches!(
        read(&t),
        Err(ArchiveError::LayerCountMismatch {
            layers: 1,
            diff_ids: 2,
            ..
        })
    ));
}

#[test]
fn refuses_a_layer_whose_content_differs_from_its_diff_id_naming_both() {
    let l = layer("a", b"a");
    let claimed = Digest::of(b"something else");
    let cfg = config(&[claimed]);
    let id = Digest::of(&cfg);
    for limits in [Limits::default(), streaming_limits()] {
        let t = one_image(cfg.clone(), None, &[("l/layer.tar", l.clone())], None);
        match read_archive(&t[..], &mut MemSink::default(), &limits) {
            Err(ArchiveError::LayerDigestMismatch {
                image,
                index,
                expected,
                found,
                ..
            }) => {
                assert_eq!((image, index), (id, 0));
                assert_eq!(expected, claimed);
                assert_eq!(found, Digest::of(&l));
            }
            other => panic!("expected LayerDigestMismatch, got {other:?}"),
        }
    }
}

#[test]
fn refuses_a_parent_that_is_not_in_the_archive() {
    let t = one_image(config(&[]), None, &[], Some(Digest::of(b"ghost")));
    assert!(
        matches!(read(&t), Err(ArchiveError::UnknownParent { parent, .. })
        if parent == Digest::of(b"ghost"))
    );
}

#[test]
fn refuses_truncated_input_inside_a_member_and_at_a_member_boundary() {
    let f = legacy_fixture();
    for limits in [Limits::default(), streaming_limits()] {
        // Cut inside the gzip layer's data.
        let gz_at = f
            .tarball
            .windows(2)
            .position(|w| w == [0x1f, 0x8b])
            .unwrap();
        let cut = &f.tarball[..gz_at + 20];
        let err = read_archive(cut, &mut MemSink::default(), &limits).unwrap_err();
        assert!(
            matches!(err, ArchiveError::Truncated { ref member, .. } if member.as_deref() == Some("v1c/layer.tar")),
            "got {err:?}"
        );
    }
    // Cut right after the last member, before the end-of-archive blocks.
    let end = f.tarball.len() - 1024;
    let trimmed = f.tarball[..end]
        .iter()
        .rposition(|b| *b != 0)
        .map(|p| (p / 512 + 1) * 512)
        .unwrap();
    assert!(matches!(
        read(&f.tarball[..trimmed]),
        Err(ArchiveError::Truncated { member: None, .. })
    ));
}

#[test]
fn refuses_input_that_is_not_a_docker_save_tarball() {
    assert!(matches!(
        read(b"this is not a tarball at all, just some text that goes on and on and on"),
        Err(ArchiveError::NotDockerSave { .. })
    ));
    assert!(matches!(read(b""), Err(ArchiveError::NotDockerSave { .. })));
    let plain = Tar::new().file("hello.txt", b"hi").finish();
    let err = read(&plain).unwrap_err();
    assert!(matches!(err, ArchiveError::NotDockerSave { .. }));
    assert_eq!(err.code(), "not_docker_save");
}

#[test]
fn refuses_too_many_members_and_too_much_inline_data() {
    let f = legacy_fixture();
    let few = Limits {
        max_members: 3,
        ..Limits::default()
    };
    let err = read_archive(&f.tarball[..], &mut MemSink::default(), &few).unwrap_err();
    assert!(matches!(err, ArchiveError::TooLarge { limit: 3, .. }));
    assert_eq!(err.code(), "too_large");
    let small = Limits {
        max_inline_total: 1000,
        ..Limits::default()
    };
    assert!(matches!(
        read_archive(&f.tarball[..], &mut MemSink::default(), &small),
        Err(ArchiveError::TooLarge { limit: 1000, .. })
    ));
}

#[test]
fn refuses_duplicate_members_with_different_content_but_accepts_identical_ones() {
    let t = Tar::new().file("a", b"1").file("a", b"2").finish();
    assert!(matches!(read(&t), Err(ArchiveError::DuplicateMember { path }) if path == "a"));
    let f = legacy_fixture();
    let mut t = Tar::new();
    for (path, data) in members_of(&f.tarball) {
        if !path.ends_with('/') && path != "v1b/layer.tar" {
            t.file(&path, &data);
        }
    }
    t.symlink("v1b/layer.tar", "../v1a/layer.tar");
    t.file("repositories", br#"{"app":{"1":"v1c"}}"#);
    assert!(read(&t.finish()).is_ok());
}

#[test]
fn a_sink_failure_is_a_store_error_not_a_bad_tarball() {
    struct Full;
    impl BlobSink for Full {
        type Handle = ();
        fn store(&mut self, _: &mut dyn Read) -> io::Result<()> {
            Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
        }
    }
    let f = legacy_fixture();
    let err = read_archive(&f.tarball[..], &mut Full, &streaming_limits()).unwrap_err();
    assert!(matches!(err, ArchiveError::Store { .. }), "got {err:?}");
    assert_eq!(err.code(), "storage");
}

#[test]
fn refuses_a_gzip_member_that_does_not_decompress() {
    let mut bad = gzip(&layer("a", &noise(3000)));
    let n = bad.len();
    bad[n / 2] ^= 0xff;
    bad.truncate(n - 4);
    let cfg = config(&[Digest::of(b"x")]);
    for limits in [Limits::default(), streaming_limits()] {
        let t = one_image(cfg.clone(), None, &[("l/layer.tar", bad.clone())], None);
        let err = read_archive(&t[..], &mut MemSink::default(), &limits).unwrap_err();
        assert!(matches!(err, ArchiveError::BadGzip { .. }), "got {err:?}");
    }
}
