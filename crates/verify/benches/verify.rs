//! Verification throughput (work in progress).
fn main() {}
