//! Fixtures shared by the benchmarks.
