//! Key-value and messaging calls at the WIT boundary, with arguments a
//! hostile plugin chooses: key and value sizes, batch lengths, lists whose
//! entries all point at one large string, topics and payloads of any
//! bytes, pointers anywhere.
//!
//! Each input becomes a plugin (a core module in WAT, made a component for
//! the handler world as `wasm-tools component new` would) whose start-up
//! code makes the calls; the host's own start-up check instantiates it in a
//! real store, with a memory bucket and the in-process broker granted.
//!
//! Properties: no panic; the host's heap never grows past what the limits
//! allow (a bucket's bytes, one value, one batch of keys, one answer),
//! however large the copies the arguments ask for; a plugin that traps is
//! refused with one line free of control characters.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use portico_host::capabilities::keyvalue::{
    BackendSpec, Bucket, BucketSpec, MAX_ANSWER_BYTES, MAX_BATCH, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};
use portico_host::capabilities::messaging::{Backend, Broker, Grant};
use portico_host::config::defaults::default_limits;
use portico_host::ops::counters::Counters;
use portico_host::ops::log::error_line;
use portico_host::sandbox::plugin::Plugin;
use portico_host::sandbox::{EpochTicker, MemoryInit, Sandbox, engine};
use tokio_util::sync::CancellationToken;
use wasmtime::Engine;

/// The plugin's memory: room for a value one byte over the limit.
const PAGES: u32 = 20;
const MEMORY_BYTES: u32 = PAGES * 65536;
/// Where the names the service is granted are, after the input's bytes:
/// the bucket `b`, and the topic `t.x` (granted as `t.>`).
const BUCKET_AT: u32 = 64 * 1024 - 16;
const TOPIC_AT: u32 = BUCKET_AT + 8;
/// Where the lists the calls pass are laid out.
const LISTS_AT: u32 = 64 * 1024;
/// Where each call's answer record goes.
const ANSWER_AT: u32 = 1_199_936;
/// Where the lists and strings in the host's answers are allocated (by the
/// module's bump allocator), up to the end of memory.
const HEAP_AT: u32 = 1_200_000;
/// Most bytes the memory bucket holds.
const BUCKET_BYTES: u64 = 2 << 20;
/// What the host may hold at once beyond its limits: the store, the
/// instance, the broker's queues.
const SLACK: usize = 8 << 20;

#[derive(Arbitrary, Debug)]
struct Input {
    /// The start of the plugin's memory.
    memory: Vec<u8>,
    calls: Vec<Call>,
}

/// A string or list in the plugin's memory, as the canonical ABI passes
/// it: where it starts, and its length.
#[derive(Arbitrary, Clone, Copy, Debug)]
struct Span {
    at: u32,
    len: u32,
}

/// A name: the one granted, or any bytes in the plugin's memory.
#[derive(Arbitrary, Clone, Copy, Debug)]
enum Name {
    Granted,
    Any(Span),
}

/// A list the generator lays out: `entries`, then the last one repeated
/// `repeat` more times, up to one past the batch limit (a long list of one
/// large string costs the fuzzer nothing).
#[derive(Arbitrary, Debug)]
struct List {
    entries: Vec<(Span, Span)>,
    repeat: u16,
}

#[derive(Arbitrary, Debug)]
enum Call {
    Open(Name),
    Get(Span),
    Set(Span, Span),
    Delete(Span),
    Increment(Span, u64),
    GetMany(List),
    SetMany(List),
    DeleteMany(List),
    Subscribe(Name),
    Publish(Name, Span),
}

/// Counts the bytes the host holds on the heap, and the most it held.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Relaxed) + layout.size();
        PEAK.fetch_max(held, Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

struct World {
    runtime: tokio::runtime::Runtime,
    engine: Engine,
    _ticker: EpochTicker,
}

static WORLD: LazyLock<World> = LazyLock::new(|| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let limits = portico_host::config::Limits {
        max_connections: 2,
        ..default_limits()
    };
    let engine = engine(&limits, MemoryInit::Copy).expect("an engine");
    let ticker = EpochTicker::start().expect("an epoch ticker");
    ticker.add(&engine);
    World {
        runtime,
        engine,
        _ticker: ticker,
    }
});

