//! What a plugin may ask of the host beyond the streams of its connection.
//!
//! Each capability is built as wasmtime-wasi builds its own interfaces:
//! - its per-connection state (`KeyValueCtx`, `MessagingCtx`, ...), made
//!   from what the service is granted;
//! - a view, the borrow a call works on (the state and the resource table);
//! - a trait the store's data implements once to reach that view
//!   (`KeyValueView`, ...);
//! - its own bindings of its part of the contract, which the handler
//!   world's bindings reuse (`with:`), and an `add_to_linker`.
//!
//! No capability knows the sandbox, and only hibernation knows another
//! (messaging, whose subscriptions a hibernated connection keeps): the
//! sandbox's store is the one place that holds them all. What they share
//! is the connection's budget of logged denials ([`denials`]).
//!
//! - [`outbound`]: where a plugin may connect (`grants.outbound`), how many
//!   sockets it may hold, and how long a connect may take.
//! - [`keyvalue`]: buckets (`wasi:keyvalue`) in memory, in a file or in
//!   Redis, opened only by services granted them.
//! - [`messaging`]: messages between connections (`portico:plugin/pubsub`).
//! - [`connection`]: what TLS and a PROXY header established
//!   (`portico:plugin/connection`).
//! - [`hibernation`]: an idle connection giving its instance back
//!   (`portico:plugin/hibernation`).
//! - [`settings`]: the plugin's settings (`wasi:config/store`).

pub mod connection;
pub mod denials;
pub mod hibernation;
pub mod keyvalue;
pub mod messaging;
pub mod outbound;
pub mod settings;
