//! The plugin's settings, given by the operator as `host --config KEY=VALUE`.
//!
//! Every instance of a plugin sees the same settings; they cannot change
//! while the host runs.

use crate::bindings::wasi::config::store;

/// The value of setting `key`, or `None` if the operator did not set it.
pub fn get(key: &str) -> crate::Result<Option<String>> {
    store::get(key).map_err(describe)
}

/// Every setting, as `(key, value)` pairs in no particular order.
pub fn get_all() -> crate::Result<Vec<(String, String)>> {
    store::get_all().map_err(describe)
}

fn describe(error: store::Error) -> crate::Error {
    match error {
        store::Error::Upstream(message) | store::Error::Io(message) => {
            format!("reading configuration: {message}").into()
        }
    }
}
