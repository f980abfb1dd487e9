//! Latency recording and summaries: every request's latency is kept (4
//! bytes each), so percentiles are exact, not bucketed.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// What one load phase observed. Shared by the phase's workers.
#[derive(Debug, Default)]
pub struct Recorder {
    inner: Mutex<Recorded>,
}

/// The raw observations of a phase.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Latency of every answered request (success or HTTP error), in µs.
    pub latencies_us: Vec<u32>,
    /// Latencies since the last [`Recorder::take_interval`], in µs.
    pub interval_us: Vec<u32>,
    /// How late the generator itself sent each request of an open loop
    /// (from its intended time to the moment the request was written), in
    /// µs. This lateness is part of every latency above.
    pub send_lateness_us: Vec<u32>,
    /// Open loops: the latencies again, grouped by the second (from the
    /// phase's start) in which each request was meant to be sent, to tell
    /// a tail spread over the whole phase from a stall of one second.
    pub by_second_us: Vec<Vec<u32>>,
    /// Open loops: the wall-clock time at which the phase's second 0
    /// began, to line its seconds up with other tools' clocks
    /// (`bench/scripts/neighbours`, `perf sched`).
    pub started: Option<SystemTime>,
    /// Requests answered 200.
    pub ok: u64,
    /// Failures by class (`http 503`, `transport`, …).
    pub errors: BTreeMap<String, u64>,
    /// The first failure in full, to make a broken setup obvious.
    pub first_error: Option<String>,
}

impl Recorder {
    /// Records one request.
    pub fn record(&self, latency: Duration, result: Result<(), (String, String)>) {
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        let mut r = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        r.latencies_us.push(us);
        r.interval_us.push(us);
        match result {
            Ok(()) => r.ok += 1,
            Err((class, detail)) => {
                *r.errors.entry(class).or_default() += 1;
                if r.first_error.is_none() {
                    r.first_error = Some(detail);
                }
            }
        }
    }

    /// Records one request of an open loop, meant to be sent `scheduled`
    /// after the phase's start.
    pub fn record_scheduled(&self, scheduled: Duration, latency: Duration, result: Result<(), (String, String)>) {
        let second = usize::try_from(scheduled.as_secs()).unwrap_or(usize::MAX);
        let us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        {
            let mut r = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
            // A schedule is never longer than the run's --max-time, so the
            // vector stays small; a nonsense offset is not grown into.
            if second < 100_000 {
                if r.by_second_us.len() <= second {
                    r.by_second_us.resize_with(second + 1, Vec::new);
                }
                r.by_second_us[second].push(us);
            }
        }
        self.record(latency, result);
    }

    /// Notes the wall-clock time at which an open loop's schedule starts.
    pub fn mark_start(&self, at: SystemTime) {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).started = Some(at);
    }

    /// Records how late the generator sent one request of an open loop
    /// (zero for one sent early).
    pub fn sent_late(&self, lateness: Duration) {
        let us = u32::try_from(lateness.as_micros()).unwrap_or(u32::MAX);
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).send_lateness_us.push(us);
    }

    /// Takes the latencies recorded since the previous call (for the
    /// soak's per-interval lines) and the running totals.
    pub fn take_interval(&self) -> (Vec<u32>, u64, u64) {
        let mut r = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let errors = r.errors.values().sum();
        (std::mem::take(&mut r.interval_us), r.ok, errors)
    }

    /// Everything recorded so far.
    pub fn finish(&self) -> Recorded {
        let mut r = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        r.interval_us = Vec::new();
        r.clone()
    }
}

impl Recorded {
    /// Total failed requests.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Number of samples.
    pub count: usize,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Summarizes latencies given in µs (nearest-rank percentiles).
pub fn summarize(latencies_us: &[u32]) -> Summary {
    if latencies_us.is_empty() {
        return Summary::default();
    }
    let mut sorted = latencies_us.to_vec();
    sorted.sort_unstable();
    let at = |q: f64| {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        f64::from(sorted[rank - 1]) / 1000.0
    };
    Summary {
        count: sorted.len(),
        p50: at(0.50),
        p90: at(0.90),
        p99: at(0.99),
        p999: at(0.999),
        max: f64::from(sorted[sorted.len() - 1]) / 1000.0,
    }
}

/// How an open loop's tail is spread over its seconds.
#[derive(Debug, Clone, Default)]
pub struct BySecond {
    /// Each second's percentiles, in the order of the schedule (a second
    /// in which nothing was meant to be sent has a count of 0).
    pub seconds: Vec<Summary>,
}

impl BySecond {
    /// Latency above which a second counts as over the target (issue 6's
    /// p99 at half the peak: 10 ms).
    pub const TARGET_MS: f64 = 10.0;

    /// Summarizes each second's latencies.
    pub fn new(by_second_us: &[Vec<u32>]) -> BySecond {
        BySecond { seconds: by_second_us.iter().map(|l| summarize(l)).collect() }
    }

