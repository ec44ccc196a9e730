//! Port-forward sessions (`portforward.k8s.io` over SPDY, and SPDY tunnelled through a
//! WebSocket): each forwarded connection is a pair of streams, `data` and `error`, sharing a
//! `requestID`; the data stream is spliced to a connection dialled inside the pod's network.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;

use crate::runtime::StreamRuntime;
use crate::spdy;

/// The SPDY protocol of port-forward.
pub const PROTOCOL: &str = "portforward.k8s.io";

/// How long the second stream of a pair may lag the first.
const PAIR_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Pair {
    data: Option<spdy::Stream>,
    error: Option<spdy::Stream>,
    port: Option<u16>,
    since: Option<tokio::time::Instant>,
}

/// Serves one port-forward session; `allowed`: the ports the CRI request named (empty: any).
pub async fn serve(
    mut conn: spdy::Connection,
    pod_id: String,
    allowed: Vec<u16>,
    runtime: Arc<dyn StreamRuntime>,
) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        let s = tokio::select! {
            s = conn.accept() => match s {
                Some(s) => s,
                None => break,
            },
            _ = sweep.tick() => {
                // a pair whose other half never came
                pairs.retain(|_, p| p.since.is_none_or(|t| t.elapsed() < PAIR_TIMEOUT));
                continue;
            }
            Some(_) = forwards.join_next(), if !forwards.is_empty() => continue,
        };
        let kind = spdy::header(&s.headers, "streamtype").map(str::to_string);
        let request_id = spdy::header(&s.headers, "requestid")
            .unwrap_or("")
            .to_string();
        let port = spdy::header(&s.headers, "port").and_then(|p| p.parse::<u16>().ok());
        let pair = pairs.entry(request_id.clone()).or_default();
        pair.since.get_or_insert_with(tokio::time::Instant::now);
        if pair.port.is_none() {
            pair.port = port;
        }
        match kind.as_deref() {
            Some("data") => pair.data = Some(s),
            Some("error") => pair.error = Some(s),
            _ => {
                let _ = s.writer.reset(spdy::frame::rst::PROTOCOL_ERROR).await;
                continue;
            }
        }
        if pair.data.is_some() && pair.error.is_some() {
            let Some(pair) = pairs.remove(&request_id) else {
                continue;
            };
            let (Some(data), Some(error)) = (pair.data, pair.error) else {
                continue;
            };
            forwards.spawn(forward(
                data,
                error,
                pair.port,
                pod_id.clone(),
                allowed.clone(),
                runtime.clone(),
            ));
        }
    }
    // the client is gone: so are its connections
    forwards.abort_all();
    while forwards.join_next().await.is_some() {}
}

async fn forward(
    data: spdy::Stream,
    error: spdy::Stream,
    port: Option<u16>,
    pod_id: String,
    allowed: Vec<u16>,
    runtime: Arc<dyn StreamRuntime>,
) {
    let fail = |msg: String| async {
        tracing::debug!(pod = %pod_id, ?port, %msg, "port-forward failed");
        let _ = error.writer.write(Bytes::from(msg)).await;
        let _ = error.writer.close().await;
        let _ = data.writer.close().await;
    };
    let Some(port) = port.filter(|p| *p > 0) else {
        return fail("port-forward stream has no valid port header".into()).await;
    };
    if !allowed.is_empty() && !allowed.contains(&port) {
        return fail(format!(
            "port {port} was not named in the port-forward request"
        ))
        .await;
    }
    let tcp = match runtime.port_forward(&pod_id, port).await {
        Ok(t) => t,
        Err(e) => {
            return fail(format!("error forwarding port {port} to pod {pod_id}: {e}")).await;
        }
    };
    let (rd, mut wr) = tcp.into_split();
    let spdy::Stream {
        reader: mut data_rd,
        writer: data_wr,
        ..
    } = data;
    let to_pod = async move {
        while let Some(d) = data_rd.read().await {
            if wr.write_all(&d).await.is_err() {
                break;
            }
        }
        let _ = wr.shutdown().await;
    };
    let from_pod = data_wr.send_all_from(rd);
    // the pod closing its side ends the forward; the client closing its side only half-closes
    tokio::select! {
        () = async { to_pod.await; std::future::pending::<()>().await } => {}
        () = from_pod => {}
    }
    let _ = error.writer.close().await;
}
