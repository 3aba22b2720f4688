//! Running short blocking file I/O from async code.

/// Runs `f` on this worker thread with the worker's other tasks handed to another thread
/// (`block_in_place`), instead of going to the blocking pool and waking the caller again:
/// one hand-off less on paths taken once per group commit. Runtimes that cannot do that
/// (a current-thread runtime, as in tests) use the pool.
pub async fn run_in_place<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tokio::task::JoinError> {
    if tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread
    {
        Ok(tokio::task::block_in_place(f))
    } else {
        tokio::task::spawn_blocking(f).await
    }
}
