//! Loopback scenarios shared by the integration tests and the benchmarks.
