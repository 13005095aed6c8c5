//! The registry protocol's rows: repository links, manifests, tags and referrers.

use layercache_shared::Digest;
use layercache_shared::oci::Reference;

use super::conformance;
use crate::store::sqlite::NewManifest;

fn d(s: &str) -> Digest {
    Digest::of(s.as_bytes())
}

fn manifest(repo: &str, name: &str, refs: Vec<Reference>) -> NewManifest {
    NewManifest {
        repo: repo.into(),
        digest: d(name),
        media_type: "application/vnd.oci.image.manifest.v1+json".into(),
        size: 10,
        artifact_type: None,
        subject: None,
        annotations: None,
        refs,
    }
}

conformance! {
    fn a_manifest_needs_its_blobs_linked_into_its_own_repository(db) {
        db.insert_blob(&d("layer"), 5).unwrap();
        db.insert_blob(&d("m"), 10).unwrap();
        assert!(db.link_blob("other/repo", &d("layer")).unwrap());
        let m = manifest("acme/web", "m", vec![Reference::Blob(d("layer"))]);
        // Stored in the server but held by another repository only: not readable from here.
        assert_eq!(db.put_manifest(&m, Some("v1")).unwrap(), Err(vec![d("layer")]));
        assert!(!db.link_blob("acme/web", &d("absent")).unwrap());
        assert!(db.link_blob("acme/web", &d("layer")).unwrap());
        let id = db.put_manifest(&m, Some("v1")).unwrap().unwrap();
        let row = db.resolve_tag("acme/web", "v1").unwrap().unwrap();
        assert_eq!((row.id, row.digest, row.size), (id, d("m"), 10));
        assert_eq!(db.repo_blob_size("acme/web", &d("m")).unwrap(), Some(10));
        assert!(db.resolve_tag("acme/web", "v2").unwrap().is_none());
        let stats = db.stats().unwrap();
        assert_eq!((stats.hits, stats.misses), (1, 1));
        assert_eq!(db.blob_repos(&d("layer")).unwrap(), vec!["acme/web", "other/repo"]);
        assert_eq!(db.manifest_by_digest("acme/web", &d("m")).unwrap().unwrap().id, id);
        assert_eq!(db.repositories(None).unwrap(), vec!["acme/web"]);
        assert_eq!(db.registry_counts().unwrap(), (1, 1));
        let tags = db.list_tags(None, None, 10).unwrap();
        assert_eq!((tags.items.len(), tags.items[0].total_size), (1, 15));
        assert!(tags.next.is_none());
        assert!(db.unlink_blob("other/repo", &d("layer")).unwrap());
        assert!(!db.unlink_blob("other/repo", &d("layer")).unwrap());
    }

    fn tags_page_in_lexical_order_and_deleting_a_manifest_drops_its_tags(db) {
        db.insert_blob(&d("m"), 10).unwrap();
        let m = manifest("r", "m", vec![]);
        for tag in ["b", "a", "c", "B"] {
            db.put_manifest(&m, Some(tag)).unwrap().unwrap();
        }
        assert_eq!(db.tags("r", None, 2).unwrap().unwrap(), vec!["B", "a"]);
        assert_eq!(db.tags("r", Some("a"), 2).unwrap().unwrap(), vec!["b", "c"]);
        assert_eq!(db.tags("r", Some("c"), 2).unwrap().unwrap(), Vec::<String>::new());
        assert_eq!(db.tags("nothing", None, 2).unwrap(), None);
        assert!(db.delete_tag("r", "a").unwrap());
        assert!(db.delete_manifest("r", &d("m")).unwrap());
        assert_eq!(db.tags("r", None, 10).unwrap(), None);
        assert!(!db.delete_manifest("r", &d("m")).unwrap());
    }

    fn referrers_are_found_by_subject_and_filtered_by_artifact_type(db) {
        for (name, at) in [("sig", "application/x-sig"), ("sbom", "application/x-sbom")] {
            db.insert_blob(&d(name), 10).unwrap();
            let mut m = manifest("r", name, vec![]);
            m.subject = Some(d("subject"));
            m.artifact_type = Some(at.into());
            db.put_manifest(&m, None).unwrap().unwrap();
        }
        assert_eq!(db.referrers("r", &d("subject"), None).unwrap().len(), 2);
        let only = db.referrers("r", &d("subject"), Some("application/x-sbom")).unwrap();
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].digest, d("sbom"));
        assert!(db.referrers("other", &d("subject"), None).unwrap().is_empty());
    }

    /// The collector's registry half: the graph, tag eviction by last use, dead manifests
    /// deleted only while nothing names them again.
    fn the_collector_sees_the_graph_and_deletes_only_dead_manifests(db) {
        db.insert_blob(&d("layer"), 5).unwrap();
        db.insert_blob(&d("m"), 10).unwrap();
        db.link_blob("r", &d("layer")).unwrap();
        let id = db
            .put_manifest(&manifest("r", "m", vec![Reference::Blob(d("layer"))]), Some("t"))
            .unwrap()
            .unwrap();
        let g = db.registry_graph().unwrap();
        assert_eq!(g.manifests.len(), 1);
        assert_eq!(g.manifests[0].blobs, vec![d("m"), d("layer")]);
        let (tag_id, manifest_id, last_used) = g.tags[0];
        assert_eq!(manifest_id, id);
        // Tagged: not deleted.
        assert_eq!(db.delete_dead_manifests(&[id], u64::MAX / 2).unwrap(), 0);
        assert!(!db.evict_tag(tag_id, last_used + 1).unwrap());
        assert!(db.evict_tag(tag_id, last_used).unwrap());
        // Pushed after the cutoff: spared.
        assert_eq!(db.delete_dead_manifests(&[id], 0).unwrap(), 0);
        assert_eq!(db.delete_dead_manifests(&[id], u64::MAX / 2).unwrap(), 1);
        assert_eq!(db.registry_counts().unwrap(), (0, 0));
        assert_eq!(db.delete_unreferenced(&[d("m")]).unwrap(), vec![(d("m"), 10)]);
    }
}
