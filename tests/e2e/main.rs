//! End-to-end tests: each starts the real `host` binary with a real plugin
//! built from this repository and talks to it over real TCP.
//!
//! Run them with `cargo xtask test`, which builds the plugins first.

// Shared with the load tests; each binary uses part of it.
#[allow(dead_code)]
mod util;

/// Plugins written in WAT, shared with the load tests.
#[allow(dead_code)]
#[path = "../load/wat.rs"]
mod wat;

/// WASI commands (a program with `main`, in Rust, C and Go) served on
/// their stdio, and Spin's `wasi:config`.
mod command;
/// The deployment files: Kubernetes manifests checked offline.
mod deploy;
/// Echo: byte-exact at every size, under concurrency, and on half-close
/// and reset.
mod echo;
/// Hibernation: an idle connection gives its instance and place back,
/// wakes on data, a timer, the client closing or a drain, into the version
/// in force, within its limits.
mod hibernation;
/// http-hello: a real HTTP client, keep-alive, and garbage.
mod http;
/// Misbehaving plugins close only their own connection.
mod isolation;
/// Key-value buckets: redis-kv with redis-cli and redis-benchmark, the file
/// and redis backends, grants and limits, and 0.1.0 plugins.
mod keyvalue;
/// Plugins in other languages than Rust: echo and greeter in Python,
/// JavaScript, C and Go.
mod languages;
/// Limits, admission control and graceful drain.
mod lifecycle;
/// Messages between connections: the chat plugin's rooms, the grant, and
/// two hosts on one NATS server.
mod messaging;
/// `host new`: a project in every language, built outside the repository
/// with its own build.sh, and served.
mod new;
/// Outbound TCP: the tcp-proxy in front of a real Redis, and the grant.
mod outbound;
/// The PROXY protocol: two hosts behind a real HAProxy, refused headers,
/// the header before TLS.
mod proxy;
/// The README's commands, and those of every project `host new` writes,
/// run as written.
mod readme;
/// Plugins pulled from a real OCI registry (docker-registry, pushed with
/// skopeo): by tag and by digest, from the cache with the registry down,
/// a tag that moves at reload; hostile registries refused in one line.
mod registry;
/// What a plugin is and is not granted: config, stdio, files, sockets.
mod sandbox;
/// Several services from a config file, the admin endpoint, reload, the
/// compile cache, JSON logs.
mod services;
/// Bad plugin files and bad flags: one error line, exit status 2.
mod startup;
/// Under systemd: socket activation with systemd-socket-activate, one
/// socket and two named ones, and readiness notification.
mod systemd;
/// TLS termination with curl, openssl and rustls clients: SNI, ALPN,
/// client certificates, reload, failed handshakes.
mod tls;
/// Upgrading the binary under load: listeners handed over, no client
/// refused or reset, the old process drained.
mod upgrade;
