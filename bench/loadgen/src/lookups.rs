//! Lookups sent and timed on a thread of their own.
//!
//! A runner's lookup is timed on the runner's machine, where nothing else of the fleet runs. Here
//! the 32 clients share one process: timed on the runtime that also receives, parses and hashes
//! the other clients' restores, a lookup's time included the wait for that runtime to poll its
//! response (its own queue, not the server's). The lookups therefore go out over connections of
//! their own, driven by a single-threaded runtime that does nothing else, so the time measured is
//! the server's and the kernel's. `--shared-lookups` restores the old way, for comparison.

use std::future::Future;
use std::time::{Duration, Instant};

/// Where lookups run: the lookup thread's runtime (dropped, and the thread ended, with the
/// value), or `None` for the clients' own runtime.
pub struct Lookups {
    thread: Option<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)>,
}

impl Lookups {
    /// Lookups on the clients' runtime, as every other request.
    pub fn shared() -> Lookups {
        Lookups { thread: None }
    }

    /// Whether lookups have their own thread (and so need connections of their own).
    pub fn own_thread(&self) -> bool {
        self.thread.is_some()
    }

    /// Starts the lookup thread.
    pub fn start_thread() -> anyhow::Result<Lookups> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("loadgen-lookups".into())
            .spawn(move || {
                crate::sched::set_idle(false);
                runtime.block_on(async {
                    let _ = stopped.await;
                })
            })?;
        Ok(Lookups {
            thread: Some((handle, stop)),
        })
    }

    /// Runs `request` where lookups run; its result and how long it took there.
    pub async fn timed<T, F>(&self, request: F) -> anyhow::Result<(T, Duration)>
    where
        T: Send + 'static,
        F: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let timed = async move {
            let t0 = Instant::now();
            let result = request.await;
            (result, t0.elapsed())
        };
        let (result, took) = match &self.thread {
            Some((handle, _)) => handle.spawn(timed).await?,
            None => timed.await,
        };
        Ok((result?, took))
    }
}
