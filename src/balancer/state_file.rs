//! `admin.state_file`: the administrative states (`ready`, `drain`, `maint`) set through the admin API, kept across
//! restarts (HAProxy's `server-state-file`), so that a server under maintenance does not silently come back into
//! service when the process restarts.
//!
//! The file is text, one server a line: `<backend> <server> <state>`; `#` starts a comment. It is rewritten whole
//! (a temporary file in the same directory, then a rename, so a reader never sees half a file) after every change,
//! and read once at start, before any listener accepts. Restoring is forgiving, because a file left by an older
//! configuration must not keep the front door closed: a missing file means every server starts `ready`; an
//! unreadable file, a malformed line or a server that is no longer configured is logged as a warning and skipped.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use tracing::{info, warn};

use super::backend::AdminState;
use super::Balancer;
use crate::named_file::{self, FileKind};

/// Serialises writers: two admin requests at once must not interleave their temporary files.
static WRITING: Mutex<()> = Mutex::new(());

/// Writes the state of every server of `balancers` to `path` (atomically: temporary file, then rename).
pub fn save(path: &Path, balancers: &[Arc<Balancer>]) -> std::io::Result<()> {
    let mut text = String::from("# mqtt-lb server states (admin.state_file): backend server state\n");
    for b in balancers {
        let pool = b.pool();
        for s in &pool.servers {
            text.push_str(&format!("{} {} {}\n", pool.config.name, s.name, s.state().as_str()));
        }
    }
    let _one_writer = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&temp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// Sets the servers of `balancers` to the states recorded in `path`; returns how many were restored.
pub fn restore(path: &Path, balancers: &[Arc<Balancer>]) -> usize {
    let text = match named_file::read_text(path, FileKind::ServerStates) {
        Ok(t) => t,
        Err(e) if e.is_missing() => {
            info!(file = %path.display(), "no server state file yet: every server starts ready");
            return 0;
        }
        Err(e) => {
            warn!(file = %path.display(), error = %e, "server state file unreadable: every server starts ready");
            return 0;
        }
    };
    let mut restored = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let at = || format!("{}:{}", path.display(), n + 1);
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [backend, server, state] = fields.as_slice() else {
            warn!(at = %at(), line, "server state line skipped: expected `backend server state`");
            continue;
        };
        let Some(state) = AdminState::parse(state) else {
            warn!(at = %at(), state, "server state line skipped: the state is not ready, drain or maint");
            continue;
        };
        let found = balancers
            .iter()
            .find(|b| b.name() == *backend)
            .and_then(|b| b.pool().servers.iter().find(|s| s.name == *server).cloned());
        let Some(found) = found else {
            warn!(at = %at(), backend, server, "server state skipped: no such server in the configuration");
            continue;
        };
        found.set_state(state);
        if state != AdminState::Ready {
            info!(backend, server, state = state.as_str(), "server state restored");
        }
        restored += 1;
    }
    restored
}
