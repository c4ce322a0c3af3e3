//! One walk over a typed object that feeds both the hash ([`HashSink`]) and the drift check ([`DiffSink`]), so
//! that the common resync (intent unchanged, nothing drifted) traverses each object once. Pure: no I/O.

use super::diff::DiffSink;
use super::events::{Scalar, Sink, Stop};
use super::hash::HashSink;

/// Hashes the walked object and, when given an observed copy, checks it for drift at the same time.
///
/// The drift check stops at the first difference and the hash goes on to the end: whether that difference is a
/// drift or a changed intent depends on the hash. Either part may stop the walk with [`Stop::Unsupported`].
pub(crate) struct HashAndDiff<'a> {
    hash: HashSink<'a>,
    /// `None` when there is nothing to compare with, or once a difference was found.
    diff: Option<DiffSink<'a>>,
    drifted: bool,
}

impl<'a> HashAndDiff<'a> {
    pub(crate) fn new(hash: HashSink<'a>, diff: Option<DiffSink<'a>>) -> Self {
        Self { hash, diff, drifted: false }
    }

    /// The hash (`None` if the root value did not end) and whether the drift check found a difference.
    pub(crate) fn finish(self) -> (Option<u128>, bool) {
        (self.hash.finish(), self.drifted)
    }

    fn diff(&mut self, event: impl FnOnce(&mut DiffSink<'a>) -> Result<(), Stop>) -> Result<(), Stop> {
        let Some(diff) = &mut self.diff else { return Ok(()) };
        match event(diff) {
            Ok(()) => Ok(()),
            Err(Stop::Done) => {
                self.diff = None;
                self.drifted = true;
                Ok(())
            }
            Err(Stop::Unsupported) => Err(Stop::Unsupported),
        }
    }
}

impl Sink for HashAndDiff<'_> {
    fn scalar(&mut self, value: Scalar<'_>) -> Result<(), Stop> {
        self.diff(|d| d.scalar(value))?;
        self.hash.scalar(value)
    }

    fn begin_seq(&mut self, len: Option<usize>) -> Result<(), Stop> {
        self.diff(|d| d.begin_seq(len))?;
        self.hash.begin_seq(len)
    }

    fn begin_map(&mut self) -> Result<(), Stop> {
        self.diff(DiffSink::begin_map)?;
        self.hash.begin_map()
    }

    fn key(&mut self, key: &str) -> Result<(), Stop> {
        self.diff(|d| d.key(key))?;
        self.hash.key(key)
    }

    fn end(&mut self) -> Result<(), Stop> {
        self.diff(DiffSink::end)?;
        self.hash.end()
    }
}
