//! Loading a plugin: read, compile and validate it once at start, and keep
//! it pre-instantiated so each connection only pays for instantiation.
//!
//! A plugin is one of two kinds, told apart by what it exports:
//! - a handler, exporting `run` from the `portico:plugin/handler` world: it
//!   borrows the connection's streams and reads its details;
//! - a WASI command, exporting `wasi:cli/run` (any program built for WASI
//!   0.2, such as a Rust or C `main`), served as inetd serves one: stdin
//!   reads the connection, stdout writes to it, and its arguments and
//!   environment come from the service's settings.
//!
//! Every way a plugin file can be wrong ends here, before the host listens,
//! as one error that names the file and the problem.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use std::net::IpAddr;
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, Resource, ResourceType, WasmList, WasmStr};
use wasmtime::error::Context;
use wasmtime::{AsContext, Store, StoreContextMut};
use wasmtime::{Engine, Result, bail, format_err};

use wasmtime_wasi::p2::bindings::sockets::ip_name_lookup::{self, ResolveAddressStream};
use wasmtime_wasi::p2::bindings::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress,
};
use wasmtime_wasi::p2::bindings::sockets::{tcp, tcp_create_socket};
use wasmtime_wasi::p2::bindings::{Command, CommandPre};
use wasmtime_wasi::p2::{DynPollable, Network, SocketError, TcpSocket};
use wasmtime_wasi::sockets::WasiSocketsView;
use wasmtime_wasi_config::{WasiConfig, WasiConfigVariables};
use wasmtime_wasi_io::bindings::wasi::io::poll;

use crate::capabilities::keyvalue::{
    KvError, MAX_BATCH, OpenBucket, check_key_size, check_value_size, too_many_keys,
};
use crate::sandbox::bindings::{Handler, HandlerPre};
use crate::sandbox::cache::{Cache, Key};
use crate::sandbox::{ConnState, MAX_RESOURCES};

/// A plugin compiled, checked against the `portico:plugin/handler` world
/// or `wasi:cli/command`, and linked against the host's imports, ready to
/// instantiate.
pub struct Plugin {
    pub(crate) entry: Entry,
    /// The settings from `--config`, shared by every instance.
    pub(crate) config: Arc<WasiConfigVariables>,
    /// A command's arguments: its file name, then the words of the `args`
    /// setting.
    pub(crate) arguments: Arc<[String]>,
    /// The settings, for a command's environment and for the versions of
    /// `wasi:config` the host answers itself.
    pub(crate) settings: Arc<BTreeMap<String, String>>,
    /// The SHA-256 of the plugin file, in hex.
    pub digest: String,
    /// Whether the compiled code came from the compile cache.
    pub from_cache: bool,
}

/// How a plugin is entered.
pub(crate) enum Entry {
    /// `run` from the `portico:plugin/handler` world.
    Handler(HandlerPre<ConnState>),
    /// `wasi:cli/run`: a WASI command, its stdio on the connection.
    Command(CommandPre<ConnState>),
}

/// A plugin instantiated for one connection.
pub(crate) enum Instance {
    Handler(Handler),
    Command(Command),
}

/// The name of the setting whose words are a command's arguments.
pub const ARGS_SETTING: &str = "args";

/// How a connection's linear memory gets the plugin's initial data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryInit {
    /// Copied from the data segments at every instantiation: for a small
    /// image, cheaper than mapping it, and the memory stays one mapping
    /// (two per live connection rather than four; see the server's
    /// capacity).
    Copy,
    /// Mapped copy-on-write from one image that every instance shares: a
    /// Python or JavaScript plugin starts with megabytes of data, which
    /// copying would cost every connection.
    Map,
}

/// Largest initial data a plugin's memory is given by copying.
const LARGEST_COPIED_DATA: u64 = 256 * 1024;

