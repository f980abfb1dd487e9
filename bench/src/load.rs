//! Driving `POST /v1/exchange` over HTTP/1.1 keep-alive connections:
//! closed loop (a fixed number of requests in flight) and open loop (a
//! fixed send schedule).
//!
//! Open-loop latency is measured from each request's *intended* send time
//! (`start + i / rate`), never from a later actual send: a server that
//! stalls delays the requests scheduled behind the stall, and measuring from
//! the actual send would hide exactly that (coordinated omission). The
//! schedule is kept with Tokio's timer, which has 1 ms ticks and rounds a
//! wait up twice (the deadline to its tick, then the wait for that tick),
//! so a task that sleeps until its slot starts 0–2 ms late. Each request
//! therefore sleeps until 1 ms before its slot ([`EARLY`]) and starts
//! between about 1 ms early and 1 ms late: a request sent early counts
//! from its send, one sent late from its slot, so a latency is never less
//! than the request's own round trip and still holds any lateness of the
//! generator's. Each open loop reports that lateness beside its latencies.
//! The server sees the same load either way: the requests of one tick go
//! out together, 1 ms sooner. (Until session 24 requests slept until the
//! slot itself, and the timer's 1 ms at p50 and 2 ms at p99 were counted
//! as the server's.) A schedule kept to a quarter of a millisecond on a
//! `timerfd` was tried and not kept (docs/PERFORMANCE.md, session 19):
//! its extra wake-ups cost the generator half as much CPU again and the
//! open loop's p99 rose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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

/// Largest response head the generator accepts.
const MAX_HEAD: usize = 64 * 1024;

/// One keep-alive HTTP/1.1 connection, re-established after a transport
/// failure or a `Connection: close`.
///
/// A deliberately small client: one request at a time, the head written
/// with the body in one `write`, the response read into a reused buffer
/// (`Content-Length` or chunked bodies). The generator shares the machine
/// with the server, so every microsecond it spends per request is one the
/// server does not get; with hyper's client the generator took about
/// 1.4 times as much CPU per request (docs/PERFORMANCE.md).
pub struct Conn {
    target: Target,
    stream: Option<TcpStream>,
    out: Vec<u8>,
    buf: Vec<u8>,
}

/// A parsed response; the body is `buf[body]`.
struct Response {
    status: u16,
    body: std::ops::Range<usize>,
    close: bool,
}

impl Conn {
    /// A connection to `target`, opened lazily.
    pub fn new(target: &Target) -> Conn {
        Conn { target: target.clone(), stream: None, out: Vec::with_capacity(4096), buf: Vec::with_capacity(8192) }
    }

    /// Opens the connection now, if it is not open, so that a phase's clock
    /// does not include TCP handshakes. A failure is left for the first
    /// request to meet and report.
    pub async fn connect(&mut self) {
        if self.stream.is_none()
            && let Ok(stream) = TcpStream::connect(self.target.addr).await
            && stream.set_nodelay(true).is_ok()
        {
            self.stream = Some(stream);
        }
    }

    /// Sends one request; returns the status and body.
    pub async fn request(&mut self, method: http::Method, path: &str, body: Bytes) -> anyhow::Result<(u16, Bytes)> {
        let response = self.round_trip(method.as_str(), path, &body).await?;
        Ok((response.status, Bytes::copy_from_slice(&self.buf[response.body])))
    }

    /// Sends one exchange and classifies the outcome for the recorder.
    pub async fn exchange(&mut self, body: Bytes) -> Result<(), (String, String)> {
        let path = std::mem::take(&mut self.target.path);
        let result = self.round_trip("POST", &path, &body).await;
        self.target.path = path;
        match result {
            Ok(r) if r.status == 200 => Ok(()),
            Ok(r) => {
                let status = r.status;
                Err((
                    format!("http {status}"),
                    format!("http {status}: {}", String::from_utf8_lossy(&self.buf[r.body])),
                ))
            }
            Err(e) => Err(("transport".to_owned(), format!("{e:#}"))),
        }
    }

