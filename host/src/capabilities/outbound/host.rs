//! Where the plugin meets the network: wasmtime-wasi's own `wasi:sockets`
//! and `wasi:io/poll`, with the host's checks put in front of the calls
//! that open sockets, look names up and wait on a connect.
//!
//! The state is the connection's ([`OutboundCtx`]); a store reaches it
//! through [`OutboundView`], beside wasmtime-wasi's socket context.

use std::net::IpAddr;
use std::sync::Arc;

use wasmtime::component::{Linker, Resource, ResourceType, WasmList};
use wasmtime::{Result, bail};
use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress,
};
use wasmtime_wasi::p2::bindings::sockets::{tcp, tcp_create_socket};
use wasmtime_wasi::p2::{DynPollable, Network, SocketError, TcpSocket};
use wasmtime_wasi::sockets::WasiSocketsCtxView;
use wasmtime_wasi_io::bindings::wasi::io::poll;

use super::{ConnOutbound, Connects};

/// One connection's outbound state: what it may reach and hold, and the
/// deadlines of its connects.
pub struct OutboundCtx {
    /// Shared with the socket address check that wasmtime-wasi calls.
    pub grant: Arc<ConnOutbound>,
    pub connects: Connects,
}

/// What a call on the network works on: the connection's outbound state,
/// and wasmtime-wasi's sockets with the resource table.
pub struct OutboundCtxView<'a> {
    pub ctx: &'a mut OutboundCtx,
    pub sockets: WasiSocketsCtxView<'a>,
}

/// Implemented once by the store's data, to reach the view.
pub trait OutboundView: Send + 'static {
    fn outbound(&mut self) -> OutboundCtxView<'_>;
}

/// Puts the host's checks in front of wasmtime-wasi's sockets and waits,
/// which `linker` must hold already ([`ConnOutbound`] decides): creating a
/// socket counts against the limits, a lookup needs a rule that names the
/// name, and bind and listen are refused outright, since a plugin serves
/// the connection the host accepted and accepts none of its own. Connects
/// are checked by wasmtime-wasi itself, through the store's socket address
/// check; the host only gives them a deadline ([`Connects`]). A
/// `wasi:io/poll` call may wait on at most `max_poll_list` pollables: as
/// many as a plugin may hold, since a longer list only repeats them and
/// makes the host copy and walk it in one go.
pub fn add_to_linker<T: OutboundView>(linker: &mut Linker<T>, max_poll_list: usize) -> Result<()> {
    bound_poll(linker, max_poll_list)?;
    bound_pollable(linker)?;
    guard_socket_creation(linker)?;
    guard_tcp(linker)?;
    guard_lookups(linker)
}

