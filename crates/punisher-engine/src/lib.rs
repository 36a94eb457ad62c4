//! punisher-engine
