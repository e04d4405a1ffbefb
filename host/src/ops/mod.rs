//! What operators see and steer: the admin endpoint, the metrics, the
//! counters, the log's line format, the signals, and plugin text made safe
//! for their logs. The ground floor: every other layer may use it, and it
//! uses none of them.

pub mod admin;
pub mod counters;
pub mod log;
pub mod metrics;
pub mod signals;
pub mod untrusted;
