//! A serde [`Serializer`] that turns any `Serialize` value into the events of the JSON value
//! `serde_json::to_value` would build (scalars, begin and end of arrays and objects, object keys), without
//! building it. The plan hashes and compares typed objects through it, so that an unchanged child costs no JSON
//! tree. Pure: no I/O.
//!
//! The events follow `serde_json::to_value` exactly: `None` and unit are `null`, enum variants are objects
//! `{variant: value}` (unit variants are strings), bytes are arrays of numbers, non-finite floats are `null`,
//! object keys are strings (integer and boolean keys are written out; a walk with any other key stops with
//! [`Stop::Unsupported`]). Object entries come in the order the type serializes them, not sorted: consumers must
//! not depend on the order of keys.

use serde::ser::{self, Serialize, Serializer};
use serde_json::Value;

/// A scalar: a string, or a `Value` without heap data (null, bool, number).
#[derive(Clone, Copy)]
pub(crate) enum Scalar<'a> {
    /// A string.
    Str(&'a str),
    /// `null`, a boolean or a number.
    Other(&'a Value),
}

/// Why a walk stopped early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The consumer has its answer (a difference was found).
    Done,
    /// The value cannot be walked like `serde_json::to_value` would convert it (for example a 128-bit number out
    /// of range, a key that is not a string, or a `Serialize` error); the caller falls back to the JSON value.
    Unsupported,
}

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stop::Done => "walk stopped",
            Stop::Unsupported => "value cannot be walked as JSON",
        })
    }
}

impl std::error::Error for Stop {}

impl ser::Error for Stop {
    fn custom<T: std::fmt::Display>(_msg: T) -> Self {
        Stop::Unsupported
    }
}

/// What consumes the events. Every value is either one `scalar`, or `begin_seq` ... `end`, or `begin_map`
/// (`key` value)* `end`.
pub(crate) trait Sink {
    /// A scalar value.
    fn scalar(&mut self, value: Scalar<'_>) -> Result<(), Stop>;
    /// An array starts; `len` is its length when the type knows it.
    fn begin_seq(&mut self, len: Option<usize>) -> Result<(), Stop>;
    /// An object starts.
    fn begin_map(&mut self) -> Result<(), Stop>;
    /// The key of the next object entry; its value follows.
    fn key(&mut self, key: &str) -> Result<(), Stop>;
    /// The innermost array or object ends.
    fn end(&mut self) -> Result<(), Stop>;
}

/// Walks `value` into `sink`.
pub(crate) fn walk<T: Serialize + ?Sized, S: Sink>(value: &T, sink: &mut S) -> Result<(), Stop> {
    value.serialize(Events(sink))
}

/// The serializer: forwards to the sink. Compound serializers are the same type.
pub(crate) struct Events<'s, S>(&'s mut S);

impl<S: Sink> Events<'_, S> {
    fn other(self, value: &Value) -> Result<(), Stop> {
        self.0.scalar(Scalar::Other(value))
    }

    /// `{variant: ` — the caller writes the value and the closing `end`.
    fn open_variant(&mut self, variant: &str) -> Result<(), Stop> {
        self.0.begin_map()?;
        self.0.key(variant)
    }
}

/// Scalars without heap data, as `serde_json::Value::from` converts them (non-finite floats become `null`).
macro_rules! scalars {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method(self, v: $ty) -> Result<(), Stop> {
            self.other(&Value::from(v))
        })*
    };
}

