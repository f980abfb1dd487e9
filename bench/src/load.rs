//! Driving `POST /v1/exchange` over HTTP/1.1 keep-alive connections:
//! closed loop (a fixed number of requests in flight) and open loop (a
//! fixed send schedule).
//!
//! Open-loop latency is measured from each request's *intended* send time
//! (`start + i / rate`), not from when it was actually sent: a server that
//! stalls delays the requests scheduled behind the stall, and measuring from
//! the actual send would hide exactly that (coordinated omission). The
//! schedule is kept with Tokio's timer, whose 1 ms granularity adds up to
//! 1 ms to open-loop figures; that error is the generator's, documented
//! in docs/PERFORMANCE.md.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Mutex as AsyncMutex;

use crate::stats::Recorder;

/// Where requests go.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's socket address (loopback only).
    pub addr: SocketAddr,
    /// The `Host` header.
    pub host: String,
    /// The exchange path, `/v1/exchange`.
    pub path: String,
    /// The body's content type.
    pub content_type: String,
}

/// One keep-alive connection, re-established after a transport failure.
pub struct Conn {
    target: Target,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    /// A connection to `target`, opened lazily.
    pub fn new(target: &Target) -> Conn {
        Conn { target: target.clone(), sender: None }
    }

    async fn sender(&mut self) -> anyhow::Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .with_context(|| format!("connecting to {}", self.target.addr))?;
            stream.set_nodelay(true)?;
            let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(async move {
                let _closed = conn.await;
            });
            self.sender = Some(sender);
        }
        self.sender.as_mut().context("connection just opened")
    }

    /// Sends one request; returns the status and body.
    pub async fn request(&mut self, method: http::Method, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let host = self.target.host.clone();
        let content_type = self.target.content_type.clone();
        let result = async {
            let sender = self.sender().await?;
            sender.ready().await?;
            let req = http::Request::builder()
                .method(method)
                .uri(path)
                .header(HOST, host)
                .header(CONTENT_TYPE, content_type)
                .body(Full::new(body))?;
            let response = sender.send_request(req).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        }
        .await;
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    /// Sends one exchange and classifies the outcome for the recorder.
    pub async fn exchange(&mut self, body: Bytes) -> Result<(), (String, String)> {
        let path = self.target.path.clone();
        match self.request(http::Method::POST, &path, body).await {
            Ok((200, _)) => Ok(()),
            Ok((status, body)) => {
                Err((format!("http {status}"), format!("http {status}: {}", String::from_utf8_lossy(&body))))
            }
            Err(e) => Err(("transport".to_owned(), format!("{e:#}"))),
        }
    }
}

/// Where an open-loop phase gets its bodies.
pub enum Source {
    /// Minted beforehand; request `i` sends body `i`.
    Premint(Arc<Vec<Bytes>>),
    /// Minted while sending (the soak).
    Stream(Arc<AsyncMutex<tokio::sync::mpsc::Receiver<Bytes>>>),
}

impl Source {
    async fn get(&self, i: usize) -> Option<Bytes> {
        match self {
            Source::Premint(bodies) => bodies.get(i).cloned(),
            Source::Stream(rx) => rx.lock().await.recv().await,
        }
    }
}

/// Sends every body with `concurrency` requests in flight; each worker
/// sends its next request as soon as the previous one is answered.
/// Returns the wall time of the phase.
pub async fn closed_loop(target: &Target, bodies: Arc<Vec<Bytes>>, concurrency: usize, rec: Arc<Recorder>) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..concurrency.max(1))
        .map(|_| {
            let (target, bodies, next, rec) = (target.clone(), bodies.clone(), next.clone(), rec.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(&target);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i).cloned() else { break };
                    let sent = Instant::now();
                    let result = conn.exchange(body).await;
                    rec.record(sent.elapsed(), result);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    start.elapsed()
}

/// Sends `total` requests on the schedule `start + i / rate`, with at most
/// `max_in_flight` outstanding (more would only queue in the generator;
/// their lateness is still counted because latency starts at the intended
/// time). Returns the wall time of the phase.
pub async fn open_loop(
    target: &Target,
    source: Arc<Source>,
    rate: f64,
    total: usize,
    max_in_flight: usize,
    rec: Arc<Recorder>,
) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let workers: Vec<_> = (0..max_in_flight.max(1))
        .map(|_| {
            let (target, source, next, rec) = (target.clone(), source.clone(), next.clone(), rec.clone());
            tokio::spawn(async move {
                let mut conn = Conn::new(&target);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    // Fetch the body before the slot, so a token being
                    // minted is not counted as server latency.
                    let Some(body) = source.get(i).await else { break };
                    let intended = start + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(intended).await;
                    let result = conn.exchange(body).await;
                    rec.record(intended.elapsed(), result);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    start.elapsed()
}
