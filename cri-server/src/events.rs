//! `GetContainerEvents`: every subscriber gets every event, in order, through its own unbounded
//! queue (a burst is never dropped; a subscriber that went away is pruned at the next event).
//! Events carry the pod's status and its containers' statuses, as kubelet's evented PLEG wants.

use std::sync::Mutex;

use tokio::sync::mpsc;
use unicri_proto::v1;

/// The subscribers.
#[derive(Default)]
pub struct Events {
    subs: Mutex<Vec<mpsc::UnboundedSender<v1::ContainerEventResponse>>>,
}

impl Events {
    /// A new subscription, starting with the next event.
    pub fn subscribe(&self) -> mpsc::UnboundedReceiver<v1::ContainerEventResponse> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().push(tx);
        rx
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<mpsc::UnboundedSender<v1::ContainerEventResponse>>> {
        self.subs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether anybody listens (events are only built then).
    pub fn active(&self) -> bool {
        let mut subs = self.lock();
        subs.retain(|s| !s.is_closed());
        !subs.is_empty()
    }

    /// Delivers `ev` to every subscriber.
    pub fn send(&self, ev: v1::ContainerEventResponse) {
        let mut subs = self.lock();
        subs.retain(|s| s.send(ev.clone()).is_ok());
    }

    /// Subscribers now.
    #[cfg(test)]
    pub fn subscribers(&self) -> usize {
        let mut subs = self.lock();
        subs.retain(|s| !s.is_closed());
        subs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: &str) -> v1::ContainerEventResponse {
        v1::ContainerEventResponse {
            container_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_subscriber_gets_every_event_in_order_and_gone_ones_are_pruned() {
        let events = Events::default();
        assert!(!events.active());
        let mut a = events.subscribe();
        let b = events.subscribe();
        assert_eq!(events.subscribers(), 2);
        for i in 0..10_000 {
            events.send(ev(&i.to_string()));
        }
        drop(b);
        events.send(ev("last"));
        assert_eq!(events.subscribers(), 1);
        for i in 0..10_000 {
            assert_eq!(a.try_recv().expect("event").container_id, i.to_string());
        }
        assert_eq!(a.try_recv().expect("event").container_id, "last");
        assert!(a.try_recv().is_err());
    }
}