impl MemoryInit {
    /// Picks by the size of the plugin's data segments. A plugin that
    /// cannot be parsed gets [`MemoryInit::Map`]; loading it reports what
    /// is wrong.
    pub fn of(wasm: &[u8]) -> MemoryInit {
        match data_segment_bytes(wasm) {
            Ok(total) if total <= LARGEST_COPIED_DATA => MemoryInit::Copy,
            _ => MemoryInit::Map,
        }
    }
}

/// Bytes of data segments in `wasm`, nested modules included.
fn data_segment_bytes(wasm: &[u8]) -> wasmparser::Result<u64> {
    let mut total = 0;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::DataSection(segments) = payload? {
            for segment in segments {
                total += segment?.data.len() as u64;
            }
        }
    }
    Ok(total)
}

/// The first bytes of any WebAssembly binary.
const WASM_MAGIC: &[u8] = b"\0asm";
/// The version field that follows the magic in a core module; components
/// carry a different one.
const CORE_MODULE_VERSION: &[u8] = &[1, 0, 0, 0];

impl Plugin {
    /// Reads the plugin file at `path`.
    pub fn read(path: &Path) -> Result<Vec<u8>> {
        std::fs::read(path).with_context(|| format!("cannot read plugin {}", path.display()))
    }

    /// Loads the plugin `bytes`, read from `path`, with `config` as its
    /// settings; the compiled code comes from `cache` when it holds it, and
    /// goes there when not.
    pub fn load(
        engine: &Engine,
        path: &Path,
        bytes: &[u8],
        settings: &BTreeMap<String, String>,
        cache: Option<&Cache>,
    ) -> Result<Self> {
        let name = path.display();
        if !bytes.starts_with(WASM_MAGIC) {
            bail!("plugin {name} is not a WebAssembly file");
        }
        if bytes.get(4..8) == Some(CORE_MODULE_VERSION) {
            bail!(
                "plugin {name} is a core WebAssembly module, not a component: build Rust \
                 for the wasm32-wasip2 target; for a WASI preview 1 module (C, Go, ...) run \
                 `wasm-tools component new {name} --adapt ADAPTER -o plugin.wasm`, with \
                 ADAPTER wasi_snapshot_preview1.reactor.wasm for a handler or \
                 wasi_snapshot_preview1.command.wasm for a program with `main` (from the \
                 crate wasi-preview1-component-adapter-provider or wasmtime's releases)"
            );
        }
        // The SHA-256 is for operators only (logs, metrics); the cache is
        // keyed by a faster hash, so it is computed beside the loading.
        let (digest, loaded) = std::thread::scope(|scope| {
            let digest = scope.spawn(|| crate::sandbox::cache::digest(bytes));
            let loaded = match cache {
                Some(cache) => {
                    let key = Key::of(engine, bytes);
                    match cache.load(engine, &key) {
                        Some(component) => Ok((component, true)),
                        None => cache.compile(engine, bytes, &key).map(|c| (c, false)),
                    }
                }
                None => Component::new(engine, bytes).map(|c| (c, false)),
            };
            (digest.join(), loaded)
        });
        let digest = digest.map_err(|_| format_err!("hashing plugin {name} failed"))?;
        let (component, from_cache) =
            loaded.map_err(
                |error| match crate::sandbox::pool_hint(&format!("{error:#}")) {
                    Some(hint) => error.context(format!(
                        "plugin {name} does not fit this host's limits{hint}"
                    )),
                    None => error.context(format!(
                        "plugin {name} is not a valid WebAssembly component"
                    )),
                },
            )?;
        let kind = entry_kind(engine, &component).with_context(|| format!("plugin {name}"))?;

        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        bound_poll(&mut linker)?;
        guard_sockets(&mut linker)?;
        {
            use crate::sandbox::bindings::wasi::keyvalue::{atomics, batch, store};
            use wasmtime::component::HasSelf;
            store::add_to_linker::<_, HasSelf<ConnState>>(&mut linker, |state| state)?;
            atomics::add_to_linker::<_, HasSelf<ConnState>>(&mut linker, |state| state)?;
            batch::add_to_linker::<_, HasSelf<ConnState>>(&mut linker, |state| state)?;
            use crate::sandbox::bindings::portico::plugin::{connection, pubsub};
            pubsub::add_to_linker::<_, HasSelf<ConnState>>(&mut linker, |state| state)?;
            connection::add_to_linker::<_, HasSelf<ConnState>>(&mut linker, |state| state)?;
            crate::sandbox::bindings::v0_2::portico::plugin::pubsub::add_to_linker::<
                _,
                HasSelf<ConnState>,
            >(&mut linker, |state| state)?;
        }
        copy_values(&mut linker)?;
        wasmtime_wasi_config::add_to_linker(&mut linker, |state: &mut ConnState| {
            WasiConfig::from(&*state.config)
        })?;
        {
            use crate::sandbox::bindings::spin_config::wasi::config::store;
            use wasmtime::component::HasSelf;
            store::add_to_linker::<_, HasSelf<ConnState>>(&mut linker, |state| state)?;
        }
        let instance_pre = linker.instantiate_pre(&component).map_err(|error| {
            let hint = missing_import_hint(&format!("{error:#}"));
            error.context(format!(
                "plugin {name} imports something this host does not provide{hint}"
            ))
        })?;
        let entry = match kind {
            Kind::Handler => Entry::Handler(HandlerPre::new(instance_pre).with_context(|| {
                format!("plugin {name} does not match the portico:plugin/handler world")
            })?),
            Kind::Command => Entry::Command(CommandPre::new(instance_pre).with_context(|| {
                format!("plugin {name} does not match the wasi:cli/command world")
            })?),
        };
        let program = path
            .file_stem()
            .map_or("plugin".into(), |stem| stem.to_string_lossy().into_owned());
        let arguments = std::iter::once(program)
            .chain(
                settings
                    .get(ARGS_SETTING)
                    .into_iter()
                    .flat_map(|args| args.split_whitespace().map(str::to_string)),
            )
            .collect();
        Ok(Self {
            entry,
            config: Arc::new(settings.clone().into_iter().collect()),
            arguments,
            settings: Arc::new(settings.clone()),
            digest,
            from_cache,
        })
    }

