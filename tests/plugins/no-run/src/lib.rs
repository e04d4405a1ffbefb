//! A component that exports nothing: the host must refuse it at start.

/// Kept so the crate is not empty; not exported through any WIT world.
pub fn unused() {}
