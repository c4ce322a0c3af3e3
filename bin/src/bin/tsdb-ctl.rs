//! `tsdb-ctl`: the command-line tool. Wiring only.
fn main() {}