    async fn round_trip(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Response> {
        let result = self.try_round_trip(method, path, body).await;
        match &result {
            Ok(r) if !r.close => {}
            _ => self.stream = None,
        }
        result
    }

    async fn try_round_trip(&mut self, method: &str, path: &str, body: &[u8]) -> anyhow::Result<Response> {
        use std::io::Write as _;
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.target.addr)
                .await
                .with_context(|| format!("connecting to {}", self.target.addr))?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().context("connection just opened")?;
        self.out.clear();
        write!(
            self.out,
            "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: {}\r\ncontent-length: {}\r\n\r\n",
            self.target.host,
            self.target.content_type,
            body.len()
        )?;
        self.out.extend_from_slice(body);
        stream.write_all(&self.out).await?;

        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_HEAD {
                bail!("response head longer than {MAX_HEAD} bytes");
            }
            read_more(stream, &mut self.buf).await?;
        };
        let head = parse_head(&self.buf[..head_end])?;
        let body = if head.chunked {
            dechunk(stream, &mut self.buf, head_end).await?
        } else {
            let end = head_end + head.content_length;
            while self.buf.len() < end {
                read_more(stream, &mut self.buf).await?;
            }
            head_end..end
        };
        Ok(Response { status: head.status, body, close: head.close })
    }
}

/// What the generator needs of a response head.
#[derive(Debug)]
struct Head {
    status: u16,
    content_length: usize,
    chunked: bool,
    close: bool,
}

fn parse_head(head: &[u8]) -> anyhow::Result<Head> {
    let text = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP/1.x status line: {status_line:?}"))?;
    let mut parsed = Head { status, content_length: 0, chunked: false, close: status_line.starts_with("HTTP/1.0") };
    for line in lines.filter(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').with_context(|| format!("malformed header line {line:?}"))?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            parsed.content_length = value.parse().with_context(|| format!("bad Content-Length {value:?}"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            parsed.chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            parsed.close = value.eq_ignore_ascii_case("close");
        }
    }
    Ok(parsed)
}