    /// Whether the plugin is a WASI command, served on its stdio.
    pub fn is_command(&self) -> bool {
        matches!(self.entry, Entry::Command(_))
    }

    /// Instantiates the plugin in `store`.
    pub(crate) async fn instantiate(&self, store: &mut Store<ConnState>) -> Result<Instance> {
        Ok(match &self.entry {
            Entry::Handler(pre) => Instance::Handler(pre.instantiate_async(store).await?),
            Entry::Command(pre) => Instance::Command(pre.instantiate_async(store).await?),
        })
    }

    /// The engine the plugin was compiled for.
    pub fn engine(&self) -> &Engine {
        match &self.entry {
            Entry::Handler(pre) => pre.engine(),
            Entry::Command(pre) => pre.engine(),
        }
    }
}

/// Most pollables one `wasi:io/poll.poll` call may wait on. A plugin holds
/// at most [`MAX_RESOURCES`] distinct ones, so a longer list only repeats
/// them, and would make the host copy and walk it in one go.
const MAX_POLL_LIST: usize = MAX_RESOURCES;

/// Replaces wasmtime-wasi's waits with ones that refuse (trap on) a list
/// longer than [`MAX_POLL_LIST`] before reading it from the plugin's
/// memory, and that end at the deadline of a connecting socket
/// ([`crate::capabilities::connects`]): the plugin then sees that socket's pollable ready,
/// and `finish-connect` tells it the connect timed out.
fn bound_poll(linker: &mut Linker<ConnState>) -> Result<()> {
    linker.allow_shadowing(true);
    let mut poll = linker.instance(POLL_INTERFACE)?;
    poll.func_wrap_async(
        "poll",
        |mut store, (list,): (WasmList<Resource<DynPollable>>,)| {
            Box::new(async move {
                if list.len() > MAX_POLL_LIST {
                    bail!(
                        "poll was given {} pollables, more than the {MAX_POLL_LIST} allowed",
                        list.len()
                    );
                }
                let pollables = list.iter(&mut store)?.collect::<Result<Vec<_>>>()?;
                let state = store.data_mut();
                let reps: Vec<u32> = pollables.iter().map(Resource::rep).collect();
                let Some(deadline) = state.connects.earliest(&reps) else {
                    return Ok((poll::Host::poll(&mut state.table, pollables).await?,));
                };
                let waited = tokio::time::timeout_at(
                    deadline,
                    poll::Host::poll(&mut state.table, pollables),
                )
                .await;
                match waited {
                    Ok(ready) => Ok((ready?,)),
                    Err(_) => {
                        let due = (0..)
                            .zip(&reps)
                            .filter(|(_, rep)| {
                                state
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
    poll.func_wrap_async(
        "[method]pollable.block",
        |mut store, (pollable,): (Resource<DynPollable>,)| {
            Box::new(async move {
                let state = store.data_mut();
                let deadline = state.connects.deadline(pollable.rep());
                let block = poll::HostPollable::block(&mut state.table, pollable);
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
                let state = store.data_mut();
                let due = state
                    .connects
                    .deadline(pollable.rep())
                    .is_some_and(|deadline| deadline <= tokio::time::Instant::now());
                let ready = due || poll::HostPollable::ready(&mut state.table, pollable).await?;
                Ok((ready,))
            })
        },
    )?;
    poll.resource(
        "pollable",
        ResourceType::host::<DynPollable>(),
        |mut store, rep| {
            let state = store.data_mut();
            state.connects.pollable_dropped(rep);
            poll::HostPollable::drop(&mut state.table, Resource::new_own(rep))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Puts the host's checks in front of wasmtime-wasi's TCP sockets and name
/// lookups ([`crate::capabilities::outbound`] decides): creating a socket counts against
/// the limits, a lookup needs a rule that names the name, and bind and
/// listen are refused outright, since a plugin serves the connection the
/// host accepted and accepts none of its own. Connects are checked by
/// wasmtime-wasi itself, through the store's socket address check; the
/// host only gives them a deadline ([`crate::capabilities::connects`]).
fn guard_sockets(linker: &mut Linker<ConnState>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.instance(TCP_CREATE_SOCKET_INTERFACE)?.func_wrap(
        "create-tcp-socket",
        |mut store, (family,): (IpAddressFamily,)| {
            let state = store.data_mut();
            if !state.outbound.open_socket() {
                let code = match state.outbound.granted() {
                    Some(_) => ErrorCode::NewSocketLimit,
                    None => ErrorCode::AccessDenied,
                };
                return Ok((Err(code),));
            }
            let created = tcp_create_socket::Host::create_tcp_socket(&mut state.sockets(), family);
            Ok((error_code(created)?,))
        },
    )?;
    let mut tcp = linker.instance(TCP_INTERFACE)?;
    tcp.func_wrap(
        "[method]tcp-socket.start-bind",
        |store, _: (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            store.data().outbound.refuse("bind");
            Ok((Err::<(), _>(ErrorCode::AccessDenied),))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.start-listen",
        |store, _: (Resource<TcpSocket>,)| {
            store.data().outbound.refuse("listen");
            Ok((Err::<(), _>(ErrorCode::AccessDenied),))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.start-connect",
        |mut store, (socket, network, address): (Resource<TcpSocket>, Resource<Network>, IpSocketAddress)| {
            let state = store.data_mut();
            let rep = socket.rep();
            let started = tcp::HostTcpSocket::start_connect(&mut state.sockets(), socket, network, address);
            let started = error_code(started)?;
            if started.is_ok() {
                state.connects.started(rep);
            }
            Ok((started,))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.finish-connect",
        |mut store, (socket,): (Resource<TcpSocket>,)| {
            let state = store.data_mut();
            let rep = socket.rep();
            if state.connects.timeout_reported(rep) {
                return Ok((Err(ErrorCode::Timeout),));
            }
            let finished = error_code(tcp::HostTcpSocket::finish_connect(
                &mut state.sockets(),
                socket,
            ))?;
            match finished {
                Err(ErrorCode::WouldBlock) if state.connects.timed_out(rep) => {
                    state.connects.report_timeout(rep);
                    state.outbound.connect_timed_out();
                    return Ok((Err(ErrorCode::Timeout),));
                }
                Err(ErrorCode::WouldBlock) => {}
                _ => state.connects.ended(rep),
            }
            Ok((finished,))
        },
    )?;
    tcp.func_wrap(
        "[method]tcp-socket.subscribe",
        |mut store, (socket,): (Resource<TcpSocket>,)| {
            let state = store.data_mut();
            let rep = socket.rep();
            let pollable = tcp::HostTcpSocket::subscribe(&mut state.sockets(), socket)?;
            state.connects.subscribed(rep, pollable.rep());
            Ok((pollable,))
        },
    )?;
    tcp.resource(
        "tcp-socket",
        ResourceType::host::<TcpSocket>(),
        |mut store, rep| {
            let state = store.data_mut();
            state.connects.dropped(rep);
            tcp::HostTcpSocket::drop(&mut state.sockets(), Resource::new_own(rep))
        },
    )?;
    let mut lookup = linker.instance(NAME_LOOKUP_INTERFACE)?;
    lookup.func_wrap(
        "resolve-addresses",
        |mut store, (network, name): (Resource<Network>, String)| {
            let state = store.data_mut();
            let outbound = state.outbound.clone();
            if !outbound.lookup(&name) {
                return Ok((Err(ErrorCode::AccessDenied),));
            }
            let stream = ip_name_lookup::Host::resolve_addresses(
                &mut state.sockets(),
                network,
                name.clone(),
            );
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
            let state = store.data_mut();
            let outbound = state.outbound.clone();
            let rep = stream.rep();
            let next = ip_name_lookup::HostResolveAddressStream::resolve_next_address(
                &mut state.sockets(),
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

/// Replaces the key-value calls that take keys and values with ones that
/// check each one's size before copying it out of the plugin's memory, and
/// copy a value in one go. The generated bindings copy whole lists first,
/// and a list's entries may all point at the same large string in the
/// plugin's memory: a small call could make the host copy terabytes. (They
/// also lift a `list<u8>` element by element, which kept a worker thread
/// busy for milliseconds per MiB.)
fn copy_values(linker: &mut Linker<ConnState>) -> Result<()> {
    linker.allow_shadowing(true);
    linker.instance(KEYVALUE_STORE_INTERFACE)?.func_wrap_async(
        "[method]bucket.set",
        |mut store, (bucket, key, value): (Resource<OpenBucket>, WasmStr, WasmList<u8>)| {
            Box::new(async move {
                let key = match checked_key(&store, &key)? {
                    Ok(key) => key,
                    Err(error) => return Ok((store.data().answer(Err(error)),)),
                };
                if let Err(error) = check_value_size(value.len()) {
                    return Ok((store.data().answer(Err(error)),));
                }
                let value = value.as_le_slice(&store).to_vec();
                let bucket = store.data_mut().open_bucket(&bucket)?;
                let set = bucket.set(&key, value).await;
                Ok((store.data().answer(set),))
            })
        },
    )?;
    let mut batch = linker.instance(KEYVALUE_BATCH_INTERFACE)?;
    batch.func_wrap_async(
        "set-many",
        |mut store,
         (bucket, entries): (Resource<OpenBucket>, WasmList<(WasmStr, WasmList<u8>)>)| {
            Box::new(async move {
                if entries.len() > MAX_BATCH {
                    return Ok((store.data().answer(Err(too_many_keys())),));
                }
                let entries: Vec<(WasmStr, WasmList<u8>)> =
                    entries.iter(&mut store)?.collect::<Result<_>>()?;
                let mut keys = Vec::with_capacity(entries.len());
                for (key, value) in &entries {
                    let key = match checked_key(&store, key)? {
                        Ok(key) => key,
                        Err(error) => return Ok((store.data().answer(Err(error)),)),
                    };
                    if let Err(error) = check_value_size(value.len()) {
                        return Ok((store.data().answer(Err(error)),));
                    }
                    keys.push(key);
                }
                let bucket = store.data_mut().open_bucket(&bucket)?;
                for (key, (_, value)) in keys.into_iter().zip(entries) {
                    let value = value.as_le_slice(&store).to_vec();
                    if let Err(error) = bucket.set(&key, value).await {
                        return Ok((store.data().answer(Err(error)),));
                    }
                }
                Ok((Ok(()),))
            })
        },
    )?;
    batch.func_wrap_async(
        "get-many",
        |mut store, (bucket, keys): (Resource<OpenBucket>, WasmList<WasmStr>)| {
            Box::new(async move {
                let keys = match checked_keys(&mut store, keys)? {
                    Ok(keys) => keys,
                    Err(error) => return Ok((store.data().answer(Err(error)),)),
                };
                let bucket = store.data_mut().open_bucket(&bucket)?;
                let values = bucket.get_many(keys).await;
                Ok((store.data().answer(values),))
            })
        },
    )?;
    batch.func_wrap_async(
        "delete-many",
        |mut store, (bucket, keys): (Resource<OpenBucket>, WasmList<WasmStr>)| {
            Box::new(async move {
                let keys = match checked_keys(&mut store, keys)? {
                    Ok(keys) => keys,
                    Err(error) => return Ok((store.data().answer(Err(error)),)),
                };
                let bucket = store.data_mut().open_bucket(&bucket)?;
                for key in keys {
                    if let Err(error) = bucket.delete(&key).await {
                        return Ok((store.data().answer(Err(error)),));
                    }
                }
                Ok((Ok(()),))
            })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

/// The keys of a batch call, copied once the list's length and each key's
/// size are checked; a trap stays a trap.
fn checked_keys(
    store: &mut StoreContextMut<'_, ConnState>,
    keys: WasmList<WasmStr>,
) -> Result<std::result::Result<Vec<String>, KvError>> {
    if keys.len() > MAX_BATCH {
        return Ok(Err(too_many_keys()));
    }
    let keys: Vec<WasmStr> = keys.iter(&mut *store)?.collect::<Result<_>>()?;
    let mut checked = Vec::with_capacity(keys.len());
    for key in &keys {
        match checked_key(&*store, key)? {
            Ok(key) => checked.push(key),
            Err(error) => return Ok(Err(error)),
        }
    }
    Ok(Ok(checked))
}

/// A key, copied out of the plugin's memory if it is not too long. (The
/// text is checked in place, so the first key over the limit ends the
/// call before anything large is copied.)
fn checked_key(
    store: impl AsContext<Data = ConnState>,
    key: &WasmStr,
) -> Result<std::result::Result<String, KvError>> {
    let text = key.to_str(&store)?;
    Ok(check_key_size(text.len()).map(|()| text.into_owned()))
}

const KEYVALUE_STORE_INTERFACE: &str = "wasi:keyvalue/store@0.2.0-draft";
const KEYVALUE_BATCH_INTERFACE: &str = "wasi:keyvalue/batch@0.2.0-draft";

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

/// The interfaces the host provides, by package, with the versions it
/// links: what a plugin importing another version is told. Kept beside the
/// linker set-up above, which it describes.
const PROVIDED: &[(&str, &str)] = &[
    ("wasi:io", "0.2.0 to 0.2.12"),
    ("wasi:clocks", "0.2.0 to 0.2.12"),
    ("wasi:random", "0.2.0 to 0.2.12"),
    ("wasi:cli", "0.2.0 to 0.2.12"),
    (
        "wasi:filesystem",
        "0.2.0 to 0.2.12 (no directories are preopened)",
    ),
    ("wasi:sockets", "0.2.0 to 0.2.12 (outbound TCP as granted)"),
    ("wasi:keyvalue", "0.2.0-draft (store, atomics, batch)"),
    ("wasi:config", "0.2.0-rc.1 and 0.2.0-draft-2024-09-27"),
    ("portico:plugin", "0.3.0 (and 0.2.0's pubsub)"),
];

/// A hint at the fix for a failed link, from wasmtime's error text, which
/// names the missing import in backticks (`wasi:http/types@0.2.3`).
fn missing_import_hint(error: &str) -> String {
    let Some(import) = error.split('`').nth(1) else {
        return String::new();
    };
    let package = import.split('/').next().unwrap_or(import);
    let package = package.split('@').next().unwrap_or(package);
    if let Some((_, versions)) = PROVIDED.iter().find(|(name, _)| *name == package) {
        return format!(" (`{import}`: this host provides {package} {versions})");
    }
    let offered: Vec<_> = PROVIDED.iter().map(|(name, _)| *name).collect();
    let fix = match package {
        "wasi:http" => {
            ". It serves raw TCP, without wasi:http: build a componentize-js plugin \
             with `--disable http fetch-event`"
        }
        _ => "",
    };
    format!(" (`{import}`; it provides {}){fix}", offered.join(", "))
}

/// What a component exports to be entered by.
enum Kind {
    Handler,
    Command,
}

/// The export `wasi:cli/run` goes by, at any 0.2 version.
const CLI_RUN: &str = "wasi:cli/run@0.2.";

/// Tells a handler from a command by its exports, naming what it exports
/// instead if it is neither.
fn entry_kind(engine: &Engine, component: &Component) -> Result<Kind> {
    let component_type = component.component_type();
    let mut names = Vec::new();
    for (name, item) in component_type.exports(engine) {
        match (name, item.ty) {
            ("run", ComponentItem::ComponentFunc(_)) => return Ok(Kind::Handler),
            ("run", _) => bail!("its export `run` is not a function"),
            (name, ComponentItem::ComponentInstance(_)) if name.starts_with(CLI_RUN) => {
                return Ok(Kind::Command);
            }
            (name, _) => names.push(format!("`{name}`")),
        }
    }
    let found = match names.is_empty() {
        true => "nothing".to_string(),
        false => names.join(", "),
    };
    bail!(
        "it exports {found}, but a plugin exports either `run: func(info: connection-info, \
         input: borrow<input-stream>, output: borrow<output-stream>) -> result<_, string>` \
         (the portico:plugin/handler world of guest-sdk/wit; in Rust, portico-guest-sdk's \
         `export!`) or `wasi:cli/run@0.2.x` (a WASI command: a program with a `main`)"
    )
}

#[cfg(test)]
mod tests {
    use super::missing_import_hint;

    #[test]
    fn a_missing_import_is_answered_with_what_the_host_provides() {
        let http = "component imports instance `wasi:http/types@0.2.3`, but a matching \
                    implementation was not found in the linker";
        let hint = missing_import_hint(http);
        assert!(
            hint.contains("`wasi:http/types@0.2.3`; it provides wasi:io"),
            "{hint}"
        );
        assert!(hint.contains("--disable http fetch-event"), "{hint}");
        let keyvalue = "component imports instance `wasi:keyvalue/store@0.2.0-draft2`, but ...";
        assert_eq!(
            missing_import_hint(keyvalue),
            " (`wasi:keyvalue/store@0.2.0-draft2`: this host provides wasi:keyvalue \
             0.2.0-draft (store, atomics, batch))"
        );
        assert_eq!(missing_import_hint("no name in here"), "");
    }
}
