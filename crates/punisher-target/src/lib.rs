//! punisher-target
