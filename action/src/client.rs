//! Blocking HTTP with one total deadline: retries of network errors, 5xx and 429 with exponential backoff and full jitter, never of any other 4xx.
//!
//! Why these rules: a 5xx or a dropped connection says nothing about the
//! request, so trying again can succeed; a 429 says when to come back
//! (`Retry-After`). Any other 4xx is the server's answer to this request
//! (a denial, a malformed request) and repeating it only adds audit noise,
//! so it is returned at once. The deadline bounds the whole run, not each
//! attempt, so a flapping server cannot hold a job for long.

use std::time::{Duration, Instant};

use anyhow::bail;
use ureq::Agent;
use ureq::http::Response;

/// Total time one run may spend on the network, unless overridden.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);
/// Environment variable that overrides the deadline (`30s`, `1500ms`, `2m`).
pub const DEADLINE_ENV: &str = "WRIT_ACTION_DEADLINE";
/// Upper bound of one attempt, so one hung connection leaves time to retry.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);
/// Backoff before the first retry is drawn from `0..=BACKOFF_BASE`, then the
/// range doubles per attempt up to [`BACKOFF_CAP`] ("full jitter": many
/// jobs retrying against one recovering server spread out instead of
/// arriving in waves).
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Largest backoff range.
const BACKOFF_CAP: Duration = Duration::from_secs(8);
/// Responses larger than this are cut off: every answer writ gives is small.
const MAX_BODY: u64 = 1024 * 1024;

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body as text (lossy UTF-8), at most [`MAX_BODY`] bytes.
    pub body: String,
}

impl Reply {
    /// True for 2xx.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body, shortened to one line for a log message.
    pub fn excerpt(&self) -> String {
        excerpt(&self.body)
    }
}

/// The first 300 characters of `text`, on one line.
pub fn excerpt(text: &str) -> String {
    let one_line: String = text.trim().chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    match one_line.char_indices().nth(300) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

/// What to do after one attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Class {
    /// The answer is final (2xx, or a 4xx other than 429, or a 3xx).
    Final,
    /// Try again, after the server's `Retry-After` if it gave one.
    Retry {
        /// The server's `Retry-After`, in delta-seconds form.
        after: Option<Duration>,
    },
}

/// Classifies a status code. 5xx and 429 are transient; everything else,
/// in particular every other 4xx, is final.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Class {
    match status {
        429 => Class::Retry { after: retry_after },
        500..=599 => Class::Retry { after: retry_after },
        _ => Class::Final,
    }
}

/// Is a transport error worth another attempt? Connection, DNS, timeout and
/// I/O failures are; TLS failures (a wrong certificate will not fix itself,
/// and retrying against an interceptor gains nothing), bad URLs and
/// protocol violations are not.
pub fn is_transient(error: &ureq::Error) -> bool {
    matches!(
        error,
        ureq::Error::Io(_)
            | ureq::Error::Timeout(_)
            | ureq::Error::HostNotFound
            | ureq::Error::ConnectionFailed
            | ureq::Error::BodyStalled
            | ureq::Error::Protocol(_)
    )
}

/// Parses `Retry-After` in its delta-seconds form. The HTTP-date form is
/// not understood and falls back to the computed backoff.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Parses `60`, `60s`, `1500ms` or `2m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

/// The deadline from [`DEADLINE_ENV`], else [`DEFAULT_DEADLINE`].
pub fn deadline_from_env(default: Duration) -> anyhow::Result<Duration> {
    match std::env::var(DEADLINE_ENV) {
        Ok(text) if !text.trim().is_empty() => match parse_duration(&text) {
            Some(d) => Ok(d),
            None => bail!("{DEADLINE_ENV}={text:?} is not a duration; write e.g. 60s, 1500ms or 2m"),
        },
        _ => Ok(default),
    }
}

/// The backoff range before retry number `retry` (0 for the first retry).
pub fn backoff_ceiling(retry: u32) -> Duration {
    BACKOFF_BASE.saturating_mul(1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX)).min(BACKOFF_CAP)
}

/// A uniformly random duration in `0..=ceiling`.
fn full_jitter(ceiling: Duration) -> Duration {
    let random = getrandom::u64().unwrap_or_else(|_| {
        // No OS randomness: the clock's nanoseconds still spread jobs out.
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos().into())
    });
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(random % millis.saturating_add(1))
}

/// One attempt's result, as the retry loop sees it.
type Attempt = Result<Response<ureq::Body>, ureq::Error>;

/// An HTTP client whose calls share one deadline.
pub struct Client {
    agent: Agent,
    end: Instant,
    /// Where retry notes go (stdout under Actions, stderr elsewhere).
    note: fn(&str),
}

