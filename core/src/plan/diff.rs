//! The drift check of a typed object against the observed JSON object, straight from the typed object's events
//! (see [`events`](super::events)): the same answer as [`is_subset`](super::is_subset) of its JSON value, without
//! building that value. Pure: no I/O.

use serde_json::Value;

use super::events::{Scalar, Sink, Stop};
use super::{is_empty, is_subset, str_is_subset};

/// Compares the walked (desired) value with `observed` and stops at the first field that differs; the root
/// `apiVersion` is not compared (the server may serve another version of the same group).
///
/// Keeping the path costs more than the comparison itself, and a difference is rare: [`DiffSink::new`] only
/// says whether there is one (its path is `"?"`); [`DiffSink::with_path`] names it.
pub(crate) struct DiffSink<'a> {
    stack: Vec<Frame<'a>>,
    /// Whether `path` is kept.
    track_path: bool,
    /// Path of the current value, `spec.template.spec.containers[1].image`.
    path: String,
    /// What the value after a key is compared with.
    next: Target<'a>,
    /// The path of the first difference, once found.
    found: Option<String>,
}

#[derive(Clone, Copy)]
enum Target<'a> {
    /// Not compared.
    Ignored,
    /// The observed side has nothing here (missing or null): the desired value must be empty (see
    /// [`is_empty`]); a difference is reported at the first `at` bytes of the path.
    Missing { at: usize },
    /// Compared with this observed value.
    Present(&'a Value),
}

struct Frame<'a> {
    target: Target<'a>,
    /// The next item's index, for arrays.
    index: Option<usize>,
    /// Length of the path of this array or object.
    path_len: usize,
}

impl<'a> DiffSink<'a> {
    /// A comparison that does not keep the path.
    pub(crate) fn new(observed: &'a Value) -> Self {
        Self {
            stack: Vec::with_capacity(16),
            track_path: false,
            path: String::new(),
            next: Target::Present(observed),
            found: None,
        }
    }

    /// A comparison that names the field that differs.
    pub(crate) fn with_path(observed: &'a Value) -> Self {
        Self { track_path: true, path: String::with_capacity(64), ..Self::new(observed) }
    }

    /// The path of the first difference, if the walk found one.
    pub(crate) fn finish(self) -> Option<String> {
        self.found
    }

    fn differ(&mut self, path_len: usize) -> Result<Target<'a>, Stop> {
        self.path.truncate(path_len);
        self.found = Some(match (self.track_path, self.path.is_empty()) {
            (false, _) => "?".to_owned(),
            (true, true) => ".".to_owned(),
            (true, false) => self.path.clone(),
        });
        Err(Stop::Done)
    }

    /// What the value starting now is compared with; inside an array, moves the path to the next item.
    fn target(&mut self) -> Result<Target<'a>, Stop> {
        let Some(Frame { target, index: Some(index), path_len }) = self.stack.last_mut() else {
            return Ok(self.next);
        };
        let (target, i, path_len) = (*target, *index, *path_len);
        *index += 1;
        if self.track_path {
            use std::fmt::Write as _;
            self.path.truncate(path_len);
            let _ = write!(self.path, "[{i}]");
        }
        match target {
            Target::Ignored => Ok(Target::Ignored),
            Target::Missing { at } => self.differ(at),
            Target::Present(Value::Array(items)) => match items.get(i) {
                Some(item) => Ok(Target::Present(item)),
                None => self.differ(path_len),
            },
            Target::Present(_) => self.differ(path_len),
        }
    }

    /// The target of an array or object that starts now: `Missing` when the observed side is missing or null,
    /// a difference when it has another type.
    fn container_target(&mut self, target: Target<'a>, is_array: bool) -> Result<Target<'a>, Stop> {
        match target {
            Target::Present(Value::Null) => Ok(Target::Missing { at: self.path.len() }),
            Target::Present(Value::Array(_)) if is_array => Ok(target),
            Target::Present(Value::Object(_)) if !is_array => Ok(target),
            Target::Present(_) => self.differ(self.path.len()),
            Target::Ignored | Target::Missing { .. } => Ok(target),
        }
    }
}

/// `observed[key]`. Small objects (most of a manifest) are scanned comparing lengths first, which rejects most
/// keys without comparing their bytes; a map search compares the bytes of every key it passes.
fn lookup<'a>(observed: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    if observed.len() > 16 {
        return observed.get(key);
    }
    observed.iter().find_map(|(k, v)| (k.len() == key.len() && k.as_bytes() == key.as_bytes()).then_some(v))
}

impl Sink for DiffSink<'_> {
    fn scalar(&mut self, value: Scalar<'_>) -> Result<(), Stop> {
        let same = match (self.target()?, value) {
            (Target::Ignored, _) => true,
            (Target::Missing { at }, _) => {
                let empty = match value {
                    Scalar::Str(s) => s.is_empty(),
                    Scalar::Other(v) => is_empty(v),
                };
                if !empty {
                    self.differ(at)?;
                }
                true
            }
            (Target::Present(observed), Scalar::Str(s)) => str_is_subset(s, observed),
            (Target::Present(observed), Scalar::Other(v)) => is_subset(v, observed),
        };
        if !same {
            self.differ(self.path.len())?;
        }
        Ok(())
    }

    fn begin_seq(&mut self, len: Option<usize>) -> Result<(), Stop> {
        let target = self.target()?;
        let target = self.container_target(target, true)?;
        match (target, len) {
            (Target::Missing { at }, Some(n)) if n > 0 => {
                self.differ(at)?;
            }
            (Target::Present(Value::Array(items)), Some(n)) if n != items.len() => {
                self.differ(self.path.len())?;
            }
            _ => {}
        }
        self.stack.push(Frame { target, index: Some(0), path_len: self.path.len() });
        Ok(())
    }

    fn begin_map(&mut self) -> Result<(), Stop> {
        let target = self.target()?;
        let target = self.container_target(target, false)?;
        self.stack.push(Frame { target, index: None, path_len: self.path.len() });
        Ok(())
    }

    fn key(&mut self, key: &str) -> Result<(), Stop> {
        let depth = self.stack.len();
        let Some(&Frame { target, index: None, path_len }) = self.stack.last() else {
            return Err(Stop::Unsupported);
        };
        if self.track_path {
            self.path.truncate(path_len);
            if !self.path.is_empty() {
                self.path.push('.');
            }
            self.path.push_str(key);
        }
        self.next = match target {
            Target::Present(Value::Object(_)) if depth == 1 && key == "apiVersion" => Target::Ignored,
            Target::Present(Value::Object(observed)) => {
                lookup(observed, key).map_or(Target::Missing { at: self.path.len() }, Target::Present)
            }
            Target::Ignored | Target::Present(_) => Target::Ignored,
            Target::Missing { at } => Target::Missing { at },
        };
        Ok(())
    }

    fn end(&mut self) -> Result<(), Stop> {
        match self.stack.pop() {
            Some(Frame { target: Target::Present(Value::Array(items)), index: Some(n), path_len })
                if n != items.len() =>
            {
                self.differ(path_len).map(|_| ())
            }
            Some(_) => Ok(()),
            None => Err(Stop::Unsupported),
        }
    }
}
