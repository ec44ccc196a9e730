//! When did a container exit? Pushed by the runtime, never polled: unicri's CRI
//! `GetContainerEvents` stream (`CONTAINER_STOPPED_EVENT`), or, for containerd 1.6 (whose CRI
//! plugin answers `GetContainerEvents` with "not implemented"), containerd's own event service
//! (`/tasks/exit`, the shim's report of the init process's exit, which its CRI plugin consumes
//! too).
//!
//! One listener task per runtime reads the stream and records, per container id, the instant
//! the event arrived and the exit code; [`Exits::wait`] returns that record, whether the event
//! came before or after the wait began.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use tokio::sync::oneshot;
use tonic::codegen::http;
use unicri_proto::v1;

use crate::cri::Cri;

/// An observed exit.
#[derive(Clone, Copy, Debug)]
pub struct Exit {
    /// When the bench received the event.
    pub at: Instant,
    /// The exit code the event carried (`None` when it carried none).
    pub code: Option<i32>,
}

enum Slot {
    Seen(Exit),
    Waiting(oneshot::Sender<Exit>),
}

/// Exits observed on one runtime's event stream.
#[derive(Clone, Default)]
pub struct Exits {
    slots: Arc<Mutex<HashMap<String, Slot>>>,
    /// Why the listener ended, when it did.
    ended: Arc<Mutex<Option<String>>>,
    /// Events received (all types).
    pub events: Arc<std::sync::atomic::AtomicU64>,
}

