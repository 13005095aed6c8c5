//! `layercache status` and `layercache ls`: read-only views of the server.

use std::process::ExitCode;

use layercache_shared::Namespace;

use crate::cli::{LsArgs, StatusArgs};
use crate::report::human;

/// `layercache status`: exit 0 when the server answers `/healthz`, 1 otherwise.
pub async fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let health = client.healthy().await;
    let stats = match &health {
        Ok(()) => Some(client.stats().await?),
        Err(_) => None,
    };
    if args.json {
        let v = serde_json::json!({
            "server": client.base(),
            "healthy": health.is_ok(),
            "error": health.as_ref().err().map(|e| e.to_string()),
            "stats": stats,
        });
        println!("{v}");
    } else {
        println!("server:   {}", client.base());
        match &health {
            Ok(()) => println!("healthy:  yes"),
            Err(e) => println!("healthy:  no ({e})"),
        }
        if let Some(s) = &stats {
            println!(
                "hits:     {} (exact {}, fallback {}, prefix {}), misses {}",
                s.hits, s.hits_exact, s.hits_fallback, s.hits_prefix, s.misses
            );
            println!(
                "stored:   {} entries, {} blobs, {}",
                s.entries,
                s.blobs,
                human(s.stored_bytes)
            );
            println!(
                "traffic:  {} served, {} received, {} deduplicated, {} failed uploads",
                human(s.bytes_served),
                human(s.bytes_received),
                human(s.bytes_deduplicated),
                s.uploads_failed
            );
        }
    }
    Ok(if health.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `layercache ls`: the server's entries as a table.
pub async fn ls(args: LsArgs) -> anyhow::Result<ExitCode> {
    let client = args.server.client()?;
    let ns: Option<Namespace> = args.namespace.as_deref().map(str::parse).transpose()?;
    let list = client.entries(ns.as_ref()).await?;
    if args.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<24} {:<20} {:>6} {:>6} {:>10} {:>6}",
        "NAMESPACE", "KEY", "IMAGES", "LAYERS", "SIZE", "HITS"
    );
    for e in &list.entries {
        let key = e.key.as_str();
        let short = key.strip_prefix("sha256:").unwrap_or(key);
        println!(
            "{:<24} {:<20} {:>6} {:>6} {:>10} {:>6}",
            e.namespace.as_str(),
            &short[..short.len().min(12)],
            e.images,
            e.layers,
            human(e.total_size),
            e.hits
        );
    }
    Ok(ExitCode::SUCCESS)
}
