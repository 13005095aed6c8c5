//! The client against scripted servers: auth headers, errors and retries.

use super::*;

#[test]
fn image_urls_percent_encode_the_namespace() {
    let c = Client::new("http://h:1/", None).unwrap();
    let url = c.image_url(&"acme/web".parse().unwrap(), &"sha256:ab".parse().unwrap());
    assert_eq!(url, "http://h:1/v1/images/acme%2Fweb/sha256%3Aab");
}

#[tokio::test]
async fn a_dead_server_is_unreachable_and_the_message_names_the_cause() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = Client::new(&format!("http://127.0.0.1:{port}"), None).unwrap();
    let req = LookupRequest {
        namespaces: vec!["main".parse().unwrap()],
        key: "k".parse().unwrap(),
        prefixes: vec![],
    };
    let err = c.lookup(&req).await.unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().to_lowercase().contains("refused"), "{err}");
}

/// Accepts one connection, records the request head and answers `status` with an error body.
async fn one_shot_server(status: &'static str) -> (String, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = sock.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        let body =
            r#"{"error":{"code":"unauthorized","message":"the token is unknown or revoked"}}"#;
        let resp = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        sock.write_all(resp.as_bytes()).await.unwrap();
        String::from_utf8_lossy(&head).to_lowercase()
    });
    (url, task)
}

#[tokio::test]
async fn the_token_is_sent_as_bearer_and_a_401_names_the_token() {
    let (url, task) = one_shot_server("401 Unauthorized").await;
    let c = Client::new(&url, Some("lc_secret")).unwrap();
    let err = c.stats().await.unwrap_err();
    let head = task.await.unwrap();
    assert!(head.contains("authorization: bearer lc_secret"), "{head}");
    assert!(
        matches!(err, ClientError::TokenRefused { status, .. } if status == StatusCode::UNAUTHORIZED),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("the cache server refused the token"),
        "{text}"
    );
    assert!(text.contains("unknown or revoked"), "{text}");
}

#[tokio::test]
async fn without_a_token_no_header_is_sent_and_the_hint_says_to_set_one() {
    let (url, task) = one_shot_server("403 Forbidden").await;
    let err = Client::new(&url, None).unwrap().stats().await.unwrap_err();
    assert!(!task.await.unwrap().contains("authorization:"));
    assert!(
        matches!(err, ClientError::TokenRefused { status, .. } if status == StatusCode::FORBIDDEN),
        "{err:?}"
    );
    let (url, task) = one_shot_server("401 Unauthorized").await;
    let err = Client::new(&url, None).unwrap().stats().await.unwrap_err();
    task.await.unwrap();
    assert!(err.to_string().contains("LAYERCACHE_TOKEN"), "{err}");
}

/// Answers each connection with the next of `answers` (a status line and extra headers) and
/// counts the requests; after the list, answers 200 with `{}`.
async fn scripted_server(
    answers: Vec<&'static str>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let n = seen.fetch_add(1, Ordering::SeqCst);
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(k) => head.extend_from_slice(&buf[..k]),
                }
            }
            let (status, body) = match answers.get(n) {
                Some(a) => (*a, r#"{"error":{"code":"busy","message":"try later"}}"#),
                None => ("200 OK", r#"{"entries":0}"#),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    (url, count)
}

fn fast(retries: u32) -> RetryPolicy {
    RetryPolicy {
        retries,
        base: std::time::Duration::from_millis(5),
        ..RetryPolicy::default()
    }
}

#[tokio::test]
async fn overload_answers_are_retried_after_their_retry_after() {
    let (url, count) = scripted_server(vec![
        "503 Service Unavailable\r\nretry-after: 1",
        "429 Too Many Requests",
    ])
    .await;
    let c = Client::new(&url, None).unwrap().with_retry(fast(3));
    let started = std::time::Instant::now();
    let found = c.healthy().await;
    assert!(found.is_ok(), "{found:?}");
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(1),
        "Retry-After: 1 was not honoured: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_final_error_says_how_many_attempts_were_made() {
    let (url, count) = scripted_server(vec!["503 Service Unavailable"; 10]).await;
    let c = Client::new(&url, None).unwrap().with_retry(fast(2));
    let err = c.healthy().await.unwrap_err();
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
async fn refusals_that_would_repeat_are_not_retried() {
    let (url, count) = scripted_server(vec!["400 Bad Request", "500 Internal Server Error"]).await;
    let c = Client::new(&url, None).unwrap().with_retry(fast(3));
    assert!(c.healthy().await.is_err());
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert!(c.healthy().await.is_err());
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_cut_before_the_answer_is_tried_again() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        // The first connection is closed once the request is read: no answer at all.
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf).await;
        drop(sock);
        let (mut sock, _) = listener.accept().await.unwrap();
        let _ = sock.read(&mut buf).await;
        let resp = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        sock.write_all(resp.as_bytes()).await.unwrap();
    });
    let c = Client::new(&url, None).unwrap().with_retry(fast(3));
    let got = c.healthy().await;
    assert!(got.is_ok(), "{got:?}");
    server.await.unwrap();
}

#[tokio::test]
async fn a_build_report_is_not_repeated_after_a_gateway_error() {
    let (url, count) = scripted_server(vec!["502 Bad Gateway"]).await;
    let c = Client::new(&url, None).unwrap().with_retry(fast(3));
    let report = BuildReport {
        namespace: "main".parse().unwrap(),
        key: format!("sha256:{}", "a".repeat(64)).parse().unwrap(),
        cache: layercache_shared::api::BuildCache::Miss,
        seconds: Default::default(),
        image_id: None,
    };
    assert!(c.report_build(&report).await.is_err());
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn a_token_that_cannot_be_a_header_is_refused_up_front() {
    let err = Client::new("http://h:1", Some("bad\ntoken")).err().unwrap();
    assert!(matches!(err, ClientError::Setup { .. }), "{err:?}");
    assert!(
        !err.to_string().contains("bad"),
        "the token must not be echoed: {err}"
    );
}
