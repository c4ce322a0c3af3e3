//! Backups: the object storage port ([`store`]), taking a backup in the agent ([`take`]), the agent's HTTP
//! endpoints ([`agent`]) and the operator's client for them ([`client`]), the catalogue ([`catalogue`]),
//! verification and restore ([`restore`]). The decisions (layout, manifest, retention, restore plan) are in
//! `tsdb_operator_core::backup`; this module does the I/O.

pub mod agent;
pub mod catalogue;
pub mod client;
pub mod restore;
pub mod store;
pub mod take;
