//! The liveness path on a thread of its own: the heartbeat to central runs on a
//! single-threaded runtime in a dedicated OS thread, so that a burst on the main runtime (a
//! million presence snapshots, a takeover wave) delays it by an OS time slice, not by the
//! length of the main run queue. Missing heartbeats for `--node-timeout-ms` gets a node
//! evicted, which announces its users offline elsewhere. (The gRPC server stays on the main
//! runtime: it is the cross-node relay path, and a Deliver wakes a writer there.)

use std::future::Future;

use tokio::sync::oneshot;

/// Runs the future `make` builds on a current-thread runtime in a new OS thread named
/// `name`; the receiver gets its output (or is dropped if the runtime cannot start). The
/// runtime is built and dropped on that thread, never inside an async context.
pub fn on_own_thread<F, T>(
    name: &str,
    make: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<oneshot::Receiver<T>>
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    let thread = name.to_owned();
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name(thread.clone())
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(thread, error = %e, "cannot start a runtime");
                    return;
                }
            };
            let out = rt.block_on(make());
            let _ = tx.send(out);
        })?;
    Ok(rx)
}
