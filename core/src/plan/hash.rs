//! The applied hash: a stable tree hash of a manifest, computed from its JSON value or straight from the typed
//! object (through [`events`](super::events)), with the same result. Pure: no I/O.
//!
//! # The hash
//! Built from XXH3-128 (a fixed, specified algorithm; `xxh3_128_with_seed`), one seed per kind of node:
//! - a string, number, boolean or null hashes its bytes (numbers as u64, i64 or f64 bits, little-endian);
//! - an array folds its items in order: `acc = H(acc ‖ item)`, then `H(acc ‖ length)`;
//! - an object adds up (wrapping, 128 bits) `H(H(key) ‖ value)` over its entries, then `H(sum ‖ count)`: the
//!   order of the entries does not matter, so a typed object (fields in declaration order) and its JSON value
//!   (keys sorted) hash alike.
//!
//! The manifest's own applied-hash annotation is left out, and so is an `annotations` map that holds nothing
//! else; the root `apiVersion` is the one the object is applied under.
//!
//! # Guarantees
//! - Stable: the same manifest gives the same hash in every run and in every version of the operator that keeps
//!   this construction; the hash is stored on each child and compared on every resync.
//! - Changing the construction changes every hash: the first resync after such an upgrade applies every child
//!   once (`SpecChanged`), which changes nothing on the server but is a burst of writes. Builds before this
//!   construction used SHA-256 over the canonical JSON.
//! - Not a security boundary: it only notices that the operator's own intent changed, including fields it
//!   stopped setting, against a value the operator wrote itself.

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::events::{Scalar, Sink, Stop};
use crate::constants::annotations::APPLIED_HASH;

const NULL: u64 = 0x6e75_6c6c;
const BOOL: u64 = 0x626f_6f6c;
const UINT: u64 = 0x7569_6e74;
const INT: u64 = 0x696e_7420;
const FLOAT: u64 = 0x666c_6f61;
const STRING: u64 = 0x7374_7269;
const KEY: u64 = 0x6b65_7920;
const ENTRY: u64 = 0x656e_7472;
const OBJECT: u64 = 0x6f62_6a65;
const ITEM: u64 = 0x6974_656d;
const ARRAY: u64 = 0x6172_7261;

/// The hash as it is written in the annotation: 32 lowercase hex digits.
pub(crate) fn to_hex(hash: u128) -> String {
    format!("{hash:032x}")
}

/// Whether `text` is `hash` as [`to_hex`] writes it, without writing it.
pub(crate) fn is_hex_of(text: &str, hash: u128) -> bool {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let text = text.as_bytes();
    text.len() == 32
        && text
            .chunks_exact(2)
            .zip(hash.to_be_bytes())
            .all(|(pair, byte)| pair == [DIGITS[usize::from(byte >> 4)], DIGITS[usize::from(byte & 0xf)]])
}

/// The hash of a manifest (see the module documentation).
pub(crate) fn of_value(manifest: &Value) -> u128 {
    let Value::Object(root) = manifest else { return value_hash(manifest) };
    let mut object = ObjectHash::default();
    for (key, value) in root {
        match value {
            Value::Object(meta) if key == "metadata" => {
                let mut meta_hash = ObjectHash::default();
                for (key, value) in meta {
                    match value {
                        Value::Object(annotations) if key == "annotations" => {
                            let mut kept = ObjectHash::default();
                            for (key, value) in annotations.iter().filter(|(k, _)| *k != APPLIED_HASH) {
                                kept.add(key, value_hash(value));
                            }
                            if kept.count > 0 || !annotations.contains_key(APPLIED_HASH) {
                                meta_hash.add(key, kept.finish());
                            }
                        }
                        _ => meta_hash.add(key, value_hash(value)),
                    }
                }
                object.add(key, meta_hash.finish());
            }
            _ => object.add(key, value_hash(value)),
        }
    }
    object.finish()
}

fn value_hash(value: &Value) -> u128 {
    match value {
        Value::String(s) => string_hash(s),
        Value::Array(items) => {
            let mut array = ArrayHash::default();
            for item in items {
                array.push(value_hash(item));
            }
            array.finish()
        }
        Value::Object(map) => {
            let mut object = ObjectHash::default();
            for (key, value) in map {
                object.add(key, value_hash(value));
            }
            object.finish()
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => scalar_hash(value),
    }
}

fn string_hash(s: &str) -> u128 {
    xxh3_128_with_seed(s.as_bytes(), STRING)
}

/// Null, booleans and numbers.
fn scalar_hash(value: &Value) -> u128 {
    match value {
        Value::Bool(b) => xxh3_128_with_seed(&[u8::from(*b)], BOOL),
        Value::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => xxh3_128_with_seed(&u.to_le_bytes(), UINT),
            (None, Some(i)) => xxh3_128_with_seed(&i.to_le_bytes(), INT),
            (None, None) => xxh3_128_with_seed(&n.as_f64().unwrap_or(f64::NAN).to_bits().to_le_bytes(), FLOAT),
        },
        Value::String(s) => string_hash(s),
        Value::Null | Value::Array(_) | Value::Object(_) => xxh3_128_with_seed(&[], NULL),
    }
}

fn key_hash(key: &str) -> u128 {
    xxh3_128_with_seed(key.as_bytes(), KEY)
}

fn pair(a: u128, b: u128, seed: u64) -> u128 {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(&a.to_le_bytes());
    bytes[16..].copy_from_slice(&b.to_le_bytes());
    xxh3_128_with_seed(&bytes, seed)
}

#[derive(Default)]
struct ObjectHash {
    sum: u128,
    count: u64,
}

