//! Time and ports: bounded waits, polling until a condition holds, free loopback ports, opt-in logs.

use std::future::Future;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::time::Duration;

use tokio::net::TcpStream;

/// Default bound for one MQTT operation (connect, subscribe, a message to arrive).
pub const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `body` under `limit`; panics with `what` if it does not finish in time.
pub async fn bounded<F: Future>(limit: Duration, what: &str, body: F) -> F::Output {
    match tokio::time::timeout(limit, body).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {limit:?}"),
    }
}

/// Polls `check` every 25 ms until it returns `Some`, for at most `timeout`. Returns `None` at the deadline (one
/// check always runs, and one runs at the deadline itself). Use `.expect("what was awaited")` on the result.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        // A check that hangs must not overrun the deadline by more than a little.
        if let Ok(Some(v)) = tokio::time::timeout(left.max(Duration::from_millis(200)), check()).await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25).min(left)).await;
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close).
pub fn free_port() -> u16 {
    let l = StdTcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 for a free port");
    l.local_addr().expect("local address of the probe socket").port()
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_accepting(addr: SocketAddr, timeout: Duration) -> bool {
    eventually(timeout, || async move { TcpStream::connect(addr).await.ok().map(|_| ()) }).await.is_some()
}

/// Opt-in logs of the proxy: set `RUST_LOG=mqtt_lb=debug` when running the tests.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}
