"""Old vs new `recent builds` query at N rows over 50 namespaces: median of 21 runs each.
Run: python3 bench/builds_query.py [ROWS]  (Python's sqlite3; the server bundles a newer SQLite, same plans)."""
import sqlite3, random, time, statistics, sys
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300_000
db = sqlite3.connect(":memory:")
db.executescript("""
CREATE TABLE builds (id INTEGER PRIMARY KEY, at INTEGER NOT NULL, namespace TEXT NOT NULL, key TEXT NOT NULL,
 cache TEXT NOT NULL, lookup_s REAL, restore_s REAL, build_s REAL, push_s REAL, total_s REAL, saved_s REAL, image_id TEXT);
CREATE INDEX builds_by_key ON builds (key, cache, at);
CREATE INDEX builds_by_at ON builds (at);
""")
rnd = random.Random(1)
db.executemany("INSERT INTO builds (at, namespace, key, cache, total_s, saved_s) VALUES (?,?,?,?,?,?)",
    ((i, f"ns{rnd.randrange(50)}", f"k{i}", "exact", 1.0, 0.5) for i in range(N)))
db.execute("INSERT INTO builds (at, namespace, key, cache, total_s, saved_s) VALUES (1, 'rare', 'k', 'miss', 1, 0)")
COLS = "SELECT at, namespace, key, cache, total_s, saved_s, image_id FROM builds"
OLD = COLS + " WHERE ?1 IS NULL OR namespace = ?1 ORDER BY at DESC, id DESC LIMIT ?2"
NEW = COLS + " WHERE namespace = ?1 ORDER BY at DESC, id DESC LIMIT ?2"
def t(sql, args):
    xs = []
    for _ in range(21):
        s = time.perf_counter(); db.execute(sql, args).fetchall(); xs.append((time.perf_counter() - s) * 1000)
    return statistics.median(xs)
print(f"sqlite {sqlite3.sqlite_version}, {N} builds")
print("| query | busy namespace (ns7) | rare namespace (1 row, oldest) |")
print("| --- | --- | --- |")
print(f"| old `?1 IS NULL OR namespace = ?1` | {t(OLD, ('ns7', 10)):.2f} ms | {t(OLD, ('rare', 10)):.2f} ms |")
db.execute("CREATE INDEX builds_by_namespace_at ON builds (namespace, at)")
print(f"| old, with the new index | {t(OLD, ('ns7', 10)):.2f} ms | {t(OLD, ('rare', 10)):.2f} ms |")
print(f"| new `namespace = ?1` + index | {t(NEW, ('ns7', 10)):.2f} ms | {t(NEW, ('rare', 10)):.2f} ms |")
