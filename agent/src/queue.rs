//! The queue from the drain to the sender: what one turn of the drain produced (one or more
//! passes over the ring, and what a timer tick or a container lookup released) goes over as
//! one message, called a pass here.
//!
//! The two run on the agent's one thread. Handed over one by one, every event cost a channel
//! send, a wake of the sender and a turn of its `select!` (together ~4 % of the agent's CPU
//! under an exec storm); the sender then spooled them as one batch anyway. The bound is still
//! counted in events (`pipeline.queue_capacity`), so a pass that does not fit loses only the
//! events past it, each counted by the drain.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::mpsc;

use crate::sender::Encoded;

/// Why an event was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// `capacity` events are queued or on their way.
    Full,
    /// The sender is gone (shutdown).
    Closed,
}

/// The drain's end: collects a pass's events, [`Self::hand_over`] sends them together.
pub struct PassSender {
    tx: mpsc::UnboundedSender<Vec<Encoded>>,
    /// Events sent and not yet taken by the sender.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    pass: Vec<Encoded>,
}

/// The sender's end.
pub struct PassReceiver {
    rx: mpsc::UnboundedReceiver<Vec<Encoded>>,
    queued: Arc<AtomicUsize>,
}

/// A queue holding at most `capacity` events.
pub fn bounded(capacity: usize) -> (PassSender, PassReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (PassSender { tx, queued: Arc::clone(&queued), capacity, pass: Vec::new() }, PassReceiver { rx, queued })
}

impl PassSender {
    /// Adds an event to this pass, if the queue has room for it.
    pub fn push(&mut self, event: Encoded) -> Result<(), Refused> {
        if self.tx.is_closed() {
            return Err(Refused::Closed);
        }
        if self.queued.load(Ordering::Acquire) + self.pass.len() >= self.capacity {
            return Err(Refused::Full);
        }
        self.pass.push(event);
        Ok(())
    }

    /// Sends the pass's events to the sender; how many were lost because it is gone.
    pub fn hand_over(&mut self) -> usize {
        if self.pass.is_empty() {
            return 0;
        }
        let pass = std::mem::take(&mut self.pass);
        let n = pass.len();
        self.queued.fetch_add(n, Ordering::AcqRel);
        match self.tx.send(pass) {
            Ok(()) => 0,
            Err(_) => {
                self.queued.fetch_sub(n, Ordering::AcqRel);
                n
            }
        }
    }
}

impl PassReceiver {
    /// The next pass; `None` once the drain is gone and everything was taken.
    pub async fn recv(&mut self) -> Option<Vec<Encoded>> {
        let pass = self.rx.recv().await?;
        self.queued.fetch_sub(pass.len(), Ordering::AcqRel);
        Some(pass)
    }

    /// True when no pass is waiting.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(b: u8) -> Encoded {
        Encoded { bytes: vec![b].into(), observed: None }
    }

    #[tokio::test]
    async fn a_pass_goes_over_whole_and_in_order() {
        let (mut tx, mut rx) = bounded(8);
        for b in 1..=3 {
            tx.push(event(b)).unwrap();
        }
        assert!(rx.is_empty(), "nothing goes over before the pass is handed over");
        assert_eq!(tx.hand_over(), 0);
        assert_eq!(tx.hand_over(), 0, "an empty pass sends nothing");
        tx.push(event(4)).unwrap();
        tx.hand_over();
        let first: Vec<Vec<u8>> = rx.recv().await.unwrap().into_iter().map(|e| e.bytes.to_vec()).collect();
        assert_eq!(first, vec![vec![1], vec![2], vec![3]]);
        assert_eq!(rx.recv().await.unwrap()[0].bytes, vec![4u8]);
        assert!(rx.is_empty());
    }

    #[tokio::test]
    async fn the_bound_counts_events_queued_and_in_the_pass() {
        let (mut tx, mut rx) = bounded(3);
        tx.push(event(1)).unwrap();
        tx.push(event(2)).unwrap();
        tx.hand_over();
        tx.push(event(3)).unwrap();
        assert_eq!(tx.push(event(4)), Err(Refused::Full), "two queued and one in the pass fill three");
        tx.hand_over();
        assert_eq!(tx.push(event(5)), Err(Refused::Full));
        // Taking a pass frees its room.
        assert_eq!(rx.recv().await.unwrap().len(), 2);
        tx.push(event(6)).unwrap();
        tx.push(event(7)).unwrap();
        assert_eq!(tx.push(event(8)), Err(Refused::Full));
    }

    #[tokio::test]
    async fn without_a_sender_events_are_refused_and_a_pass_is_counted_lost() {
        let (mut tx, rx) = bounded(8);
        tx.push(event(1)).unwrap();
        tx.push(event(2)).unwrap();
        drop(rx);
        assert_eq!(tx.push(event(3)), Err(Refused::Closed));
        assert_eq!(tx.hand_over(), 2, "the pass's two events could not be delivered");
    }

    #[tokio::test]
    async fn the_receiver_ends_after_the_last_pass() {
        let (mut tx, mut rx) = bounded(8);
        tx.push(event(1)).unwrap();
        tx.hand_over();
        drop(tx);
        assert_eq!(rx.recv().await.unwrap().len(), 1);
        assert!(rx.recv().await.is_none());
    }
}
