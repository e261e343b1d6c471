//! A `moat serve` child process on 127.0.0.1 and an ephemeral port, with a
//! fixed master key and admin password: started, waited for until it says
//! where it listens, and stopped with SIGTERM (graceful) or, should it not
//! stop in time, killed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long the server may take to start (first start makes a CA).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long it may take to drain and stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct Server {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub(crate) url: String,
}

impl Server {
    /// Starts `moat` (the binary) on `data_dir`; its log goes to
    /// `<data_dir>.log`.
    pub(crate) fn start(
        moat: &Path,
        data_dir: &Path,
        master_key: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let mut child = Command::new(moat)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .env("MOAT_MASTER_KEY", master_key)
            .env("MOAT_ADMIN_PASSWORD", password)
            .env("MOAT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "starting {} (run cargo build --release -p moat first)",
                    moat.display()
                )
            })?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = mpsc::channel();
        // Reads stdout to its end, so the server never blocks on a full
        // pipe; hands over the listening line.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("https listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let mut server = Self {
            child,
            url: String::new(),
        };
        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => server.url = format!("https://{addr}"),
            Err(_) => bail!(
                "moat did not start within {START_TIMEOUT:?}; see {}",
                log_path.display()
            ),
        }
        Ok(server)
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub(crate) fn stop(mut self) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Still busy, such as with a read its client gave up on: killed.
        eprintln!("moat did not stop within {STOP_TIMEOUT:?}; killing it");
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    /// A server still running here is left over from an error: kill it.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