/// Reads a chunked body that starts at `buf[start..]` and compacts it in
/// place; returns its range in `buf`.
async fn dechunk(stream: &mut TcpStream, buf: &mut Vec<u8>, start: usize) -> anyhow::Result<std::ops::Range<usize>> {
    let mut write = start;
    let mut read = start;
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf[read..], b"\r\n") {
                break read + i;
            }
            read_more(stream, buf).await?;
        };
        let size_text = std::str::from_utf8(&buf[read..line_end]).context("chunk size is not UTF-8")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).with_context(|| format!("bad chunk size {size_text:?}"))?;
        read = line_end + 2;
        if size == 0 {
            // Trailers, if any, end with an empty line.
            while find(&buf[read..], b"\r\n").is_none() {
                read_more(stream, buf).await?;
            }
            return Ok(start..write);
        }
        while buf.len() < read + size + 2 {
            read_more(stream, buf).await?;
        }
        buf.copy_within(read..read + size, write);
        write += size;
        read += size + 2;
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> anyhow::Result<()> {
    buf.reserve(8192);
    if stream.read_buf(buf).await? == 0 {
        bail!("the server closed the connection");
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
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

/// `n` connections to `target`, opened before a phase starts: a client of
/// writ keeps its connections, so a phase measures exchanges on open
/// connections, not a burst of TCP handshakes at its start.
pub async fn connect_all(target: &Target, n: usize) -> Vec<Conn> {
    let mut conns: Vec<Conn> = (0..n).map(|_| Conn::new(target)).collect();
    for conn in &mut conns {
        conn.connect().await;
    }
    conns
}

/// Sends every body with `concurrency` requests in flight; each worker
/// sends its next request as soon as the previous one is answered.
/// Returns the wall time of the phase.
pub async fn closed_loop(target: &Target, bodies: Arc<Vec<Bytes>>, concurrency: usize, rec: Arc<Recorder>) -> Duration {
    let next = Arc::new(AtomicUsize::new(0));
    let conns = connect_all(target, concurrency.max(1)).await;
    let start = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (bodies, next, rec) = (bodies.clone(), next.clone(), rec.clone());
            tokio::spawn(async move {
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

/// How long before its slot a request's task wakes: Tokio's timer wakes a
/// task 0–2 ms after the instant it asks for, so asking for 1 ms before
/// the slot starts the request between about 1 ms early and 1 ms late.
pub const EARLY: Duration = Duration::from_millis(1);

/// The instant to sleep until for a request meant to start at `intended`.
fn wake_for(intended: tokio::time::Instant) -> tokio::time::Instant {
    intended.checked_sub(EARLY).unwrap_or(intended)
}

/// Where a request's latency starts: its slot, or its send if that came
/// first. A late send is the generator's lateness, and is counted, as a
/// server's stall is (no coordinated omission); an early send is timed
/// from the send, so its head start is never taken off the server's time
/// and the latency is the request's own round trip.
fn counted_from(intended: tokio::time::Instant, sent: tokio::time::Instant) -> tokio::time::Instant {
    intended.min(sent)
}

/// Sends `total` requests on the schedule `start + i / rate`, one
/// outstanding per connection of `conns` at most (more would only queue in
/// the generator; their lateness is still counted because latency starts
/// at the intended time). Returns the wall time of the phase and the
/// connections, for a phase that follows this one without a gap.
pub async fn open_loop(
    conns: Vec<Conn>,
    source: Arc<Source>,
    rate: f64,
    total: usize,
    rec: Arc<Recorder>,
) -> (Duration, Vec<Conn>) {
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    rec.mark_start(std::time::SystemTime::now());
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let workers: Vec<_> = conns
        .into_iter()
        .map(|mut conn| {
            let (source, next, rec) = (source.clone(), next.clone(), rec.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    // Fetch the body before the slot, so a token being
                    // minted is not counted as server latency.
                    let Some(body) = source.get(i).await else { break };
                    let intended = start + interval.mul_f64(i as f64);
                    tokio::time::sleep_until(wake_for(intended)).await;
                    let sent = tokio::time::Instant::now();
                    rec.sent_late(sent.saturating_duration_since(intended));
                    let result = conn.exchange(body).await;
                    rec.record_scheduled(intended - start, counted_from(intended, sent).elapsed(), result);
                }
                conn
            })
        })
        .collect();
    let mut conns = Vec::with_capacity(workers.len());
    for w in workers {
        if let Ok(conn) = w.await {
            conns.push(conn);
        }
    }
    (start.elapsed(), conns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each request on one connection with the next
    /// canned response.
    async fn canned(responses: Vec<&'static [u8]>) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 65536];
            for response in responses {
                let mut seen = Vec::new();
                // Read one request: head, then Content-Length bytes.
                loop {
                    let n = socket.read(&mut buf).await.expect("read request");
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = find(&seen, b"\r\n\r\n") {
                        let head = std::str::from_utf8(&seen[..end]).expect("UTF-8 head").to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if seen.len() >= end + 4 + len {
                            break;
                        }
                    }
                }
                socket.write_all(response).await.expect("write response");
            }
        });
        Target { addr, host: "localhost".into(), path: "/v1/exchange".into(), content_type: "application/json".into() }
    }

    #[tokio::test]
    async fn reads_sized_and_chunked_bodies_on_one_connection() {
        let target = canned(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n4\r\nnope\r\n3;x=y\r\n!!!\r\n0\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\n\r\n",
        ])
        .await;
        let mut conn = Conn::new(&target);
        let (status, body) =
            conn.request(http::Method::POST, "/v1/exchange", Bytes::from_static(b"{}")).await.expect("request");
        assert_eq!((status, &body[..]), (200, &b"hello"[..]));
        let err = conn.exchange(Bytes::from_static(b"{}")).await.expect_err("must fail");
        assert_eq!(err, ("http 400".to_owned(), "http 400: nope!!!".to_owned()));
        let (status, body) = conn.request(http::Method::GET, "/", Bytes::new()).await.expect("request");
        assert_eq!((status, body.len()), (204, 0));
    }

    #[tokio::test]
    async fn a_closed_connection_is_a_transport_error_and_is_reopened() {
        let target = canned(vec![]).await;
        let mut conn = Conn::new(&target);
        let err = conn.exchange(Bytes::from_static(b"{}")).await.expect_err("must fail");
        assert_eq!(err.0, "transport");
        assert!(conn.stream.is_none());
    }

    #[test]
    fn an_early_send_counts_from_the_send_and_a_late_one_from_its_slot() {
        let slot = tokio::time::Instant::now() + Duration::from_secs(10);
        assert_eq!(wake_for(slot), slot - EARLY, "the task asks to wake 1 ms before its slot");
        let early = slot - Duration::from_micros(700);
        assert_eq!(counted_from(slot, early), early, "an early send is timed from the send, never from later");
        let late = slot + Duration::from_micros(300);
        assert_eq!(counted_from(slot, late), slot, "a late send is timed from its slot, lateness included");
        assert_eq!(counted_from(slot, slot), slot);
    }

    #[test]
    fn malformed_heads_are_refused_with_the_reason() {
        let err = parse_head(b"HTTP/2 200\r\n\r\n").expect_err("must be refused");
        assert!(err.to_string().contains("not an HTTP/1.x status line"), "{err}");
        let err = parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n").expect_err("must be refused");
        assert!(err.to_string().contains("bad Content-Length"), "{err}");
        let head = parse_head(b"HTTP/1.1 503 Busy\r\nConnection: close\r\n\r\n").expect("valid head");
        assert_eq!((head.status, head.close), (503, true));
    }
}
