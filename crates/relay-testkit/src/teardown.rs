//! Clean-up from `Drop`: a test's guard must remove what it made in the engine even when the test
//! panicked, but `Drop` cannot await and the test's runtime may already be shutting down.

use std::future::Future;
use std::time::Duration;

/// Runs `work` on a thread of its own with its own runtime, waits for it for at most `limit`,
/// and returns whether it finished (false if it timed out or panicked).
pub fn block_on_own_thread(
    limit: Duration,
    work: impl Future<Output = ()> + Send + 'static,
) -> bool {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for clean-up");
        rt.block_on(async move { tokio::time::timeout(limit, work).await.is_ok() })
    })
    .join()
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_runs_to_its_end_or_is_cut_at_the_limit() {
        let (tx, rx) = std::sync::mpsc::channel();
        assert!(block_on_own_thread(Duration::from_secs(5), async move {
            tokio::task::yield_now().await;
            tx.send(7).unwrap();
        }));
        assert_eq!(rx.recv().unwrap(), 7);
        assert!(!block_on_own_thread(
            Duration::from_millis(10),
            std::future::pending()
        ));
        assert!(!block_on_own_thread(Duration::from_secs(5), async {
            panic!("clean-up failed")
        }));
    }

    #[tokio::test]
    async fn it_works_from_inside_a_runtime() {
        assert!(block_on_own_thread(Duration::from_secs(5), async {}));
    }
}
