//! punisher-metrics
