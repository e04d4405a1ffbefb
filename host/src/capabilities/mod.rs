//! What a plugin may ask of the host beyond its own connection, each
//! capability with its own per-connection state.

pub mod connection;
pub mod denials;
pub mod keyvalue;
pub mod messaging;
pub mod outbound;
pub mod settings;