impl Client {
    /// A client whose calls must all finish within `deadline` from now.
    pub fn new(deadline: Duration, note: fn(&str)) -> Client {
        let config = Agent::config_builder()
            .http_status_as_error(false)
            // A redirect would carry a credential to a place the user did
            // not name; every writ endpoint answers directly.
            .max_redirects(0)
            .user_agent(concat!("writ-action/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(10)))
            .build();
        Client { agent: config.into(), end: Instant::now() + deadline, note }
    }

    /// The underlying agent, for building requests.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    /// Runs `attempt` until it gives a final answer, retrying transient
    /// failures within the deadline. `attempt` gets the attempt number
    /// (0 first) and the timeout to give that attempt; it may fail on its
    /// own (e.g. fetching a fresh OIDC token for a retry), which ends the
    /// call. Returns the final reply (2xx or a final 4xx); errors once the
    /// deadline leaves no time for another attempt.
    pub fn call(
        &self,
        what: &str,
        mut attempt: impl FnMut(u32, Duration) -> anyhow::Result<Attempt>,
    ) -> anyhow::Result<Reply> {
        let mut number = 0u32;
        loop {
            let timeout = self.remaining().min(ATTEMPT_TIMEOUT);
            if timeout.is_zero() {
                bail!("{what}: no time left for an attempt within the deadline");
            }
            let (why, after) = match attempt(number, timeout)? {
                Ok(mut response) => {
                    let status = response.status().as_u16();
                    let retry_after =
                        response.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(parse_retry_after);
                    let body = response.body_mut().with_config().limit(MAX_BODY).lossy_utf8(true).read_to_string();
                    match (classify_status(status, retry_after), body) {
                        (Class::Final, Ok(body)) => return Ok(Reply { status, body }),
                        (Class::Final, Err(e)) if !is_transient(&e) => {
                            bail!("{what}: HTTP {status}, reading the body failed: {e}")
                        }
                        (Class::Final, Err(e)) => (format!("reading the HTTP {status} answer failed: {e}"), None),
                        (Class::Retry { after }, body) => {
                            let text = body.map(|b| excerpt(&b)).unwrap_or_default();
                            (format!("HTTP {status} {text}").trim_end().to_owned(), after)
                        }
                    }
                }
                Err(e) if is_transient(&e) => (e.to_string(), None),
                Err(e) => bail!("{what}: {e}"),
            };
            let wait = after.unwrap_or_else(|| full_jitter(backoff_ceiling(number)));
            let left = self.remaining();
            if wait >= left {
                let asked = if after.is_some() { " (the server's Retry-After)" } else { "" };
                bail!(
                    "{what} failed after {} attempt(s): {why}; waiting {:.1} s more{asked} would pass the deadline",
                    number + 1,
                    wait.as_secs_f64()
                );
            }
            (self.note)(&format!(
                "writ: {what} failed ({why}); retrying in {:.1} s (attempt {})",
                wait.as_secs_f64(),
                number + 2
            ));
            std::thread::sleep(wait);
            number += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_429_are_retried() {
        for status in [500, 502, 503, 504, 599] {
            assert_eq!(classify_status(status, None), Class::Retry { after: None }, "{status}");
        }
        let after = Some(Duration::from_secs(3));
        assert_eq!(classify_status(429, after), Class::Retry { after });
    }

    #[test]
    fn denials_and_other_client_errors_are_final() {
        for status in [200, 204, 301, 400, 401, 403, 404, 408, 409, 422] {
            assert_eq!(classify_status(status, None), Class::Final, "{status}");
        }
    }

    #[test]
    fn network_failures_are_transient_and_configuration_errors_are_not() {
        assert!(is_transient(&ureq::Error::ConnectionFailed));
        assert!(is_transient(&ureq::Error::HostNotFound));
        assert!(is_transient(&ureq::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        assert!(is_transient(&ureq::Error::Timeout(ureq::Timeout::Global)));
        assert!(!is_transient(&ureq::Error::BadUri("x".to_owned())));
        assert!(!is_transient(&ureq::Error::Tls("bad certificate")));
        assert!(!is_transient(&ureq::Error::BodyExceedsLimit(1)));
        assert!(!is_transient(&ureq::Error::StatusCode(503)), "statuses are classified by classify_status");
    }

    #[test]
    fn retry_after_is_read_in_seconds_form_only() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff_ceiling(0), Duration::from_millis(250));
        assert_eq!(backoff_ceiling(1), Duration::from_millis(500));
        assert_eq!(backoff_ceiling(3), Duration::from_secs(2));
        assert_eq!(backoff_ceiling(10), BACKOFF_CAP);
        assert_eq!(backoff_ceiling(u32::MAX), BACKOFF_CAP);
    }

    #[test]
    fn jitter_stays_within_the_ceiling_and_varies() {
        let ceiling = Duration::from_millis(1000);
        let draws: Vec<_> = (0..64).map(|_| full_jitter(ceiling)).collect();
        assert!(draws.iter().all(|d| *d <= ceiling));
        assert!(draws.iter().any(|d| *d != draws[0]), "full jitter is random");
        assert_eq!(full_jitter(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn durations_parse_in_the_documented_forms() {
        assert_eq!(parse_duration("60"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1500ms"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "s", "1h", "1.5s", "-1s", "ten"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt("  a\nb  "), "a b");
        let long = "x".repeat(1000);
        assert_eq!(excerpt(&long).chars().count(), 301);
    }

    /// A local server that refuses connections: retries stop at the
    /// deadline with a message naming the attempts.
    #[test]
    fn the_deadline_bounds_retries_of_network_errors() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let client = Client::new(Duration::from_millis(800), |_| {});
        let url = format!("http://127.0.0.1:{port}/");
        let mut attempts = 0;
        let started = Instant::now();
        let error = client
            .call("GET /", |_, timeout| {
                attempts += 1;
                Ok(client.agent().get(&url).config().timeout_global(Some(timeout)).build().call())
            })
            .expect_err("nothing listens");
        assert!(attempts >= 2, "retried: {attempts}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(error.to_string().contains("deadline"), "{error}");
    }
}