/// Replaces wasmtime-wasi's waits with ones that refuse (trap on) a list
/// longer than `max_poll_list` before reading it from the plugin's
/// memory, and that end at the deadline of a connecting socket
/// ([`Connects`]): the plugin then sees that socket's pollable ready,
/// and `finish-connect` tells it the connect timed out.
fn bound_poll<T: OutboundView>(linker: &mut Linker<T>, max_poll_list: usize) -> Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap_async(
        "poll",
        move |mut store, (list,): (WasmList<Resource<DynPollable>>,)| {
            Box::new(async move {
                if list.len() > max_poll_list {
                    bail!(
                        "poll was given {} pollables, more than the {max_poll_list} allowed",
                        list.len()
                    );
                }
                let pollables = list.iter(&mut store)?.collect::<Result<Vec<_>>>()?;
                let state = store.data_mut().outbound();
                let reps: Vec<u32> = pollables.iter().map(Resource::rep).collect();
                let Some(deadline) = state.ctx.connects.earliest(&reps) else {
                    return Ok((poll::Host::poll(&mut *state.sockets.table, pollables).await?,));
                };
                let waited = tokio::time::timeout_at(
                    deadline,
                    poll::Host::poll(&mut *state.sockets.table, pollables),
                )
                .await;
                match waited {
                    Ok(ready) => Ok((ready?,)),
                    Err(_) => {
                        let due = (0..)
                            .zip(&reps)
                            .filter(|(_, rep)| {
                                state
                                    .ctx
                                    .connects
                                    .deadline(**rep)
                                    .is_some_and(|due| due <= deadline)
                            })
                            .map(|(index, _)| index)
                            .collect();
                        Ok((due,))
                    }
                }
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A pollable's own waits (`block`, `ready`) end at the deadline of the
/// connect they wait on, as `poll` does; a dropped pollable is forgotten.
fn bound_pollable<T: OutboundView>(linker: &mut Linker<T>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap_async(
        "[method]pollable.block",
        |mut store, (pollable,): (Resource<DynPollable>,)| {
            Box::new(async move {
                let state = store.data_mut().outbound();
                let deadline = state.ctx.connects.deadline(pollable.rep());
                let block = poll::HostPollable::block(&mut *state.sockets.table, pollable);
                match deadline {
                    None => block.await?,
                    Some(deadline) => tokio::time::timeout_at(deadline, block)
                        .await
                        .unwrap_or(Ok(()))?,
                }
                Ok(())
            })
        },
    )?;
    poll.func_wrap_async(
        "[method]pollable.ready",
        |mut store, (pollable,): (Resource<DynPollable>,)| {
            Box::new(async move {
                let state = store.data_mut().outbound();
                let due = state
                    .ctx
                    .connects
                    .deadline(pollable.rep())
                    .is_some_and(|deadline| deadline <= tokio::time::Instant::now());
                let ready =
                    due || poll::HostPollable::ready(&mut *state.sockets.table, pollable).await?;
                Ok((ready,))
            })
        },
    )?;
    poll.resource(
        "pollable",
        ResourceType::host::<DynPollable>(),
        |mut store, rep| {
            let state = store.data_mut().outbound();
            state.ctx.connects.pollable_dropped(rep);
            poll::HostPollable::drop(&mut *state.sockets.table, Resource::new_own(rep))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Creating a socket counts against the connection's and the service's
/// limits.
fn guard_socket_creation<T: OutboundView>(linker: &mut Linker<T>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.instance(TCP_CREATE_SOCKET_INTERFACE)?.func_wrap(
        "create-tcp-socket",
        |mut store, (family,): (IpAddressFamily,)| {
            let mut state = store.data_mut().outbound();
            if !state.ctx.grant.open_socket() {
                let code = match state.ctx.grant.granted() {
                    Some(_) => ErrorCode::NewSocketLimit,
                    None => ErrorCode::AccessDenied,
                };
                return Ok((Err(code),));
            }
            let created = tcp_create_socket::Host::create_tcp_socket(&mut state.sockets, family);
            Ok((error_code(created)?,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Bind and listen are refused; a connect gets a deadline, kept with its
/// socket and pollables until they are dropped.
fn guard_tcp<T: OutboundView>(linker: &mut Linker<T>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut tcp = linker.instance(TCP_INTERFACE)?;
    tcp.func_wrap(
        "[method]tcp-socket.start-bind",
        |mut store, _: (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            store.data_mut().outbound().ctx.grant.refuse("bind");
            Ok((Err::<(), _>(ErrorCode::AccessDenied),))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.start-listen",
        |mut store, _: (Resource<TcpSocket>,)| {
            store.data_mut().outbound().ctx.grant.refuse("listen");
            Ok((Err::<(), _>(ErrorCode::AccessDenied),))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.start-connect",
        |mut store, (socket, network, address): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            let mut state = store.data_mut().outbound();
            let rep = socket.rep();
            let started = tcp::HostTcpSocket::start_connect(&mut state.sockets, socket, network, address);
            let started = error_code(started)?;
            if started.is_ok() {
                state.ctx.connects.started(rep);
            }
            Ok((started,))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.finish-connect",
        |mut store, (socket,): (Resource<TcpSocket>,)| {
            let mut state = store.data_mut().outbound();
            let rep = socket.rep();
            if state.ctx.connects.timeout_reported(rep) {
                return Ok((Err(ErrorCode::Timeout),));
            }
            let finished = error_code(tcp::HostTcpSocket::finish_connect(
                &mut state.sockets,
                socket,
            ))?;
            match finished {
                Err(ErrorCode::WouldBlock) if state.ctx.connects.timed_out(rep) => {
                    state.ctx.connects.report_timeout(rep);
                    state.ctx.grant.connect_timed_out();
                    return Ok((Err(ErrorCode::Timeout),));
                }
                Err(ErrorCode::WouldBlock) => {}
                _ => state.ctx.connects.ended(rep),
            }
            Ok((finished,))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.subscribe",
        |mut store, (socket,): (Resource<TcpSocket>,)| {
            let mut state = store.data_mut().outbound();
            let rep = socket.rep();
            let pollable = tcp::HostTcpSocket::subscribe(&mut state.sockets, socket)?;
            state.ctx.connects.subscribed(rep, pollable.rep());
            Ok((pollable,))
        },
    )?;
    tcp.resource(
        "tcp-socket",
        ResourceType::host::<TcpSocket>(),
        |mut store, rep| {
            let mut state = store.data_mut().outbound();
            state.ctx.connects.dropped(rep);
            tcp::HostTcpSocket::drop(&mut state.sockets, Resource::new_own(rep))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A lookup needs a rule that names the name; what it resolves to may be
/// reached on that rule's ports.
fn guard_lookups<T: OutboundView>(linker: &mut Linker<T>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut lookup = linker.instance(NAME_LOOKUP_INTERFACE)?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store, (network, name): (Resource<Network>, String)| {
            let mut state = store.data_mut().outbound();
            let outbound = state.ctx.grant.clone();
            if !outbound.lookup(&name) {
                return Ok((Err(ErrorCode::AccessDenied),));
            }
            let stream =
                ip_name_lookup::Host::resolve_addresses(&mut state.sockets, network, name.clone());
            let stream = error_code(stream)?;
            if let Ok(stream) = &stream {
                outbound.lookup_started(stream.rep(), &name);
            }
            Ok((stream,))
        },
    )?;
    lookup.func_wrap(
        "[method]resolve-address-stream.resolve-next-address",
        |mut store, (stream,): (Resource<ResolveAddressStream>,)| {
            let mut state = store.data_mut().outbound();
            let outbound = state.ctx.grant.clone();
            let rep = stream.rep();
            let next = ip_name_lookup::HostResolveAddressStream::resolve_next_address(
                &mut state.sockets,
                stream,
            );
            let next = error_code(next)?;
            if let Ok(Some(address)) = &next {
                outbound.resolved(rep, ip_addr(address));
            }
            Ok((next,))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// A `wasi:sockets` result as the plugin sees it; a trap stays a trap.
fn error_code<T>(result: Result<T, SocketError>) -> Result<Result<T, ErrorCode>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error) => Ok(Err(error.downcast()?)),
    }
}

fn ip_addr(address: &IpAddress) -> IpAddr {
    match *address {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

/// The `wasi:sockets` interfaces the host implements, as wasmtime-wasi
/// names them; plugins importing an earlier 0.2 version link to them too.
const TCP_CREATE_SOCKET_INTERFACE: &str = "wasi:sockets/tcp-create-socket@0.2.12";
const TCP_INTERFACE: &str = "wasi:sockets/tcp@0.2.12";
const NAME_LOOKUP_INTERFACE: &str = "wasi:sockets/ip-name-lookup@0.2.12";

/// The `wasi:io/poll` version the host implements; plugins importing an
/// earlier 0.2 version are linked to it too.
const POLL_INTERFACE: &str = "wasi:io/poll@0.2.12";
