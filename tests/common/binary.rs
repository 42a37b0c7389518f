//! The built `mqtt-lb` binary as a child process: what signals, restarts and the exit status need. Included by
//! integration tests only (`#[path = "common/binary.rs"] mod binary;`, after `mod common;`): examples have no
//! `CARGO_BIN_EXE_mqtt-lb`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::common::{eventually, try_http_get, wait_accepting};

/// A running `mqtt-lb run --config <file>`; killed (by PID) on drop.
pub struct LbProcess {
    child: Child,
    /// Its stderr (the log), in the test's directory.
    pub log_path: PathBuf,
}

impl LbProcess {
    /// Starts the binary on `config`, logging to `<config>.<n>.log`, and waits (10 s at most) until `admin` answers
    /// `/readyz` with 200.
    pub async fn start(config: &Path, admin: SocketAddr) -> LbProcess {
        Self::start_with_open_files(config, admin, None).await
    }

    /// Like [`LbProcess::start`], with the process's open-file limit (soft and hard, as `ulimit -n` sets them) at
    /// `open_files` when given, so that a test can run it out of file descriptors with a few connections.
    pub async fn start_with_open_files(config: &Path, admin: SocketAddr, open_files: Option<u64>) -> LbProcess {
        let lb = Self::spawn(config, open_files, None);
        let ready = eventually(Duration::from_secs(10), || async {
            try_http_get(admin, "/readyz").await.ok().filter(|r| r.0 == 200)
        });
        if ready.await.is_none() {
            panic!("mqtt-lb not ready on {admin}; log:\n{}", lb.log());
        }
        lb
    }

    /// Starts the binary on `config` logging warnings only (`RUST_LOG=mqtt_lb=warn`: a memory measurement should not
    /// count a line per connection), and waits (10 s at most each) until `listener` and `admin` accept, whether or not
    /// its backends are healthy yet.
    pub async fn start_quiet(config: &Path, listener: SocketAddr, admin: SocketAddr) -> LbProcess {
        let lb = Self::spawn(config, None, Some("mqtt_lb=warn"));
        assert!(wait_accepting(listener, Duration::from_secs(10)).await, "the proxy listens");
        assert!(wait_accepting(admin, Duration::from_secs(10)).await, "the proxy's admin listens");
        lb
    }

    /// `mqtt-lb run --config <config>` with stderr to `<config>.<n>.log`, RUST_LOG at `log_filter` when given (else
    /// inherited), and the open-file limit at `open_files` when given.
    fn spawn(config: &Path, open_files: Option<u64>, log_filter: Option<&str>) -> LbProcess {
        let log_path = (0..).map(|n| config.with_extension(format!("{n}.log"))).find(|p| !p.exists());
        let log_path = log_path.expect("a free log name");
        let log = std::fs::File::create(&log_path).expect("create the log file");
        let binary = env!("CARGO_BIN_EXE_mqtt-lb");
        let mut command = match open_files {
            None => Command::new(binary),
            Some(n) => {
                // `exec` keeps the PID, so the drop kills mqtt-lb itself.
                let mut sh = Command::new("sh");
                sh.arg("-c").arg(format!("ulimit -n {n} && exec \"$0\" \"$@\"")).arg(binary);
                sh
            }
        };
        if let Some(filter) = log_filter {
            command.env("RUST_LOG", filter);
        }
        let child = command
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mqtt-lb");
        LbProcess { child, log_path }
    }

    /// Sends `signal` (e.g. "TERM") to this process only.
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.child.id());
    }

    /// Waits up to `timeout` for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let child = &mut self.child;
        eventually(timeout, || {
            let status = child.try_wait().ok().flatten();
            async move { status }
        })
        .await
    }

    /// SIGTERM, then asserts a clean exit within 5 s.
    pub async fn stop(mut self) {
        self.signal("TERM");
        let exited = self.wait_exit(Duration::from_secs(5)).await.expect("mqtt-lb exits on SIGTERM");
        assert!(exited.success(), "exit status {exited}");
    }

    /// Its process id (for /proc/<pid>).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// How many files the process holds open now (`/proc/<pid>/fd`).
    pub fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id())).map(|d| d.count()).unwrap_or(0)
    }

    /// Its resident memory (VmRSS in `/proc/<pid>/status`) in bytes; panics if that cannot be read.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("read /proc/<pid>/status");
        let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).expect("a VmRSS line");
        kib.trim().trim_end_matches("kB").trim().parse::<u64>().expect("VmRSS in kB") * 1024
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for LbProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `mqtt-lb check --config <config>`: whether it accepted the file, and what it printed.
pub fn check_config(config: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mqtt-lb")).args(["check", "--config"]).arg(config).output();
    let out = out.expect("run mqtt-lb check");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
