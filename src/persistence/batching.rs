//! Cross-entity write batching: appends of many entities share one transaction.
//!
//! Entities hand their appends to a bounded queue (a full queue makes them wait: back-pressure). A few writer
//! tasks each take what is queued (up to a batch limit, without waiting for more: batches grow with load and
//! stay size 1 when idle) and write it in one transaction. Each entity still has at most one append in flight
//! and is answered only after the commit. When a batch fails on a revision conflict, its appends are retried one
//! by one, so only the conflicting entity fails, never its batch-mates.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::debug;

use super::{Error, PersistedEvent, Result};

/// One entity's append, waiting in the queue.
#[derive(Debug)]
pub struct AppendRequest {
    pub entity_id: String,
    pub shard: u32,
    pub events: Vec<PersistedEvent>,
    reply: oneshot::Sender<Result<()>>,
}

/// What a backend provides to be batched.
#[async_trait]
pub trait BatchWriter: Send + Sync + 'static {
    /// Appends every request in ONE transaction: all of them or none. A revision conflict anywhere fails the
    /// whole batch with [`Error::Conflict`].
    async fn write_batch(&self, batch: &[AppendRequest]) -> Result<()>;

    /// Appends one request in its own transaction.
    async fn write_one(&self, request: &AppendRequest) -> Result<()>;
}

/// Limits of a [`Batcher`].
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Concurrent writer tasks (each holds one connection while it writes).
    pub writers: usize,
    /// Most events in one batch.
    pub max_events: usize,
    /// Appends that may wait in the queue before entities wait to enqueue.
    pub queue: usize,
}

/// The queue and its writer tasks; cheap to clone.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::Sender<AppendRequest>,
}

impl Batcher {
    /// Starts `limits.writers` writer tasks over `writer`.
    pub fn spawn<W: BatchWriter>(writer: Arc<W>, limits: BatchLimits) -> Self {
        let (queue, receiver) = mpsc::channel(limits.queue.max(1));
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..limits.writers.max(1) {
            tokio::spawn(write_loop(writer.clone(), receiver.clone(), limits.max_events.max(1)));
        }
        Self { queue }
    }

    /// Appends `events` of one entity; returns once they are durable (or failed).
    pub async fn append(&self, entity_id: &str, shard: u32, events: &[PersistedEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest { entity_id: entity_id.to_string(), shard, events: events.to_vec(), reply };
        self.queue.send(request).await.map_err(|_| Error::Unavailable("the journal writer has stopped".into()))?;
        answer.await.map_err(|_| Error::Unavailable("the journal writer stopped before answering".into()))?
    }
}

async fn write_loop<W: BatchWriter>(
    writer: Arc<W>,
    receiver: Arc<Mutex<mpsc::Receiver<AppendRequest>>>,
    max_events: usize,
) {
    loop {
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else { return };
            let mut events = first.events.len();
            let mut batch = vec![first];
            while events < max_events {
                match receiver.try_recv() {
                    Ok(next) => {
                        events += next.events.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            batch
        };
        write(&*writer, batch).await;
    }
}

async fn write<W: BatchWriter>(writer: &W, batch: Vec<AppendRequest>) {
    let events = batch.iter().map(|r| r.events.len()).sum();
    let started = std::time::Instant::now();
    if batch.len() == 1 {
        let outcome = writer.write_one(&batch[0]).await;
        crate::metrics::get().journal_batch(1, events, outcome.is_ok(), started.elapsed());
        answer(batch, &outcome);
        return;
    }
    let outcome = writer.write_batch(&batch).await;
    crate::metrics::get().journal_batch(batch.len(), events, outcome.is_ok(), started.elapsed());
    match outcome {
        Ok(()) => answer(batch, &Ok(())),
        Err(Error::Conflict { .. }) => {
            // Find the loser(s): each append on its own.
            debug!(appends = batch.len(), "batch hit a revision conflict; retrying its appends one by one");
            for request in batch {
                let started = std::time::Instant::now();
                let outcome = writer.write_one(&request).await;
                crate::metrics::get().journal_batch(1, request.events.len(), outcome.is_ok(), started.elapsed());
                let _ = request.reply.send(outcome);
            }
        }
        // The transaction failed as a whole (it may even have committed when the connection broke at commit):
        // every entity gets the error and recovers from the store before its next command.
        Err(e) => {
            let outcome = Err(e);
            answer(batch, &outcome);
        }
    }
}

fn answer(batch: Vec<AppendRequest>, outcome: &Result<()>) {
    for request in batch {
        let _ = request.reply.send(outcome.clone());
    }
}
