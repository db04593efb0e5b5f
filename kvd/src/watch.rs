//! Live change notification. The consensus loop publishes every applied batch's events
//! here (after writing them to the store and its history); each watch stream subscribes
//! and reads them in order. One bounded ring shared by every subscriber (tokio's broadcast):
//! memory stays bounded whatever the number of watchers, and a subscriber that falls more
//! than the ring behind is told it lagged (and ends its stream with `lagged`).

use crate::state_machine::Event;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use tokio::sync::broadcast;

/// What the loop publishes.
#[derive(Clone, Debug)]
pub enum Published {
    /// The events of one applied batch, in order, and the store's revision after it.
    Events {
        events: Arc<Vec<Event>>,
        revision: u64,
    },
    /// A checkpoint replaced the state: history now starts at `first`.
    Reset { first: u64 },
}

/// The publishing side (the loop) and the subscription point (the API), with the watcher cap.
#[derive(Clone)]
pub struct Hub {
    tx: broadcast::Sender<Published>,
    /// Streams open (the `omnikv_watchers` gauge itself).
    watchers: Gauge,
    max_watchers: usize,
}

/// Refused: `max_watchers` streams are open.
#[derive(Debug)]
pub struct TooManyWatchers(pub usize);

/// A live subscription; dropping it frees its watcher slot.
pub struct Subscription {
    pub rx: broadcast::Receiver<Published>,
    watchers: Gauge,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.watchers.dec();
    }
}

impl Hub {
    /// A hub keeping the last `buffer` published batches for slow subscribers, and serving at
    /// most `max_watchers` streams at once, counted in `watchers`.
    pub fn new(buffer: usize, max_watchers: usize, watchers: Gauge) -> Hub {
        let (tx, _) = broadcast::channel(buffer.max(1));
        Hub {
            tx,
            watchers,
            max_watchers,
        }
    }

    /// Publishes one applied batch's events (nothing when there are none).
    pub fn publish(&self, events: Vec<Event>, revision: u64) {
        if events.is_empty() || self.tx.receiver_count() == 0 {
            return;
        }
        let _ = self.tx.send(Published::Events {
            events: Arc::new(events),
            revision,
        });
    }

    /// Tells subscribers the history now starts at `first` (a checkpoint was installed).
    pub fn reset(&self, first: u64) {
        let _ = self.tx.send(Published::Reset { first });
    }

    pub fn subscribe(&self) -> Result<Subscription, TooManyWatchers> {
        let n = self.watchers.inc().max(0) as usize;
        let sub = Subscription {
            rx: self.tx.subscribe(),
            watchers: self.watchers.clone(),
        };
        if n >= self.max_watchers {
            return Err(TooManyWatchers(self.max_watchers));
        }
        Ok(sub)
    }

    /// Streams open now.
    pub fn watchers(&self) -> usize {
        self.watchers.get().max(0) as usize
    }
}