/// The plugin contract, and its handler world.
static CONTRACT: LazyLock<(wit_parser::Resolve, wit_parser::WorldId)> = LazyLock::new(|| {
    let mut resolve = wit_parser::Resolve::default();
    let (package, _) = resolve
        .push_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../guest-sdk/wit"))
        .expect("the plugin contract parses");
    let world = resolve
        .select_world(&[package], Some("handler"))
        .expect("the handler world");
    (resolve, world)
});

fuzz_target!(|input: Input| {
    if input.calls.len() > 64 || input.memory.len() > BUCKET_AT as usize {
        return;
    }
    let Some(component) = component(&input) else {
        return;
    };
    let world = &*WORLD;
    let plugin = Plugin::load(
        &world.engine,
        Path::new("fuzzed.wasm"),
        &component,
        &BTreeMap::new(),
        None,
    )
    .unwrap_or_else(|error| panic!("the generated plugin loads: {error:#}"));
    world.runtime.block_on(async {
        let sandbox = sandbox(plugin).await;
        let before = HELD.load(Relaxed);
        PEAK.store(before, Relaxed);
        let checked = sandbox.check().await;
        let grown = PEAK.load(Relaxed).saturating_sub(before);
        let bound = BUCKET_BYTES as usize
            + 2 * MAX_VALUE_BYTES
            + MAX_BATCH * (MAX_KEY_BYTES + 64)
            + MAX_ANSWER_BYTES
            + SLACK;
        assert!(grown <= bound, "the host's heap grew by {grown} bytes");
        if let Err(error) = checked {
            let line = error_line(&anyhow::Error::from(error));
            assert!(!line.chars().any(char::is_control), "{line:?}");
        }
    });
});

/// A service's sandbox for `plugin`: the bucket `b` (in memory) and the
/// topics `t.>` granted.
async fn sandbox(plugin: Plugin) -> Sandbox {
    let spec = BucketSpec {
        name: "b".into(),
        backend: BackendSpec::Memory,
        max_keys: 1000,
        max_bytes: BUCKET_BYTES,
    };
    let bucket = Bucket::open(&spec).await.expect("a memory bucket");
    let broker = Broker::new(&Backend::Memory).await.expect("a broker");
    Sandbox {
        service: "fuzzed".into(),
        plugin,
        limits: default_limits(),
        counters: Arc::new(Counters::default()),
        stop: CancellationToken::new(),
        draining: CancellationToken::new(),
        outbound: None,
        buckets: Arc::new(HashMap::from([("b".to_string(), Arc::new(bucket))])),
        messaging: Some(Arc::new(Grant {
            broker,
            patterns: vec!["t.>".parse().expect("a pattern")],
        })),
    }
}

