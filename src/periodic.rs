//! Background work that belongs to one config: it runs while the config's object is alive
//! and stops by itself once a reload has dropped it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Run `round` on `target` again and again on the current tokio runtime, sleeping for the
/// duration each round returns. Only a weak reference is held between rounds.
pub fn spawn_while_alive<T, F, Fut>(target: &Arc<T>, mut round: F)
where
    T: Send + Sync + 'static,
    F: FnMut(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Duration> + Send,
{
    let weak = Arc::downgrade(target);
    tokio::spawn(async move {
        while let Some(target) = weak.upgrade() {
            let pause = round(target).await;
            tokio::time::sleep(pause).await;
        }
    });
}
