//! Backups: the object storage port ([`store`]), taking a backup in the agent ([`take`]), the agent's HTTP
//! endpoints ([`agent`]; the operator's client for them is [`crate::agent_client`]), the catalogue ([`catalogue`]),
//! verification and restore ([`restore`]). The decisions (layout, manifest, retention, restore plan) are in
//! `tsdb_operator_core::backup`; this module does the I/O.

pub mod agent;
pub mod catalogue;
pub mod restore;
pub mod store;
pub mod take;
