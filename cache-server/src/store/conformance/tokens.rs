//! Tokens, and which blobs a caller may see.

use crate::auth::{NamespacePattern, Role};
use crate::store::tokens::TokenSelector;

use super::{conformance, d, entry};

fn pats(p: &[&str]) -> Vec<NamespacePattern> {
    p.iter().map(|s| s.parse().unwrap()).collect()
}

conformance! {
    fn tokens_are_found_by_hash_until_revoked(db) {
        assert_eq!(db.live_token_count().unwrap(), 0);
        let rec = db.insert_token("h1", Some("ci"), Role::Write, &pats(&["acme/*"])).unwrap();
        assert_eq!(rec.namespaces, pats(&["acme/*"]));
        assert_eq!(rec.last_used, None);
        assert_eq!(db.live_token_count().unwrap(), 1);
        let used = db.use_token("h1").unwrap().unwrap();
        assert_eq!(used.id, rec.id);
        assert!(db.list_tokens().unwrap()[0].last_used.is_some());
        assert!(db.use_token("nope").unwrap().is_none());

        // A second live token may not take the same name.
        assert!(db.insert_token("h2", Some("ci"), Role::Read, &[]).is_err());

        let revoked = db.revoke_token(&TokenSelector::Name("ci".into())).unwrap().unwrap();
        assert!(revoked.revoked.is_some());
        assert!(db.use_token("h1").unwrap().is_none());
        assert_eq!(db.live_token_count().unwrap(), 0);
        // Revoking again finds nothing; the name is free again.
        assert!(db.revoke_token(&TokenSelector::Id(rec.id)).unwrap().is_none());
        db.insert_token("h3", Some("ci"), Role::Read, &pats(&["*"])).unwrap();
        assert_eq!(db.list_tokens().unwrap().len(), 2);
    }

    /// Knowing a digest is not reading it: a blob is visible through the namespaces using it,
    /// or to the token that uploaded it.
    fn blobs_are_visible_by_namespace_or_uploader(db) {
        db.commit_entry(&entry("acme/web", "k", &["l1"], &[])).unwrap();
        db.insert_blob(&d("mine"), 3).unwrap();
        db.record_blob_upload(&d("mine"), 7).unwrap();
        let asked = [d("l1"), d("mine")];
        let acme = |ns: &str| ns.starts_with("acme/");
        let other = |ns: &str| ns.starts_with("other/");
        assert_eq!(db.visible_blobs(&asked, None, &acme).unwrap().len(), 1);
        assert!(db.visible_blobs(&asked, None, &other).unwrap().is_empty());
        let own = db.visible_blobs(&asked, Some(7), &other).unwrap();
        assert_eq!(own.into_iter().collect::<Vec<_>>(), vec![d("mine")]);
        assert_eq!(db.blob_namespaces(&d("l1").to_string()).unwrap(), vec!["acme/web"]);
    }
}
