//! Load benchmarks for punisher: scripts under benches/ drive whole-system runs; see RESULTS.md.
