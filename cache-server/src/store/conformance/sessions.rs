//! Registry upload sessions: the optimistic append, claims, expiry.

use super::conformance;
use crate::store::sqlite::StagedChunk;

fn chunk(name: &str, size: u64) -> StagedChunk {
    StagedChunk {
        name: name.into(),
        size,
    }
}

conformance! {
    fn chunks_append_only_at_the_offset_the_session_holds(db) {
        db.open_upload("s", "acme/web", b"h0", 100).unwrap();
        let s = db.upload_session("s").unwrap().unwrap();
        assert_eq!((s.repo.as_str(), s.received, s.chunks.len()), ("acme/web", 0, 0));
        assert_eq!((s.hash_state.as_slice(), s.last_active, s.closing), (&b"h0"[..], 100, false));
        assert!(db.append_upload_chunk("s", 0, &chunk("s/a", 5), b"h1", 101).unwrap());
        // A second chunk sent for the same offset (another replica, at the same time) loses.
        assert!(!db.append_upload_chunk("s", 0, &chunk("s/b", 7), b"hx", 101).unwrap());
        assert!(db.append_upload_chunk("s", 5, &chunk("s/c", 3), b"h2", 102).unwrap());
        assert!(!db.append_upload_chunk("absent", 0, &chunk("x/a", 1), b"h", 102).unwrap());
        let s = db.upload_session("s").unwrap().unwrap();
        assert_eq!(s.received, 8);
        assert_eq!(s.chunks, vec![chunk("s/a", 5), chunk("s/c", 3)]);
        assert_eq!((s.hash_state.as_slice(), s.last_active), (&b"h2"[..], 102));
    }

    fn a_session_is_claimed_once_and_takes_no_chunk_after(db) {
        db.open_upload("s", "acme/web", b"h0", 100).unwrap();
        assert_eq!(db.touch_upload("s", "other/repo", 105).unwrap(), None);
        assert_eq!(db.touch_upload("s", "acme/web", 105).unwrap(), Some(0));
        assert!(db.claim_upload("s", "other/repo", 106).unwrap().is_none());
        let claimed = db.claim_upload("s", "acme/web", 106).unwrap().unwrap();
        assert!(claimed.closing);
        assert_eq!(claimed.last_active, 106);
        assert!(db.claim_upload("s", "acme/web", 107).unwrap().is_none(), "claimed once");
        assert!(!db.append_upload_chunk("s", 0, &chunk("s/a", 5), b"h1", 107).unwrap());
        assert_eq!(db.touch_upload("s", "acme/web", 107).unwrap(), None);
        assert!(db.drop_upload("s").unwrap());
        assert!(!db.drop_upload("s").unwrap());
        assert!(db.upload_session("s").unwrap().is_none());
    }

    fn idle_sessions_expire_once(db) {
        db.open_upload("old", "a/b", b"h", 100).unwrap();
        db.open_upload("busy", "a/b", b"h", 100).unwrap();
        assert!(db.append_upload_chunk("busy", 0, &chunk("busy/a", 1), b"h", 200).unwrap());
        assert_eq!(db.expire_uploads(100).unwrap(), Vec::<String>::new());
        assert_eq!(db.expire_uploads(150).unwrap(), vec!["old".to_string()]);
        assert_eq!(db.expire_uploads(150).unwrap(), Vec::<String>::new(), "taken already");
        assert!(db.upload_session("busy").unwrap().is_some());
    }
}
