//! Batched point reads: concurrent look-ups of one kind (a terminal by serial number, say) share one query.
//!
//! Every query is a hand-off to a connection's thread and back (a channel send, a futex wake-up, a context
//! switch each way). In a reconnect storm thousands of sessions each look up their terminal within a few
//! milliseconds; one `WHERE key IN (…)` for whatever look-ups are waiting costs about what one of them did.
//! A look-up alone goes through at once: nothing waits to fill a batch.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// At most this many keys in one query (SQLite binds at most 32,766 parameters; far below it, a query this
/// size already costs one hand-off per hundreds of look-ups).
const MAX_KEYS: usize = 256;
/// Look-ups waiting beyond this wait for room (back-pressure, not growth).
const QUEUE: usize = 4096;

type Fetched<K, V> = Result<HashMap<K, V>, DbErr>;
type Fetch<K, V> = Arc<
    dyn Fn(DatabaseConnection, Vec<K>) -> Pin<Box<dyn Future<Output = Fetched<K, V>> + Send>>
        + Send
        + Sync,
>;

struct Lookup<K, V> {
    key: K,
    answer: oneshot::Sender<Result<Option<V>, String>>,
}

/// Handle to one batching task; cheap to clone.
pub(crate) struct BatchRead<K, V> {
    tx: mpsc::Sender<Lookup<K, V>>,
    name: &'static str,
}

impl<K, V> Clone for BatchRead<K, V> {
    fn clone(&self) -> Self {
        BatchRead {
            tx: self.tx.clone(),
            name: self.name,
        }
    }
}

impl<K, V> std::fmt::Debug for BatchRead<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchRead")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<K, V> BatchRead<K, V>
where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// Starts the task on the current runtime. `fetch` answers the rows found for a set of distinct keys; a
    /// key it leaves out is answered `None`.
    pub(crate) fn start<F, Fut>(db: DatabaseConnection, name: &'static str, fetch: F) -> Self
    where
        F: Fn(DatabaseConnection, Vec<K>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Fetched<K, V>> + Send + 'static,
    {
        let fetch: Fetch<K, V> = Arc::new(move |db, keys| Box::pin(fetch(db, keys)));
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, rx, name, fetch));
        BatchRead { tx, name }
    }

    /// The value stored for `key`, if any.
    pub(crate) async fn get(&self, key: K) -> Result<Option<V>, StoreError> {
        let gone = || StoreError::Db(DbErr::Custom(format!("the {} reader stopped", self.name)));
        let (answer, answered) = oneshot::channel();
        self.tx
            .send(Lookup { key, answer })
            .await
            .map_err(|_| gone())?;
        answered
            .await
            .map_err(|_| gone())?
            .map_err(|err| StoreError::Db(DbErr::Custom(err)))
    }
}

/// Repeats the first key up to the next power of two: every list length is its own SQL text, and sqlx keeps
/// up to 100 prepared statements per connection, so lengths 1..=256 would fill every pooled connection's
/// cache with statements of every size (measured: +0.7 KiB of RSS per idle socket after a storm); powers of
/// two make nine. A repeated key changes nothing in an `IN (…)` list.
fn pad_to_power_of_two<K: Clone>(keys: &mut Vec<K>) {
    if let Some(first) = keys.first().cloned() {
        keys.resize(keys.len().next_power_of_two(), first);
    }
}

async fn run<K, V>(
    db: DatabaseConnection,
    mut rx: mpsc::Receiver<Lookup<K, V>>,
    name: &'static str,
    fetch: Fetch<K, V>,
) where
    K: Eq + Hash + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    let mut waiting: Vec<Lookup<K, V>> = Vec::new();
    while rx.recv_many(&mut waiting, MAX_KEYS).await > 0 {
        let mut keys: Vec<K> = waiting.iter().map(|l| l.key.clone()).collect();
        let mut distinct = std::collections::HashSet::with_capacity(keys.len());
        keys.retain(|k| distinct.insert(k.clone()));
        metrics::histogram!("gatehouse_batched_read_keys", "reader" => name)
            .record(keys.len() as f64);
        pad_to_power_of_two(&mut keys);
        match fetch(db.clone(), keys).await {
            Ok(found) => {
                for lookup in waiting.drain(..) {
                    let _ = lookup.answer.send(Ok(found.get(&lookup.key).cloned()));
                }
            }
            Err(err) => {
                tracing::warn!(reader = name, %err, "a batched read failed");
                let err = err.to_string();
                for lookup in waiting.drain(..) {
                    let _ = lookup.answer.send(Err(err.clone()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_lists_are_padded_to_a_power_of_two_with_a_key_already_there() {
        for (len, padded) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 4),
            (5, 8),
            (129, 256),
            (256, 256),
        ] {
            let mut keys: Vec<u32> = (0..len).collect();
            super::pad_to_power_of_two(&mut keys);
            assert_eq!(keys.len(), padded, "{len}");
            assert!(keys.iter().all(|k| *k < len.max(1)), "{len}");
        }
    }
}