impl Exits {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, id: &str, exit: Exit) {
        let mut slots = self.lock();
        match slots.remove(id) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send(exit);
            }
            Some(Slot::Seen(first)) => {
                // a second event for the same exit: keep the first
                slots.insert(id.to_string(), Slot::Seen(first));
            }
            None => {
                slots.insert(id.to_string(), Slot::Seen(exit));
            }
        }
    }

    fn end(&self, why: String) {
        *self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(why);
        // wake every waiter: their sender is dropped
        self.lock().retain(|_, s| matches!(s, Slot::Seen(_)));
    }

    /// The exit of container `id`: at once when its event already came, else when it comes
    /// (up to `timeout`).
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Exit> {
        let rx = {
            let mut slots = self.lock();
            match slots.remove(id) {
                Some(Slot::Seen(e)) => return Ok(e),
                _ => {
                    if let Some(why) = self
                        .ended
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .clone()
                    {
                        bail!("the event stream ended: {why}");
                    }
                    let (tx, rx) = oneshot::channel();
                    slots.insert(id.to_string(), Slot::Waiting(tx));
                    rx
                }
            }
        };
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(e)) => Ok(e),
            Ok(Err(_)) => Err(anyhow!(
                "the event stream ended while waiting for {id}: {}",
                self.ended
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clone()
                    .unwrap_or_default()
            )),
            Err(_) => {
                self.lock().remove(id);
                bail!("no exit event for container {id} within {timeout:?}")
            }
        }
    }

    /// Fails when the listener already ended (its subscription failed).
    fn check_open(&self) -> Result<()> {
        match self
            .ended
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            Some(why) => bail!("{why}"),
            None => Ok(()),
        }
    }

    /// Forgets what is recorded of `id` (after it was removed).
    pub fn forget(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// How long a listener waits for its stream to open before it lets the caller go on: a Go
/// gRPC server (containerd) sends a server stream's headers only with its first message, so
/// the call cannot tell when the subscription is in place; the handler subscribes as soon as
/// the request arrives, well within this. The anchors' runs check that exits come through.
const OPEN_WAIT: Duration = Duration::from_millis(500);

/// Subscribes to the CRI `GetContainerEvents` of `cri` and records every
/// `CONTAINER_STOPPED_EVENT` (with the exit code from the event's own container statuses).
pub async fn listen_cri(cri: &Cri) -> Result<(Exits, tokio::task::JoinHandle<()>)> {
    let exits = Exits::default();
    let e = exits.clone();
    let cri = cri.clone();
    let (opened, open) = oneshot::channel();
    let task = tokio::spawn(async move {
        let stream = cri.container_events().await;
        let _ = opened.send(());
        let mut stream = match stream {
            Ok(s) => s,
            Err(s) => return e.end(format!("GetContainerEvents: {s}")),
        };
        loop {
            match stream.message().await {
                Ok(Some(ev)) => {
                    let at = Instant::now();
                    e.events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if ev.container_event_type
                        == v1::ContainerEventType::ContainerStoppedEvent as i32
                    {
                        let code = ev
                            .containers_statuses
                            .iter()
                            .find(|s| s.id == ev.container_id)
                            .map(|s| s.exit_code);
                        e.record(&ev.container_id, Exit { at, code });
                    }
                }
                Ok(None) => return e.end("the runtime closed it".into()),
                Err(s) => return e.end(format!("{s}")),
            }
        }
    });
    let _ = tokio::time::timeout(OPEN_WAIT, open).await;
    exits.check_open()?;
    Ok((exits, task))
}

/// Whether the runtime answers `GetContainerEvents` with a stream (containerd 1.6 does not:
/// it never sends the response headers), and what it did otherwise.
pub async fn cri_events_supported(cri: &Cri) -> (bool, String) {
    let probe = async {
        match cri.container_events().await {
            Ok(mut s) => {
                // an error may come as the stream's first message instead
                match tokio::time::timeout(Duration::from_millis(300), s.message()).await {
                    Ok(Err(st)) => (false, format!("{:?}: {}", st.code(), st.message())),
                    _ => (true, String::new()),
                }
            }
            Err(st) => (false, format!("{:?}: {}", st.code(), st.message())),
        }
    };
    tokio::time::timeout(Duration::from_secs(3), probe)
        .await
        .unwrap_or_else(|_| {
            (
                false,
                "no answer within 3 s: the call neither fails nor opens a stream".into(),
            )
        })
}

// containerd's event service (api/services/events/v1, api/events/task.proto), the fields used.

#[derive(Clone, PartialEq, prost::Message)]
struct SubscribeRequest {
    #[prost(string, repeated, tag = "1")]
    filters: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(string, tag = "2")]
    namespace: String,
    #[prost(string, tag = "3")]
    topic: String,
    #[prost(message, optional, tag = "4")]
    event: Option<AnyMsg>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AnyMsg {
    #[prost(string, tag = "1")]
    type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TaskExit {
    #[prost(string, tag = "1")]
    container_id: String,
    #[prost(string, tag = "2")]
    id: String,
    #[prost(uint32, tag = "4")]
    exit_status: u32,
}

/// Subscribes to containerd's `/tasks/exit` events and records the exit of every container's
/// init process (a CRI container id is its containerd container id).
pub async fn listen_containerd(cri: &Cri) -> Result<(Exits, tokio::task::JoinHandle<()>)> {
    let exits = Exits::default();
    let e = exits.clone();
    let channel = cri.channel();
    let (opened, open) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut grpc = tonic::client::Grpc::new(channel);
        if let Err(err) = grpc.ready().await {
            let _ = opened.send(());
            return e.end(format!("containerd events service not ready: {err}"));
        }
        let path =
            http::uri::PathAndQuery::from_static("/containerd.services.events.v1.Events/Subscribe");
        let codec = tonic_prost::ProstCodec::<SubscribeRequest, Envelope>::default();
        let stream = grpc
            .server_streaming(
                tonic::Request::new(SubscribeRequest {
                    filters: vec!["topic==\"/tasks/exit\"".into()],
                }),
                path,
                codec,
            )
            .await;
        let _ = opened.send(());
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(s) => return e.end(format!("containerd Events.Subscribe: {s}")),
        };
        loop {
            match stream.message().await {
                Ok(Some(env)) => {
                    let at = Instant::now();
                    e.events.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // CRI's containers live in namespace k8s.io
                    if env.topic != "/tasks/exit" || env.namespace != "k8s.io" {
                        continue;
                    }
                    let Some(any) = env.event.filter(|a| a.type_url.ends_with("TaskExit")) else {
                        continue;
                    };
                    let Ok(ex) = <TaskExit as prost::Message>::decode(any.value.as_slice()) else {
                        continue;
                    };
                    // the init process (an exec's exit carries the exec id)
                    if ex.id == ex.container_id {
                        e.record(
                            &ex.container_id,
                            Exit {
                                at,
                                code: i32::try_from(ex.exit_status).ok(),
                            },
                        );
                    }
                }
                Ok(None) => return e.end("containerd closed it".into()),
                Err(s) => return e.end(format!("{s}")),
            }
        }
    });
    let _ = tokio::time::timeout(OPEN_WAIT, open).await;
    exits.check_open()?;
    Ok((exits, task))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wait_sees_an_exit_recorded_before_or_after() {
        let x = Exits::default();
        let t = Instant::now();
        x.record(
            "a",
            Exit {
                at: t,
                code: Some(0),
            },
        );
        assert_eq!(x.wait("a", Duration::from_secs(1)).await.unwrap().at, t);
        let x2 = x.clone();
        let waiter = tokio::spawn(async move { x2.wait("b", Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        x.record(
            "b",
            Exit {
                at: t,
                code: Some(3),
            },
        );
        assert_eq!(waiter.await.unwrap().unwrap().code, Some(3));
        assert!(x.wait("c", Duration::from_millis(10)).await.is_err());
    }

    #[test]
    fn task_exit_decodes() {
        use prost::Message;
        let ex = TaskExit {
            container_id: "c".into(),
            id: "c".into(),
            exit_status: 1,
        };
        let env = Envelope {
            namespace: "k8s.io".into(),
            topic: "/tasks/exit".into(),
            event: Some(AnyMsg {
                type_url: "containerd.events.TaskExit".into(),
                value: ex.encode_to_vec(),
            }),
        };
        let back = Envelope::decode(env.encode_to_vec().as_slice()).unwrap();
        let got = TaskExit::decode(back.event.unwrap().value.as_slice()).unwrap();
        assert_eq!(got, ex);
    }
}