/// The plugin for `input`: its memory starts with the input's bytes, and
/// its start function makes the calls. `None` if its lists do not fit.
fn component(input: &Input) -> Option<Vec<u8>> {
    let mut lists = Vec::new();
    let mut body = String::new();
    for call in &input.calls {
        call_wat(call, &mut lists, &mut body);
    }
    if LISTS_AT as usize + lists.len() > ANSWER_AT as usize {
        return None;
    }
    let wat = format!(
        r#"(module
  (import "wasi:keyvalue/store@0.2.0-draft" "open" (func $open (param i32 i32 i32)))
  (import "wasi:keyvalue/store@0.2.0-draft" "[method]bucket.get" (func $get (param i32 i32 i32 i32)))
  (import "wasi:keyvalue/store@0.2.0-draft" "[method]bucket.set" (func $set (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:keyvalue/store@0.2.0-draft" "[method]bucket.delete" (func $delete (param i32 i32 i32 i32)))
  (import "wasi:keyvalue/atomics@0.2.0-draft" "increment" (func $increment (param i32 i32 i32 i64 i32)))
  (import "wasi:keyvalue/batch@0.2.0-draft" "get-many" (func $get-many (param i32 i32 i32 i32)))
  (import "wasi:keyvalue/batch@0.2.0-draft" "set-many" (func $set-many (param i32 i32 i32 i32)))
  (import "wasi:keyvalue/batch@0.2.0-draft" "delete-many" (func $delete-many (param i32 i32 i32 i32)))
  (import "portico:plugin/pubsub@0.4.0" "subscribe" (func $subscribe (param i32 i32 i32)))
  (import "portico:plugin/pubsub@0.4.0" "publish" (func $publish (param i32 i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]input-stream" (func $drop-input (param i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $drop-output (param i32)))
  (memory (export "memory") {PAGES})
  (global $heap (mut i32) (i32.const {HEAP_AT}))
  (global $bucket (mut i32) (i32.const 0))
  (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get 3)))
    (local.get $at))
  (func (export "run") (param i64 i32 i32 i32 i32 i32 i32) (result i32)
    (call $drop-input (local.get 5))
    (call $drop-output (local.get 6))
    (i32.const 0))
  (func $calls
{body}  )
  (start $calls)
  (data (i32.const 0) "{memory}")
  (data (i32.const {BUCKET_AT}) "b")
  (data (i32.const {TOPIC_AT}) "t.x")
  (data (i32.const {LISTS_AT}) "{lists}"))"#,
        memory = escaped(&input.memory),
        lists = escaped(&lists),
    );
    let mut module = wat::parse_str(&wat).expect("valid WAT");
    let (resolve, world) = &*CONTRACT;
    wit_component::embed_component_metadata(
        &mut module,
        resolve,
        *world,
        wit_component::StringEncoding::UTF8,
    )
    .expect("embed the world");
    let component = wit_component::ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .expect("a module wit-component accepts")
        .encode()
        .expect("a component");
    Some(component)
}

/// Appends to `body` the WAT of `call`, laying out its list (if it has
/// one) at the end of `lists`. Every call's answer goes to the heap; the
/// bucket a successful `open` gives is the one later calls use.
fn call_wat(call: &Call, lists: &mut Vec<u8>, body: &mut String) {
    let span = |span: &Span| {
        format!(
            "(i32.const {}) (i32.const {})",
            span.at % MEMORY_BYTES,
            span.len as i32
        )
    };
    let name = |name: &Name, granted: (u32, u32)| match name {
        Name::Granted => format!("(i32.const {}) (i32.const {})", granted.0, granted.1),
        Name::Any(any) => span(any),
    };
    let answer = format!("(i32.const {ANSWER_AT})");
    let bucket = "(global.get $bucket)";
    let mut list = |list: &List, pairs: bool| {
        let at = LISTS_AT + lists.len() as u32;
        let last = list.entries.last().copied();
        let repeated = last
            .into_iter()
            .cycle()
            .take(usize::from(list.repeat) % (MAX_BATCH + 2));
        let mut count = 0;
        for (key, value) in list.entries.iter().copied().chain(repeated) {
            lists.extend_from_slice(&(key.at % MEMORY_BYTES).to_le_bytes());
            lists.extend_from_slice(&key.len.to_le_bytes());
            if pairs {
                lists.extend_from_slice(&(value.at % MEMORY_BYTES).to_le_bytes());
                lists.extend_from_slice(&value.len.to_le_bytes());
            }
            count += 1;
        }
        format!("(i32.const {at}) (i32.const {count})")
    };
    let line = match call {
        Call::Open(bucket) => format!(
            "(call $open {} {answer}) (global.set $bucket (i32.load offset=4 {answer}))",
            name(bucket, (BUCKET_AT, 1))
        ),
        Call::Get(key) => format!("(call $get {bucket} {} {answer})", span(key)),
        Call::Set(key, value) => format!(
            "(call $set {bucket} {} {} {answer})",
            span(key),
            span(value)
        ),
        Call::Delete(key) => format!("(call $delete {bucket} {} {answer})", span(key)),
        Call::Increment(key, delta) => format!(
            "(call $increment {bucket} {} (i64.const {}) {answer})",
            span(key),
            *delta as i64
        ),
        Call::GetMany(keys) => format!("(call $get-many {bucket} {} {answer})", list(keys, false)),
        Call::SetMany(pairs) => format!("(call $set-many {bucket} {} {answer})", list(pairs, true)),
        Call::DeleteMany(keys) => {
            format!(
                "(call $delete-many {bucket} {} {answer})",
                list(keys, false)
            )
        }
        Call::Subscribe(topic) => {
            format!("(call $subscribe {} {answer})", name(topic, (TOPIC_AT, 3)))
        }
        Call::Publish(topic, payload) => format!(
            "(call $publish {} {} {answer})",
            name(topic, (TOPIC_AT, 3)),
            span(payload)
        ),
    };
    let _ = writeln!(body, "    {line}");
}

/// `bytes` as the text of a WAT data string.
fn escaped(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut text, byte| {
        let _ = write!(text, "\\{byte:02x}");
        text
    })
}