    /// The seconds whose p99 is over [`Self::TARGET_MS`], worst first, as
    /// (second, its summary).
    pub fn over_target(&self) -> Vec<(usize, Summary)> {
        let mut over: Vec<_> =
            self.seconds.iter().copied().enumerate().filter(|(_, s)| s.p99 > Self::TARGET_MS).collect();
        over.sort_by(|a, b| b.1.p99.total_cmp(&a.1.p99));
        over
    }

    /// One line: the range and median of the seconds' p99 and the seconds
    /// over the target.
    pub fn line(&self) -> Option<String> {
        let mut p99s: Vec<f64> = self.seconds.iter().filter(|s| s.count > 0).map(|s| s.p99).collect();
        if p99s.is_empty() {
            return None;
        }
        p99s.sort_by(f64::total_cmp);
        let over = self.over_target();
        let mut line = format!(
            "each second's p99: {:.2}–{:.2} ms, median {:.2} ms; {} of {} seconds over {} ms",
            p99s[0],
            p99s[p99s.len() - 1],
            p99s[p99s.len() / 2],
            over.len(),
            p99s.len(),
            Self::TARGET_MS
        );
        if !over.is_empty() {
            let worst: Vec<String> =
                over.iter().take(5).map(|(i, s)| format!("s{i} {:.2} (max {:.2})", s.p99, s.max)).collect();
            line.push_str(&format!(": {}", worst.join(", ")));
        }
        Some(line)
    }

    /// As a JSON array, one object per second.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(self.seconds.iter().map(|s| s.to_json()).collect())
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.p50, self.p90, self.p99, self.p999, self.max
        )
    }
}

impl Summary {
    /// As a JSON object.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count, "p50_ms": self.p50, "p90_ms": self.p90,
            "p99_ms": self.p99, "p999_ms": self.p999, "max_ms": self.max,
        })
    }
}

/// Seconds since the Unix epoch, with the fraction (0 for a time before it).
pub fn unix_secs(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The time of day in UTC to the millisecond (`14:18:15.812 UTC`), as
/// `date -u` and `bench/scripts/neighbours` print it, so an open loop's
/// seconds can be lined up with what else ran on the machine.
pub fn utc_clock(at: SystemTime) -> String {
    let ms = at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let in_day = ms % 86_400_000;
    format!("{:02}:{:02}:{:02}.{:03} UTC", in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_clock_of_a_phase_start() {
        // 2026-12-07 14:18:15.812 UTC.
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_653_095_812);
        assert_eq!(utc_clock(at), "14:18:15.812 UTC");
        assert!((unix_secs(at) - 1_796_653_095.812).abs() < 1e-3);
        assert_eq!(utc_clock(SystemTime::UNIX_EPOCH), "00:00:00.000 UTC");
        assert_eq!(unix_secs(SystemTime::UNIX_EPOCH - Duration::from_secs(5)), 0.0);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        let s = summarize(&samples);
        assert_eq!((s.count, s.p50, s.p90, s.p99, s.max), (100, 50.0, 90.0, 99.0, 100.0));
    }

    #[test]
    fn open_loop_latencies_are_kept_by_the_second_they_were_meant_for() {
        let r = Recorder::default();
        for ms in 0..100 {
            r.record_scheduled(Duration::from_millis(10 * ms), Duration::from_millis(2), Ok(()));
        }
        // One slow request in second 1, nothing in seconds 2 and 3, and a
        // stall in second 4.
        r.record_scheduled(Duration::from_millis(1500), Duration::from_millis(12), Ok(()));
        for _ in 0..10 {
            r.record_scheduled(Duration::from_millis(4100), Duration::from_millis(40), Ok(()));
        }
        let done = r.finish();
        assert_eq!(done.latencies_us.len(), 111, "each request also counts in the phase's totals");
        let by = BySecond::new(&done.by_second_us);
        let counts: Vec<usize> = by.seconds.iter().map(|s| s.count).collect();
        assert_eq!(counts, vec![100, 1, 0, 0, 10]);
        let over: Vec<usize> = by.over_target().iter().map(|(i, _)| *i).collect();
        assert_eq!(over, vec![4, 1], "worst first, numbered by the schedule's second");
        let line = by.line().expect("seconds were recorded");
        assert!(line.contains("2 of 3 seconds over 10 ms: s4 40.00 (max 40.00), s1 12.00"), "{line}");
        assert!(BySecond::new(&[]).line().is_none());
    }

    #[test]
    fn empty_is_zero() {
        assert_eq!(summarize(&[]).count, 0);
    }

    #[test]
    fn recorder_counts_errors_by_class_and_keeps_the_first() {
        let r = Recorder::default();
        r.record(Duration::from_millis(1), Ok(()));
        r.record(Duration::from_millis(2), Err(("http 503".into(), "first".into())));
        r.record(Duration::from_millis(3), Err(("http 503".into(), "second".into())));
        r.sent_late(Duration::from_micros(250));
        let done = r.finish();
        assert_eq!(done.send_lateness_us, vec![250]);
        assert_eq!((done.ok, done.error_count(), done.first_error.as_deref()), (1, 2, Some("first")));
        assert_eq!(done.latencies_us, vec![1000, 2000, 3000]);
    }
}
