//! How long one load from beyond a core's own caches takes right now: a
//! host-speed probe beside the crypto ceiling.
//!
//! The ceiling's RSA and Ed25519 work runs from the first-level caches, so
//! it barely moves when the machine's memory gets slower; writ's other
//! work (parsing, allocation, SQLite's B-trees, the kernel's TCP) misses
//! the caches far more often (docs/PERFORMANCE.md, session 17). On a
//! shared host whose memory slows for minutes at a time, the ratio to the
//! ceiling falls while the ceiling stays put. This probe measures that
//! directly: a chain of dependent loads, each from a random cache line of
//! a buffer far larger than a core's private caches, so every step waits
//! for the parts of the machine that other guests share: the last-level
//! cache or memory, and, with 4 KiB pages, mostly a page-table walk too,
//! as writ's own misses do. (Whether 64 MiB also exceeds the last-level
//! cache depends on the host: session 21's Xeon reported 480 MiB of L3,
//! session 18's EPYC 32.)

use std::time::Instant;

/// Bytes of the buffer the chain runs through: 32 times a core's private
/// L2 (2 MiB at most on the hosts so far), small enough to build in a
/// fraction of a second.
const BUFFER_BYTES: usize = 64 << 20;
/// One cache line.
const LINE_BYTES: usize = 64;
/// Steps timed per measurement: about 0.1-0.2 s at 50-150 ns a step.
const STEPS: usize = 1 << 20;

/// A random cycle through every cache line of a buffer, built once.
pub struct Chain {
    /// `next[i]` is the index of the entry the chain visits after entry
    /// `i`; only the first entry of each line is part of the chain.
    next: Vec<u32>,
}

impl Chain {
    /// Builds the chain: the lines in a shuffled order (Fisher-Yates with a
    /// fixed-seed xorshift, so every run walks the same path), each
    /// pointing to the next and the last back to the first.
    pub fn new() -> Chain {
        let per_line = LINE_BYTES / std::mem::size_of::<u32>();
        let lines = BUFFER_BYTES / LINE_BYTES;
        let mut order: Vec<u32> = (0..lines as u32).collect();
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        for i in (1..lines).rev() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let j = (state % (i as u64 + 1)) as usize;
            order.swap(i, j);
        }
        let mut next = vec![0u32; lines * per_line];
        for k in 0..lines {
            let from = order[k] as usize * per_line;
            let to = order[(k + 1) % lines] as usize * per_line;
            next[from] = to as u32;
        }
        Chain { next }
    }

    /// Nanoseconds per step of the chain, timed over [`STEPS`] steps.
    pub fn measure(&self) -> f64 {
        let mut at = 0usize;
        // Once around a part of the chain first, so the timed steps do not
        // include the first touch of pages the kernel has not yet mapped.
        for _ in 0..STEPS / 8 {
            at = self.next[at] as usize;
        }
        let started = Instant::now();
        for _ in 0..STEPS {
            at = self.next[at] as usize;
        }
        let elapsed = started.elapsed();
        std::hint::black_box(at);
        elapsed.as_secs_f64() * 1e9 / STEPS as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_is_one_cycle_through_every_line() {
        let chain = Chain::new();
        let per_line = LINE_BYTES / 4;
        let lines = BUFFER_BYTES / LINE_BYTES;
        let mut seen = vec![false; lines];
        let mut at = 0usize;
        for _ in 0..lines {
            assert_eq!(at % per_line, 0, "the chain only visits the first entry of a line");
            assert!(!seen[at / per_line], "line {} visited twice before the cycle closed", at / per_line);
            seen[at / per_line] = true;
            at = chain.next[at] as usize;
        }
        assert_eq!(at, 0, "after every line the chain is back where it began");
        assert!(chain.measure() > 0.0);
    }
}
