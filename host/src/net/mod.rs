//! The client's side of the wire, before and while a plugin serves it: the
//! socket and its streams, the PROXY protocol header, TLS termination;
//! and the listening sockets the host inherits (from systemd, or from the
//! process it replaces in an upgrade) or hands over.

pub mod handover;
pub mod inherited;
pub mod proxy_protocol;
pub mod socket;
pub mod tls;
