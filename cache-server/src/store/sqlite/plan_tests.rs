//! Query plans of the listings issue 14 split in two (`?1 IS NULL OR col = ?1` defeats every
//! index): each statement must search an index, and sort nothing, on a real database with the
//! real schema.

use super::insights::{BUILDS_ALL, BUILDS_OF_NAMESPACE};
use super::registry::tags_sql;
use super::tests::db;

/// The `detail` lines of `EXPLAIN QUERY PLAN sql` for the outer query (not its subqueries).
fn plan(conn: &rusqlite::Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    // Parameters left unbound (NULL): the plan does not depend on their values.
    let mut rows = stmt.raw_query();
    let mut out = Vec::new();
    while let Some(r) = rows.next().unwrap() {
        if r.get::<_, i64>(1).unwrap() == 0 {
            out.push(r.get::<_, String>(3).unwrap());
        }
    }
    out
}

#[test]
fn builds_listings_read_an_index_and_sort_nothing() {
    let (_dir, db) = db();
    let conn = db.conn();
    let one = plan(&conn, BUILDS_OF_NAMESPACE);
    assert!(
        one.iter()
            .any(|l| l.contains("USING INDEX builds_by_namespace_at (namespace=?)")),
        "{one:?}"
    );
    let all = plan(&conn, BUILDS_ALL);
    assert!(
        all.iter()
            .any(|l| l.contains("SCAN builds USING INDEX builds_by_at")),
        "{all:?}"
    );
    for p in [&one, &all] {
        assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
    }
}

#[test]
fn tag_pages_read_the_repo_tag_index_from_the_cursor() {
    let (_dir, db) = db();
    let conn = db.conn();
    for one_repo in [true, false] {
        let p = plan(&conn, &tags_sql(one_repo));
        let top = p
            .iter()
            .find(|l| l.contains(" t ") || l.contains(" t USING"))
            .unwrap_or_else(|| panic!("no step over tags in {p:?}"));
        assert!(top.contains("USING INDEX sqlite_autoindex_tags_1"), "{p:?}");
        assert!(
            top.contains("SEARCH"),
            "a seek from the cursor, not a scan: {p:?}"
        );
        assert!(
            !p.iter().any(|l| l.contains("TEMP B-TREE FOR ORDER BY")),
            "{p:?}"
        );
    }
}