impl<S: Sink> Serializer for Events<'_, S> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    scalars!(
        serialize_bool: bool,
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_f32: f32,
        serialize_f64: f64
    );
    fn serialize_i128(self, v: i128) -> Result<(), Stop> {
        match (u64::try_from(v), i64::try_from(v)) {
            (Ok(u), _) => self.other(&Value::from(u)),
            (_, Ok(i)) => self.other(&Value::from(i)),
            _ => Err(Stop::Unsupported),
        }
    }
    fn serialize_u128(self, v: u128) -> Result<(), Stop> {
        u64::try_from(v).map_err(|_| Stop::Unsupported).and_then(|u| self.other(&Value::from(u)))
    }
    fn serialize_char(self, v: char) -> Result<(), Stop> {
        self.0.scalar(Scalar::Str(v.encode_utf8(&mut [0; 4])))
    }
    fn serialize_str(self, v: &str) -> Result<(), Stop> {
        self.0.scalar(Scalar::Str(v))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), Stop> {
        self.0.begin_seq(Some(v.len()))?;
        for b in v {
            self.0.scalar(Scalar::Other(&Value::from(*b)))?;
        }
        self.0.end()
    }
    fn serialize_none(self) -> Result<(), Stop> {
        self.other(&Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Stop> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), Stop> {
        self.other(&Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Stop> {
        self.other(&Value::Null)
    }
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<(), Stop> {
        self.0.scalar(Scalar::Str(variant))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<(), Stop> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), Stop> {
        self.open_variant(variant)?;
        value.serialize(Events(&mut *self.0))?;
        self.0.end()
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, Stop> {
        self.0.begin_seq(len)?;
        Ok(self)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self, Stop> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Self, Stop> {
        self.serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self, Stop> {
        self.open_variant(variant)?;
        self.serialize_seq(Some(len))
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self, Stop> {
        self.0.begin_map()?;
        Ok(self)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self, Stop> {
        self.serialize_map(None)
    }
    fn serialize_struct_variant(
        mut self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Self, Stop> {
        self.open_variant(variant)?;
        self.serialize_map(None)
    }
}

/// The array-like compound serializers: each item is a value; `end` closes `$closing` containers (a tuple
/// variant is an array inside its `{variant: ...}` object).
macro_rules! array_like {
    ($trait:ident, $method:ident, $closing:literal) => {
        impl<S: Sink> ser::$trait for Events<'_, S> {
            type Ok = ();
            type Error = Stop;
            fn $method<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
                value.serialize(Events(&mut *self.0))
            }
            fn end(self) -> Result<(), Stop> {
                for _ in 0..$closing {
                    self.0.end()?;
                }
                Ok(())
            }
        }
    };
}

array_like!(SerializeSeq, serialize_element, 1);
array_like!(SerializeTuple, serialize_element, 1);
array_like!(SerializeTupleStruct, serialize_field, 1);
array_like!(SerializeTupleVariant, serialize_field, 2);

impl<S: Sink> ser::SerializeMap for Events<'_, S> {
    type Ok = ();
    type Error = Stop;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Stop> {
        key.serialize(KeyEvents(&mut *self.0))
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Stop> {
        value.serialize(Events(&mut *self.0))
    }
    fn end(self) -> Result<(), Stop> {
        self.0.end()
    }
}

/// The struct-like compound serializers: fields are object entries; `end` closes `$closing` containers (a
/// struct variant is an object inside its `{variant: ...}` object).
macro_rules! struct_like {
    ($trait:ident, $closing:literal) => {
        impl<S: Sink> ser::$trait for Events<'_, S> {
            type Ok = ();
            type Error = Stop;
            fn serialize_field<T: Serialize + ?Sized>(&mut self, key: &'static str, value: &T) -> Result<(), Stop> {
                self.0.key(key)?;
                value.serialize(Events(&mut *self.0))
            }
            fn end(self) -> Result<(), Stop> {
                for _ in 0..$closing {
                    self.0.end()?;
                }
                Ok(())
            }
        }
    };
}

struct_like!(SerializeStruct, 1);
struct_like!(SerializeStructVariant, 2);

/// The serializer of an object key: passes a string key (labels, annotations, resource maps) to the sink without
/// copying it; integers and booleans are written out as `serde_json` writes them. Any other key (a float, bytes,
/// an option, a compound) stops the walk with [`Stop::Unsupported`], so the caller uses the JSON value instead.
struct KeyEvents<'s, S>(&'s mut S);

/// Integer keys, written out in decimal like `serde_json` does.
macro_rules! integer_keys {
    ($($method:ident: $ty:ty),*) => {
        $(fn $method(self, v: $ty) -> Result<(), Stop> {
            self.0.key(&v.to_string())
        })*
    };
}

/// Key types that `serde_json` rejects or that are not worth writing out here.
macro_rules! unsupported_keys {
    ($($method:ident$(: $ty:ty)?),*) => {
        $(fn $method(self $(, _v: $ty)?) -> Result<(), Stop> {
            Err(Stop::Unsupported)
        })*
    };
}

impl<S: Sink> Serializer for KeyEvents<'_, S> {
    type Ok = ();
    type Error = Stop;
    type SerializeSeq = ser::Impossible<(), Stop>;
    type SerializeTuple = ser::Impossible<(), Stop>;
    type SerializeTupleStruct = ser::Impossible<(), Stop>;
    type SerializeTupleVariant = ser::Impossible<(), Stop>;
    type SerializeMap = ser::Impossible<(), Stop>;
    type SerializeStruct = ser::Impossible<(), Stop>;
    type SerializeStructVariant = ser::Impossible<(), Stop>;

    fn serialize_str(self, v: &str) -> Result<(), Stop> {
        self.0.key(v)
    }
    fn serialize_char(self, v: char) -> Result<(), Stop> {
        self.0.key(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_bool(self, v: bool) -> Result<(), Stop> {
        self.0.key(if v { "true" } else { "false" })
    }
    integer_keys!(
        serialize_i8: i8,
        serialize_i16: i16,
        serialize_i32: i32,
        serialize_i64: i64,
        serialize_i128: i128,
        serialize_u8: u8,
        serialize_u16: u16,
        serialize_u32: u32,
        serialize_u64: u64,
        serialize_u128: u128
    );
    unsupported_keys!(serialize_f32: f32, serialize_f64: f64, serialize_bytes: &[u8], serialize_none, serialize_unit);
    fn serialize_unit_variant(self, _name: &'static str, _index: u32, variant: &'static str) -> Result<(), Stop> {
        self.0.key(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _name: &'static str, value: &T) -> Result<(), Stop> {
        value.serialize(self)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<(), Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _value: &T) -> Result<(), Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _value: &T,
    ) -> Result<(), Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_seq(self, _len: Option<usize>) -> Result<Self::SerializeSeq, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_tuple(self, _len: usize) -> Result<Self::SerializeTuple, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_tuple_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeTupleStruct, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeTupleVariant, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_struct(self, _name: &'static str, _len: usize) -> Result<Self::SerializeStruct, Stop> {
        Err(Stop::Unsupported)
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStructVariant, Stop> {
        Err(Stop::Unsupported)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{Map, json};

    use super::*;

    /// Builds the JSON value back from the events.
    #[derive(Default)]
    struct Rebuild {
        stack: Vec<(Value, Option<String>)>,
        result: Option<Value>,
    }

    impl Rebuild {
        fn done(&mut self, value: Value) {
            match self.stack.last_mut() {
                Some((Value::Array(items), _)) => items.push(value),
                Some((Value::Object(map), key)) => {
                    map.insert(key.take().unwrap_or_default(), value);
                }
                Some(_) => unreachable!("only containers are stacked"),
                None => self.result = Some(value),
            }
        }
    }

    impl Sink for Rebuild {
        fn scalar(&mut self, value: Scalar<'_>) -> Result<(), Stop> {
            self.done(match value {
                Scalar::Str(s) => Value::from(s),
                Scalar::Other(v) => v.clone(),
            });
            Ok(())
        }
        fn begin_seq(&mut self, _len: Option<usize>) -> Result<(), Stop> {
            self.stack.push((Value::Array(Vec::new()), None));
            Ok(())
        }
        fn begin_map(&mut self) -> Result<(), Stop> {
            self.stack.push((Value::Object(Map::new()), None));
            Ok(())
        }
        fn key(&mut self, key: &str) -> Result<(), Stop> {
            self.stack.last_mut().ok_or(Stop::Unsupported)?.1 = Some(key.to_owned());
            Ok(())
        }
        fn end(&mut self) -> Result<(), Stop> {
            let (value, _) = self.stack.pop().ok_or(Stop::Unsupported)?;
            self.done(value);
            Ok(())
        }
    }

    fn rebuilt<T: Serialize>(value: &T) -> Result<Value, Stop> {
        let mut sink = Rebuild::default();
        walk(value, &mut sink)?;
        Ok(sink.result.unwrap_or_default())
    }

    #[test]
    fn map_keys_are_passed_on_as_serde_json_writes_them() {
        let strings = BTreeMap::from([("app.kubernetes.io/name", "prometheus"), ("", "empty")]);
        let integers = BTreeMap::from([(-3_i64, "a"), (7, "b")]);
        let unsigned = BTreeMap::from([(u128::from(u64::MAX) + 1, "big")]);
        let booleans = BTreeMap::from([(true, 1), (false, 0)]);
        let chars = BTreeMap::from([('x', 1)]);
        let value = json!({"strings": strings, "integers": integers, "unsigned": unsigned, "booleans": booleans,
            "chars": chars});
        assert_eq!(
            rebuilt(&(&strings, &integers, &unsigned, &booleans, &chars)),
            Ok(json!([value["strings"], value["integers"], value["unsigned"], value["booleans"], value["chars"]]))
        );
        assert_eq!(rebuilt(&booleans), Ok(serde_json::to_value(booleans).expect("serializes")));
    }

    #[test]
    fn other_map_keys_stop_the_walk() {
        assert_eq!(rebuilt(&BTreeMap::from([(Some("a"), 1)])), Err(Stop::Unsupported));
        assert_eq!(rebuilt(&BTreeMap::from([((1, 2), 1)])), Err(Stop::Unsupported));
        assert_eq!(rebuilt(&BTreeMap::from([(vec![1_u8], 1)])), Err(Stop::Unsupported));
    }
}
