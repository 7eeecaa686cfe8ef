//! What the property suites (`convergence`, `faults`, `sync`) share: their case counts
//! and the runtime each case runs on.

use proptest::test_runner::Config as ProptestConfig;

/// `default_cases` cases; under `PROPTEST_CASES=n`, `n * num / den` (at least one), so
/// that the heavier properties scale down.
pub fn config(default_cases: u32, num: u32, den: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default_cases, |n| (n * num / den).max(1));
    ProptestConfig {
        cases,
        // Outcomes depend on wall-clock stamps and random actor ids, so a saved seed
        // need not replay exactly; the shrunk scenario is printed instead.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A runtime for one case (proptest bodies are not async).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}
