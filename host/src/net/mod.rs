//! The client's side of the wire, before and while a plugin serves it: the
//! socket and its streams, the PROXY protocol header, TLS termination.

pub mod proxy_protocol;
pub mod socket;
pub mod tls;
