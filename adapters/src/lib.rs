//! # tsdb-operator-adapters
//!
//! Ports (async traits) for the outside world and their real implementations. The core decides; adapters observe
//! and execute.
