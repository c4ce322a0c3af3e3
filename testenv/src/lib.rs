//! Test environment for tsdb-operator.
