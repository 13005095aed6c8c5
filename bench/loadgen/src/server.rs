//! The server under test: the real binary on a free loopback port with a fresh data dir, killed
//! (and its dir removed) on drop; and a sampler of its resident memory.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct Server {
    pub url: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `binary` with `--open` and waits until `/healthz` answers.
    pub async fn start(binary: &str) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.path().join("server.log"))?;
        // The server runs at the normal policy even when started from a client thread at
        // SCHED_IDLE (see `crate::sched`).
        let mut child = Command::new(binary);
        child
            .args([
                "--open",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .stdout(Stdio::null())
            .stderr(log);
        // SAFETY: the closure runs in the forked child before exec and calls only
        // sched_setscheduler, which is async-signal-safe.
        unsafe {
            child.pre_exec(|| {
                let param = libc::sched_param { sched_priority: 0 };
                if libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = child
            .spawn()
            .with_context(|| format!("starting {binary}"))?;
        let server = Server {
            url: format!("http://127.0.0.1:{port}"),
            child,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let up = http
                .get(format!("{}/healthz", server.url))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("{binary} did not answer /healthz within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Samples the server's RSS every 200 ms until [`Sampler::finish`].
    pub fn sample_rss_until_done(&self) -> Sampler {
        let pid = self.child.id();
        let done = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let (done, peak) = (Arc::clone(&done), Arc::clone(&peak));
            async move {
                while !done.load(Ordering::Relaxed) {
                    peak.fetch_max(rss_kib(pid).unwrap_or(0), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        Sampler { done, peak, task }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Sampler {
    done: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Stops sampling; the peak RSS seen, in KiB.
    pub async fn finish(self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        self.peak.load(Ordering::Relaxed)
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