impl ObjectHash {
    fn add(&mut self, key: &str, value: u128) {
        self.add_hashed(key_hash(key), value);
    }

    fn add_hashed(&mut self, key: u128, value: u128) {
        self.sum = self.sum.wrapping_add(pair(key, value, ENTRY));
        self.count += 1;
    }

    fn finish(&self) -> u128 {
        pair(self.sum, u128::from(self.count), OBJECT)
    }
}

#[derive(Default)]
struct ArrayHash {
    acc: u128,
    count: u64,
}

impl ArrayHash {
    fn push(&mut self, item: u128) {
        self.acc = pair(self.acc, item, ITEM);
        self.count += 1;
    }

    fn finish(&self) -> u128 {
        pair(self.acc, u128::from(self.count), ARRAY)
    }
}

/// The same hash computed from the events of a typed object.
///
/// The typed objects the builders render never carry the applied-hash annotation; if one does, the walk stops
/// with [`Stop::Unsupported`] and the caller hashes the JSON value instead.
pub(crate) struct HashSink<'a> {
    /// The root `apiVersion` the object is applied under.
    api_version: &'a str,
    stack: Vec<Frame>,
    result: Option<u128>,
}

enum Frame {
    Object { hash: ObjectHash, key: u128, key_is_api_version: bool },
    Array(ArrayHash),
}

impl<'a> HashSink<'a> {
    pub(crate) fn new(api_version: &'a str) -> Self {
        Self { api_version, stack: Vec::with_capacity(16), result: None }
    }

    /// The hash, once the root value ended.
    pub(crate) fn finish(self) -> Option<u128> {
        self.result
    }

    /// Hands a finished value to its parent (or makes it the result).
    fn done(&mut self, value: u128) {
        match self.stack.last_mut() {
            Some(Frame::Object { hash, key, .. }) => hash.add_hashed(*key, value),
            Some(Frame::Array(array)) => array.push(value),
            None => self.result = Some(value),
        }
    }
}

impl Sink for HashSink<'_> {
    fn scalar(&mut self, value: Scalar<'_>) -> Result<(), Stop> {
        let root_api_version =
            self.stack.len() == 1 && matches!(self.stack.last(), Some(Frame::Object { key_is_api_version: true, .. }));
        let hash = match value {
            _ if root_api_version => string_hash(self.api_version),
            Scalar::Str(s) => string_hash(s),
            Scalar::Other(v) => scalar_hash(v),
        };
        self.done(hash);
        Ok(())
    }

    fn begin_seq(&mut self, _len: Option<usize>) -> Result<(), Stop> {
        self.stack.push(Frame::Array(ArrayHash::default()));
        Ok(())
    }

    fn begin_map(&mut self) -> Result<(), Stop> {
        self.stack.push(Frame::Object { hash: ObjectHash::default(), key: 0, key_is_api_version: false });
        Ok(())
    }

    fn key(&mut self, name: &str) -> Result<(), Stop> {
        let depth = self.stack.len();
        if name == APPLIED_HASH {
            // Only the JSON path leaves it out (see the type's documentation).
            return Err(Stop::Unsupported);
        }
        let Some(Frame::Object { key, key_is_api_version, .. }) = self.stack.last_mut() else {
            return Err(Stop::Unsupported);
        };
        *key = key_hash(name);
        *key_is_api_version = depth == 1 && name == "apiVersion";
        Ok(())
    }

    fn end(&mut self) -> Result<(), Stop> {
        let hash = match self.stack.pop() {
            Some(Frame::Object { hash, .. }) => hash.finish(),
            Some(Frame::Array(array)) => array.finish(),
            None => return Err(Stop::Unsupported),
        };
        self.done(hash);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_compared_exactly_as_it_is_written() {
        for hash in [0, 1, 0xabcd, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            let hex = to_hex(hash);
            assert!(is_hex_of(&hex, hash), "{hex}");
            assert!(!is_hex_of(&hex.to_uppercase(), hash) || hex == hex.to_uppercase());
            assert!(!is_hex_of(&hex[1..], hash));
            assert!(!is_hex_of(&format!("{hex}0"), hash));
            assert!(!is_hex_of(&hex, hash ^ 1));
        }
    }

    #[test]
    fn values_moved_between_keys_or_across_the_key_boundary_change_the_hash() {
        use serde_json::json;
        let hash = |v: Value| of_value(&v);
        assert_ne!(hash(json!({"a": "x", "b": "y"})), hash(json!({"a": "y", "b": "x"})));
        assert_ne!(hash(json!({"ab": "c"})), hash(json!({"a": "bc"})));
        assert_ne!(hash(json!({"a": "1"})), hash(json!({"a": 1})));
        assert_ne!(hash(json!({"a": {}})), hash(json!({"a": []})));
        assert_ne!(hash(json!({"a": [1, 2]})), hash(json!({"a": [2, 1]})));
        assert_eq!(hash(json!({"a": 1, "b": [true, null]})), hash(json!({"b": [true, null], "a": 1})));
    }

    /// The hash is stored on every child and compared on every resync: a change of this value is a change of the
    /// construction (see the module documentation), which applies every child once after an upgrade.
    #[test]
    fn the_hash_of_a_manifest_is_stable() {
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "demo-config", "labels": {"app.kubernetes.io/name": "prometheus"},
                "annotations": {APPLIED_HASH: "ignored"}},
            "data": {"prometheus.yml": "global:\n  scrape_interval: 30s\n"},
            "numbers": [0, -1, 1.5, u64::MAX, true, null, "", [], {}],
        });
        assert_eq!(to_hex(of_value(&manifest)), "3cb62482ba70b09c06bf139d96fd97fd");
    }
}
