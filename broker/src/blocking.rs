//! Running short blocking file I/O from async code.

/// Runs `f` on this worker thread with the worker's other tasks handed to another thread
/// (`block_in_place`), instead of going to the blocking pool and waking the caller again:
/// one hand-off less on paths taken once per group commit. A current-thread runtime (tests,
/// the deterministic simulation) runs `f` inline: no pool thread whose timing would differ
/// between runs.
pub async fn run_in_place<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if on_multi_thread() {
        Ok(tokio::task::block_in_place(f))
    } else {
        Ok(f())
    }
}

/// Runs `f`, which blocks for a while but borrows from its caller, with this worker's other
/// tasks handed to another thread (`block_in_place`); inline outside a multi-thread runtime.
pub fn in_place<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Runs `f` on the blocking pool (inline on a current-thread runtime, for the same reason as
/// [`run_in_place`]).
pub async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if on_multi_thread() {
        tokio::task::spawn_blocking(f).await
    } else {
        Ok(f())
    }
}

/// Starts `f` on the blocking pool without waiting for it (inline on a current-thread
/// runtime).
pub fn detach(f: impl FnOnce() + Send + 'static) {
    if on_multi_thread() {
        drop(tokio::task::spawn_blocking(f));
    } else {
        f();
    }
}

fn on_multi_thread() -> bool {
    tokio::runtime::Handle::current().runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
}
