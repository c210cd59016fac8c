//! Subscriptions (`Subscribe`, `SubscribeAll`): every event is published here after it is persisted, and each
//! subscriber streams what it wants. At most once, in per-entity order, no replay (as CoS).
//!
//! A slow subscriber never slows down writes or other subscribers: publication is a bounded broadcast, and a
//! subscriber that falls `REGENT_SUBSCRIPTION_BUFFER` events behind is dropped with `RESOURCE_EXHAUSTED`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prost_types::Any;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::proto::chief_of_state::v1::MetaData;

/// How long a lagging subscriber's stream waits for room to carry the RESOURCE_EXHAUSTED status.
const LAG_STATUS_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// One persisted event, as subscribers see it.
#[derive(Debug, Clone)]
pub struct Published {
    pub entity_id: String,
    pub event: Option<Any>,
    pub resulting_state: Option<Any>,
    pub meta: Option<MetaData>,
}

/// The node's publication point; cheap to clone.
#[derive(Clone)]
pub struct SubscriptionHub {
    sender: broadcast::Sender<Arc<Published>>,
    /// Active subscriptions; `None` once the hub is closed (the node is shutting down).
    active: Arc<Mutex<Option<Registry>>>,
}

/// Subscription id → the signal that ends it.
type Registry = HashMap<String, oneshot::Sender<()>>;

impl SubscriptionHub {
    /// A hub whose subscribers may fall `buffer` events behind before they are dropped.
    pub fn new(buffer: usize) -> Self {
        Self { sender: broadcast::channel(buffer.max(1)).0, active: Arc::new(Mutex::new(Some(HashMap::new()))) }
    }

    /// Publishes a persisted event (never blocks).
    pub fn publish(&self, event: Published) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::new(event));
        }
    }

    /// Starts a subscription named `subscription_id` (a fresh UUID when empty) to the events `filter` accepts,
    /// mapped to the stream's item type. Fails with `ALREADY_EXISTS` when the id is in use.
    pub fn subscribe<T: Send + 'static>(
        &self,
        subscription_id: String,
        filter: impl Fn(&Published) -> bool + Send + 'static,
        map: impl Fn(&str, &Published) -> T + Send + 'static,
    ) -> Result<(String, ReceiverStream<Result<T, Status>>), Status> {
        let id = if subscription_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { subscription_id };
        let (cancel_tx, mut cancel) = oneshot::channel();
        {
            let mut active = self.active.lock().expect("subscription registry poisoned");
            let Some(active) = active.as_mut() else {
                return Err(Status::unavailable("the node is shutting down"));
            };
            if active.contains_key(&id) {
                return Err(Status::already_exists(format!("subscription {id:?} is already active")));
            }
            active.insert(id.clone(), cancel_tx);
        }
        let mut events = self.sender.subscribe();
        let (tx, rx) = mpsc::channel(16);
        let active = self.active.clone();
        let sub_id = id.clone();
        crate::metrics::get().subscriptions_active.inc();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut cancel => break,
                    _ = tx.closed() => break,
                    received = events.recv() => match received {
                        Ok(event) if filter(&event) => {
                            if tx.send(Ok(map(&sub_id, &event))).await.is_err() {
                                break;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(missed)) => {
                            let status = Status::resource_exhausted(format!(
                                "subscription {sub_id:?} fell {missed} events behind and was dropped; subscribe again"
                            ));
                            // The stream's own buffer may be full: give the subscriber a while to take the status.
                            let _ = tokio::time::timeout(LAG_STATUS_WAIT, tx.send(Err(status))).await;
                            break;
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            if let Some(active) = active.lock().expect("subscription registry poisoned").as_mut() {
                active.remove(&sub_id);
            }
            crate::metrics::get().subscriptions_active.dec();
        });
        Ok((id, ReceiverStream::new(rx)))
    }

    /// Ends the subscription `subscription_id`, if it is active. Returns whether it was.
    pub fn unsubscribe(&self, subscription_id: &str) -> bool {
        let mut active = self.active.lock().expect("subscription registry poisoned");
        let cancel = active.as_mut().and_then(|a| a.remove(subscription_id));
        cancel.map(|c| c.send(())).is_some()
    }

    /// Ends every subscription and refuses new ones (the node is shutting down).
    pub fn close(&self) {
        let active = self.active.lock().expect("subscription registry poisoned").take();
        for cancel in active.into_iter().flat_map(HashMap::into_values) {
            let _ = cancel.send(());
        }
    }
}
