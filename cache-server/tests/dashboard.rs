//! Operator views (issue 4) in-process: `/metrics` parsed as Prometheus text while requests move
//! its counters, build reports and time saved, history, largest, entry detail with layer sharing,
//! disk use, and the HTML pages.

use layercache_server::{Settings, serve};
use layercache_shared::Digest;
use layercache_test_support::tarball::{Image, layer, save};
use prometheus_parse::{Scrape, Value as PromValue};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// A server on a free port with its own data dir; stops when dropped.
struct Server {
    url: String,
    client: reqwest::Client,
    _stop: oneshot::Sender<()>,
    _tmp: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let tmp = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let settings = Settings {
            open: true,
            ..Settings::new(tmp.path().join("data"))
        };
        tokio::spawn(async move {
            serve(listener, settings, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        let s = Server {
            url,
            client: reqwest::Client::new(),
            _stop: tx,
            _tmp: tmp,
        };
        for _ in 0..200 {
            if s.get("/healthz").await.status().is_success() {
                return s;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("server did not become healthy");
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.at(path)).send().await.unwrap()
    }

    async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    async fn text(&self, path: &str) -> String {
        let r = self.get(path).await;
        assert_eq!(r.status(), 200, "GET {path}");
        r.text().await.unwrap()
    }

    async fn put(&self, path: &str, body: Vec<u8>) -> reqwest::StatusCode {
        let r = self.client.put(self.at(path)).body(body).send().await;
        r.unwrap().status()
    }

    async fn post(&self, path: &str, body: &Value) -> (reqwest::StatusCode, Value) {
        let r = self.client.post(self.at(path)).json(body).send().await;
        let r = r.unwrap();
        (r.status(), r.json().await.unwrap())
    }

    async fn scrape(&self) -> Scrape {
        let r = self.get("/metrics").await;
        assert_eq!(r.status(), 200);
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
        let text = r.text().await.unwrap();
        Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("valid Prometheus text")
    }
}

/// The value of the counter or gauge `name` whose labels include `labels` (0 when absent).
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter(|x| labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            PromValue::Counter(v) | PromValue::Gauge(v) | PromValue::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// A legacy `docker save` tarball: a base image of `base` and a child adding `top`, tagged `tag`;
/// returns it with the base's and the child's image IDs.
fn save_chain(base: &[u8], top: &[u8], tag: &str) -> (Vec<u8>, Digest, Digest) {
    let base_img = Image::new(vec![base.to_vec()], &["step"]);
    let child = Image::new(vec![base.to_vec(), top.to_vec()], &["step", "step"])
        .tagged(tag)
        .child_of(&base_img);
    (save(&[&base_img, &child]), base_img.id(), child.id())
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_and_counters_move_as_requests_are_made() {
    let s = Server::start().await;
    let before = s.scrape().await;
    assert_eq!(value(&before, "layercache_hits_total", &[]), 0.0);

    let base = layer(&[("etc/base", b"base")]);
    let (tarball, _, _) = save_chain(&base, &layer(&[("app/bin", &[7u8; 5000])]), "app:1");
    assert_eq!(
        s.put("/v1/images/acme%2Fweb/k1", tarball.clone()).await,
        201
    );
    let served = s.get("/v1/images/acme%2Fweb/k1").await;
    assert_eq!(served.status(), 200);
    let served_len = served.bytes().await.unwrap().len() as u64;
    assert_eq!(s.get("/v1/images/acme%2Fweb/nope").await.status(), 404);
    let (status, _) = s
        .post(
            "/v1/lookup",
            &json!({"namespaces": ["acme/web"], "key": "k1"}),
        )
        .await;
    assert_eq!(status, 200);
    // A blob whose body does not match its digest: a failed upload with a reason.
    let wrong = format!("/v1/blobs/{}", Digest::of(b"something else"));
    assert_eq!(s.put(&wrong, b"body".to_vec()).await, 400);
    assert_eq!(s.get("/no/such/route").await.status(), 404);
    // The tarball body is streamed by a blocking task that counts its bytes once done.
    for _ in 0..100 {
        if s.json("/v1/stats").await["bytes_served"] == served_len {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let m = s.scrape().await;
    let stats = s.json("/v1/stats").await;
    let put = [
        ("route", "/v1/images/:ns/:key"),
        ("method", "PUT"),
        ("status", "201"),
    ];
    assert_eq!(value(&m, "layercache_http_requests_total", &put), 1.0);
    let get404 = [
        ("route", "/v1/images/:ns/:key"),
        ("method", "GET"),
        ("status", "404"),
    ];
    assert_eq!(value(&m, "layercache_http_requests_total", &get404), 1.0);
    let unmatched = [("route", "unmatched"), ("status", "404")];
    assert_eq!(value(&m, "layercache_http_requests_total", &unmatched), 1.0);
    assert!(
        m.samples
            .iter()
            .all(|x| x.labels.get("route").is_none_or(|r| !r.contains("acme"))),
        "routes are templates, never raw paths"
    );
    let hist = m
        .samples
        .iter()
        .find(|x| {
            x.metric == "layercache_http_request_duration_seconds"
                && x.labels.get("method") == Some("PUT")
                && x.labels.get("route") == Some("/v1/images/:ns/:key")
        })
        .expect("a PUT latency histogram");
    let PromValue::Histogram(buckets) = &hist.value else {
        panic!("not a histogram: {:?}", hist.value)
    };
    assert_eq!(buckets.last().unwrap().count, 1.0);

    let ns = ("namespace", "acme/web");
    let lookups = "layercache_lookups_total";
    assert_eq!(value(&m, lookups, &[ns, ("result", "get")]), 1.0);
    assert_eq!(value(&m, lookups, &[ns, ("result", "exact")]), 1.0);
    assert_eq!(value(&m, lookups, &[ns, ("result", "miss")]), 1.0);
    let hits = stats["hits"].as_f64().unwrap();
    assert_eq!(value(&m, "layercache_hits_total", &[]), hits);
    assert_eq!(hits, 2.0);
    for (metric, field) in [
        ("layercache_bytes_received_total", "bytes_received"),
        ("layercache_bytes_served_total", "bytes_served"),
        ("layercache_stored_bytes", "stored_bytes"),
        ("layercache_blobs", "blobs"),
        ("layercache_misses_total", "misses"),
    ] {
        assert_eq!(
            value(&m, metric, &[]),
            stats[field].as_f64().unwrap(),
            "{metric}"
        );
    }
    assert!(value(&m, "layercache_bytes_served_total", &[]) > 0.0);
    let failures = [("reason", "digest_mismatch")];
    assert_eq!(
        value(&m, "layercache_upload_failures_total", &failures),
        1.0
    );
    assert_eq!(value(&m, "layercache_evictions_total", &[]), 0.0);

    // Counters only grow: a second scrape after one more request.
    assert_eq!(s.get("/v1/images/acme%2Fweb/k1").await.status(), 200);
    let again = s.scrape().await;
    assert_eq!(value(&again, lookups, &[ns, ("result", "get")]), 2.0);
    let scrapes = [("route", "/metrics"), ("status", "200")];
    assert!(value(&again, "layercache_http_requests_total", &scrapes) >= 2.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn build_reports_credit_time_saved_against_the_last_cold_build() {
    let s = Server::start().await;
    let report = |cache: &str, total: f64| {
        json!({"namespace": "acme/web", "key": "k1", "cache": cache,
               "seconds": {"lookup": 0.1, "restore": 1.0, "build": total - 1.1, "push": 0.0, "total": total}})
    };
    let (st, body) = s.post("/v1/builds", &report("miss", 100.0)).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(body["seconds_saved"], 0.0);
    let (st, body) = s.post("/v1/builds", &report("exact", 12.5)).await;
    assert_eq!(st, 201, "{body}");
    assert_eq!(
        (
            body["seconds_saved"].as_f64(),
            body["baseline_seconds"].as_f64()
        ),
        (Some(87.5), Some(100.0))
    );

    let builds = s.json("/v1/builds?limit=5").await;
    assert_eq!(builds["builds"], 2);
    assert_eq!(builds["seconds_saved"], 87.5);
    assert_eq!(builds["recent"][0]["cache"], "exact");
    let other = s.json("/v1/builds?namespace=other").await;
    assert_eq!(other["recent"].as_array().unwrap().len(), 0);

    let h = s
        .json("/v1/stats/history?window=24h&namespace=acme%2Fweb")
        .await;
    assert_eq!(
        (
            h["bucket_seconds"].as_u64(),
            h["points"].as_array().unwrap().len()
        ),
        (Some(3600), 24)
    );
    let last = &h["points"][23];
    assert_eq!(
        (last["builds"].as_u64(), last["seconds_saved"].as_f64()),
        (Some(2), Some(87.5))
    );
    let m = s.scrape().await;
    assert_eq!(value(&m, "layercache_build_seconds_saved_total", &[]), 87.5);

    // Bad reports and parameters are refused with reasons.
    let (st, body) = s.post("/v1/builds", &report("exact", -1.0)).await;
    assert_eq!(
        (st.as_u16(), body["error"]["code"].as_str()),
        (400, Some("bad_request"))
    );
    let (st, _) = s
        .post(
            "/v1/builds",
            &json!({"namespace": "a", "key": "k", "cache": "warm", "seconds": {"total": 1}}),
        )
        .await;
    assert_eq!(st, 400);
    assert_eq!(s.get("/v1/stats/history?window=7d").await.status(), 400);
    assert_eq!(s.get("/v1/builds?limit=0").await.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn largest_entry_detail_and_disk_show_what_fills_the_disk() {
    let s = Server::start().await;
    let base = layer(&[("etc/base", b"shared base")]);
    let (t1, base_id, child1) = save_chain(&base, &layer(&[("app/a", &[1u8; 9000])]), "app:1");
    let (t2, _, _) = save_chain(&base, &layer(&[("app/b", &[2u8; 3000])]), "app:2");
    assert_eq!(s.put("/v1/images/acme%2Fweb/k1", t1).await, 201);
    assert_eq!(s.put("/v1/images/main/k2", t2).await, 201);

    let big = s.json("/v1/largest?limit=2").await;
    assert_eq!(big["entries"][0]["key"], "k1");
    assert_eq!(big["layers"].as_array().unwrap().len(), 2);
    let all = s.json("/v1/largest").await;
    let shared = all["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["diff_id"] == Digest::of(&base).to_string())
        .expect("the base layer is listed");
    assert_eq!(shared["entries"], 2);

    let d = s.json("/v1/entries/acme%2Fweb/k1").await;
    assert_eq!(d["manifest"]["images"].as_array().unwrap().len(), 2);
    let shares = d["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 1, "only the base layer is shared: {d}");
    assert_eq!(shares[0]["diff_id"], Digest::of(&base).to_string());
    assert_eq!(
        shares[0]["shared_with"],
        json!([{"namespace": "main", "key": "k2"}])
    );
    let child = d["manifest"]["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == child1.to_string())
        .unwrap();
    assert_eq!(child["parent"], base_id.to_string());
    // Reading the detail is not a hit.
    assert_eq!(s.json("/v1/stats").await["hits"], 0);
    assert_eq!(s.get("/v1/entries/acme%2Fweb/none").await.status(), 404);

    let disk = s.json("/v1/disk").await;
    assert_eq!(
        disk["stored_bytes"],
        s.json("/v1/stats").await["stored_bytes"]
    );
    assert!(
        disk.get("quota_bytes").is_none(),
        "no quota configured: {disk}"
    );
}

/// The `data-value` of the element with `id` in `html`.
fn data_value(html: &str, id: &str) -> String {
    let at = html
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id}"));
    let rest = &html[at..];
    let v = &rest[rest.find("data-value=\"").unwrap() + 12..];
    v[..v.find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn dashboard_pages_show_the_numbers_of_the_json_api() {
    let s = Server::start().await;
    let base = layer(&[("etc/base", b"base")]);
    let (t1, base_id, _) = save_chain(&base, &layer(&[("app/a", &[1u8; 4000])]), "app:<one>");
    let (t2, _, _) = save_chain(&base, &layer(&[("app/b", &[2u8; 100])]), "app:2");
    assert_eq!(s.put("/v1/images/acme%2Fweb/k1", t1).await, 201);
    assert_eq!(s.put("/v1/images/main/k2", t2).await, 201);
    let (st, _) = s
        .post("/v1/lookup", &json!({"namespaces": ["main"], "key": "zz"}))
        .await;
    assert_eq!(st, 404);
    let (st, _) = s
        .post(
            "/v1/lookup",
            &json!({"namespaces": ["feat", "main"], "key": "k2"}),
        )
        .await;
    assert_eq!(st, 200);

    let r = s.get("/").await;
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<meta http-equiv="refresh""#));
    assert!(!html.contains("<script"), "the page needs no script");
    assert!(html.contains("<svg"), "the chart is inline SVG");
    let stats = s.json("/v1/stats").await;
    for (id, field) in [
        ("stat-hits", "hits"),
        ("stat-misses", "misses"),
        ("stat-hits-fallback", "hits_fallback"),
        ("stat-stored-bytes", "stored_bytes"),
        ("stat-blobs", "blobs"),
        ("stat-entries", "entries"),
        ("stat-bytes-received", "bytes_received"),
    ] {
        assert_eq!(data_value(&html, id), stats[field].to_string(), "#{id}");
    }
    assert_eq!(data_value(&html, "window-hits"), "1");
    assert_eq!(data_value(&html, "window-misses"), "1");
    assert!(html.contains("no quota"));
    assert!(html.contains(r#"href="/entries/acme%2Fweb/k1""#));

    let only_main = s.text("/?window=24h&namespace=main").await;
    assert!(only_main.contains("<h3>main "));
    assert!(
        !only_main.contains("<h3>acme/web "),
        "entries of other namespaces are left out"
    );
    assert_eq!(s.get("/?namespace=..%2F").await.status(), 400);
    assert_eq!(s.get("/?window=1y").await.status(), 400);

    let page = s.text("/entries/acme%2Fweb/k1").await;
    assert!(page.contains("app:&lt;one&gt;"), "tags are escaped");
    assert!(!page.contains("app:<one>"));
    assert!(page.contains(&format!("image-{}", base_id.hex())));
    assert!(
        page.contains(r#"<a href="/entries/main/k2">main/k2</a>"#),
        "sharing is linked"
    );
    assert_eq!(s.get("/entries/acme%2Fweb/none").await.status(), 404);
}

/// Regression guard (issue 14, templates that escape by construction): an image tag carrying markup
/// or an attribute breakout, as a pushed tarball may, shows as text on the entry page and the
/// overview, never as an element or an attribute.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_tags_render_escaped_on_the_dashboard() {
    let s = Server::start().await;
    let base = layer(&[("etc/base", b"base")]);
    let hostile = r#"x:"onmouseover="alert(1)"><script>alert(2)</script>"#;
    let (t, _, _) = save_chain(&base, &layer(&[("app/a", b"a")]), hostile);
    assert_eq!(s.put("/v1/images/acme%2Fweb/k1", t).await, 201);
    let page = s.text("/entries/acme%2Fweb/k1").await;
    assert!(!page.contains("<script"), "{page}");
    assert!(!page.contains(r#""onmouseover"#), "{page}");
    assert!(
        page.contains(
            "x:&quot;onmouseover=&quot;alert(1)&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;"
        ),
        "{page}"
    );
    let overview = s.text("/").await;
    assert!(!overview.contains("<script"));
    assert!(overview.contains(r#"href="/entries/acme%2Fweb/k1""#));
}
