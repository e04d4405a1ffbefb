use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;

use crate::outbound::{redis, redis_tool};
use crate::services::{Scratch, get, metric};
use crate::util::{Host, TIMEOUT, echoes, read_line};

fn cli(addr: SocketAddr, args: &[&str]) -> String {
    let output = redis_tool("redis-cli", addr, args);
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `plugins/redis-kv/portico.toml`, as shipped, with its plugin path made
/// absolute, its port left to the system and its bucket declared by
/// `bucket` (TOML keys) instead.
fn redis_kv_config(scratch: &Scratch, bucket: &str) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/redis-kv/portico.toml");
    let text = std::fs::read_to_string(shipped).unwrap();
    assert!(text.contains("127.0.0.1:6380") && text.contains("backend = \"memory\""));
    let text = text
        .replace(
            "../../target/wasm32-wasip2/release/redis_kv.wasm",
            "{redis-kv}",
        )
        .replace("127.0.0.1:6380", "127.0.0.1:0")
        .replace("backend = \"memory\"", bucket);
    scratch.config(&text)
}

/// redis-cli and redis-benchmark against the redis-kv plugin on its shipped
/// config (memory bucket): what one connection sets, the next reads; every
/// command answers as Redis would; the benchmark sees no error. Between
/// commands, the connections hibernate.
#[test]
fn redis_kv_serves_redis_clients() {
    let scratch = Scratch::new("redis-kv");
    let config = redis_kv_config(&scratch, "backend = \"memory\"");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}"),
    )
    .unwrap();
    let host = Host::start_config(&config, &[], 1, true);
    let kv = host.service("redis-kv");

    assert_eq!(cli(kv, &["PING"]), "PONG");
    assert_eq!(cli(kv, &["SET", "greeting", "hello"]), "OK");
    assert_eq!(cli(kv, &["GET", "greeting"]), "hello");
    assert_eq!(cli(kv, &["ECHO", "say"]), "say");
    assert_eq!(cli(kv, &["SET", "n", "41"]), "OK");
    assert_eq!(cli(kv, &["INCR", "n"]), "42");
    assert_eq!(
        cli(kv, &["INCR", "greeting"]),
        "ERR value is not an integer or out of range"
    );
    // redis-cli prints a missing value as an empty line (trimmed here).
    assert_eq!(cli(kv, &["MGET", "greeting", "n", "missing"]), "hello\n42");
    assert_eq!(cli(kv, &["EXISTS", "greeting", "missing"]), "1");
    assert_eq!(cli(kv, &["SET", "short", "lived", "EX", "1"]), "OK");
    assert_eq!(cli(kv, &["GET", "short"]), "lived");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(cli(kv, &["GET", "short"]), "");
    assert_eq!(cli(kv, &["DEL", "greeting", "n"]), "2");
    assert_eq!(cli(kv, &["GET", "greeting"]), "");
    assert!(cli(kv, &["FLUSHALL"]).starts_with("ERR unknown command"));
    // A value past the host's limit (too long for a command line).
    let mut conn = TcpStream::connect(kv).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    let huge = vec![b'x'; 2 << 20];
    write!(conn, "*3\r\n$3\r\nSET\r\n$4\r\nhuge\r\n${}\r\n", huge.len()).unwrap();
    conn.write_all(&huge).unwrap();
    conn.write_all(b"\r\n").unwrap();
    let reply = read_line(&mut conn);
    assert!(
        reply.starts_with("-ERR set: value of 2097152 bytes, more than the 1048576 allowed"),
        "{reply}"
    );
    drop(conn);

    let benchmark = redis_tool(
        "redis-benchmark",
        kv,
        &["-t", "ping,set,get,incr", "-n", "100000", "-c", "50", "-q"],
    );
    let report = String::from_utf8_lossy(&benchmark.stdout).replace('\r', "\n");
    let results: Vec<&str> = report
        .lines()
        .filter(|line| line.contains("requests per second"))
        .collect();
    println!("{}", results.join("\n"));
    assert_eq!(results.len(), 5, "one result per test:\n{report}");
    let errors = String::from_utf8_lossy(&benchmark.stderr);
    assert!(
        !report.to_lowercase().contains("error") && errors.is_empty(),
        "{report}{errors}"
    );
    // redis-benchmark's INCR counts one key up once per request.
    assert_eq!(cli(kv, &["GET", "counter:__rand_int__"]), "100000");
    let wakes = host.metric(r#"portico_wakes_total{service="redis-kv",reason="client-data"}"#);
    assert!(wakes > 1000.0, "{wakes} wakes");
}

/// With the file backend, what was set survives the host being killed with
/// SIGKILL and started again.
#[test]
fn a_file_bucket_survives_kill_9() {
    let scratch = Scratch::new("redis-kv-file");
    let config = redis_kv_config(&scratch, "backend = \"file\"\npath = \"state/cache.db\"");
    let host = Host::start_config(&config, &[], 1, false);
    assert_eq!(
        cli(
            host.service("redis-kv"),
            &["SET", "kept", "across restarts"]
        ),
        "OK"
    );
    assert_eq!(cli(host.service("redis-kv"), &["INCR", "visits"]), "1");
    drop(host); // SIGKILL

    let host = Host::start_config(&config, &[], 1, false);
    assert_eq!(
        cli(host.service("redis-kv"), &["GET", "kept"]),
        "across restarts"
    );
    assert_eq!(cli(host.service("redis-kv"), &["INCR", "visits"]), "2");
    assert!(scratch.0.join("state/cache.db").is_file());
}

/// A file bucket on a full disk: the writes that meet the full disk fail
/// with an error the client sees, what was written before stays, and once
/// there is room again the bucket takes writes again, without a restart
/// (redb refuses every transaction after a failed write until its file is
/// opened again; the soak's disk-full fault found that the host never
/// did). The disk is a 1 MiB tmpfs, mounted for the test (CI runs as
/// root).
#[test]
fn a_file_bucket_recovers_from_a_full_disk() {
    let scratch = Scratch::new("redis-kv-full-disk");
    let disk = scratch.0.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&disk)
        .status()
        .expect("run mount");
    assert!(mounted.success(), "mount a tmpfs (the tests run as root)");
    let _unmount = Unmount(disk.clone());
    let config = redis_kv_config(&scratch, "backend = \"file\"\npath = \"disk/cache.db\"");
    let host = Host::start_config(&config, &[], 1, false);
    let kv = host.service("redis-kv");
    assert_eq!(cli(kv, &["SET", "before", "the disk filled"]), "OK");

    let filler = disk.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 2 << 20]);
    // More than the disk has left, and more than redis-cli takes as an
    // argument: sent as RESP by hand.
    let mut client = TcpStream::connect(kv).unwrap();
    let big = 256 * 1024;
    write!(client, "*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${big}\r\n").unwrap();
    client.write_all(&vec![b'x'; big]).unwrap();
    client.write_all(b"\r\n").unwrap();
    let refused = read_line(&mut client);
    assert!(refused.starts_with("-ERR"), "{refused}");
    std::fs::remove_file(&filler).unwrap();

    assert_eq!(cli(kv, &["SET", "after", "room again"]), "OK");
    assert_eq!(cli(kv, &["GET", "before"]), "the disk filled");
    assert_eq!(cli(kv, &["GET", "after"]), "room again");
    drop(host);
    let host = Host::start_config(&config, &[], 1, false);
    assert_eq!(
        cli(host.service("redis-kv"), &["GET", "after"]),
        "room again"
    );
}

/// Unmounts a test's tmpfs when dropped.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// With the redis backend, two hosts see the same data, and it is in the
/// real Redis under the bucket's prefix.
#[test]
fn a_redis_bucket_is_shared_by_two_hosts() {
    let redis = redis();
    let scratch = Scratch::new("redis-kv-redis");
    let config = redis_kv_config(
        &scratch,
        &format!("backend = \"redis\"\nurl = \"redis://{}\"", redis.addr),
    );
    let first = Host::start_config(&config, &[], 1, false);
    let second = Host::start_config(&config, &[], 1, false);
    assert_eq!(
        cli(first.service("redis-kv"), &["SET", "shared", "by both"]),
        "OK"
    );
    assert_eq!(
        cli(second.service("redis-kv"), &["GET", "shared"]),
        "by both"
    );
    assert_eq!(cli(second.service("redis-kv"), &["INCR", "hits"]), "1");
    assert_eq!(cli(first.service("redis-kv"), &["INCR", "hits"]), "2");
    assert_eq!(cli(redis.addr, &["GET", "portico:cache:shared"]), "by both");
}

/// A Redis bucket's `max-keys` holds across hosts: keys already in Redis
/// count, each host's new keys count, an existing key may still change,
/// and a deleted key makes room.
#[test]
fn a_redis_bucket_is_bounded_across_hosts() {
    let redis = redis();
    assert_eq!(cli(redis.addr, &["SET", "portico:cache:old", "1"]), "OK");
    let scratch = Scratch::new("redis-kv-bounded");
    let config = redis_kv_config(
        &scratch,
        &format!(
            "backend = \"redis\"\nurl = \"redis://{}\"\nmax-keys = 3",
            redis.addr
        ),
    );
    let first = Host::start_config(&config, &[], 1, false);
    let second = Host::start_config(&config, &[], 1, false);
    let (first, second) = (first.service("redis-kv"), second.service("redis-kv"));
    assert_eq!(cli(first, &["SET", "a", "1"]), "OK");
    assert_eq!(cli(second, &["INCR", "b"]), "1");
    let full = cli(first, &["SET", "c", "1"]);
    assert!(full.contains("bucket full: 3 keys"), "{full}");
    let full = cli(second, &["INCR", "c"]);
    assert!(full.contains("bucket full: 3 keys"), "{full}");
    assert_eq!(cli(second, &["SET", "a", "changed"]), "OK");
    assert_eq!(cli(first, &["INCR", "b"]), "2");
    assert_eq!(cli(second, &["DEL", "old"]), "1");
    assert_eq!(cli(first, &["SET", "c", "1"]), "OK");
    assert_eq!(cli(redis.addr, &["EXISTS", "portico:cache:c"]), "1");
    assert_eq!(cli(redis.addr, &["GET", "portico:cache"]), "3");
}

/// A Redis bucket whose server dies: the plugin's calls fail with an
/// error it can answer (redis-kv replies `-ERR`), the host and its other
/// services go on, and once the server is back the bucket works again.
#[test]
fn a_redis_bucket_outlives_its_server_dying() {
    let mut redis = redis();
    let scratch = Scratch::new("redis-kv-dies");
    let config = scratch.config(&format!(
        r#"
        [services.redis-kv]
        plugin = "{{redis-kv}}"
        listen = ["127.0.0.1:0"]
        grants = {{ keyvalue = ["cache"] }}

        [services.echo]
        plugin = "{{echo}}"
        listen = ["127.0.0.1:0"]

        [keyvalue.cache]
        backend = "redis"
        url = "redis://{}"
        "#,
        redis.addr
    ));
    let host = Host::start_config(&config, &[], 2, false);
    let kv = host.service("redis-kv");
    assert_eq!(cli(kv, &["SET", "before", "1"]), "OK");

    redis.kill();
    let set = |key: &str| {
        let mut client = TcpStream::connect(kv).unwrap();
        client.set_read_timeout(Some(TIMEOUT)).unwrap();
        write!(
            client,
            "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$1\r\nx\r\n",
            key.len()
        )
        .unwrap();
        read_line(&mut client)
    };
    let answer = set("during");
    assert!(answer.starts_with("-ERR "), "{answer:?}");
    let mut echo = TcpStream::connect(host.service("echo")).unwrap();
    echo.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(echoes(&mut echo, "the other service is served"));

    redis.restart();
    let started = std::time::Instant::now();
    while set("after") != "+OK\r\n" {
        assert!(started.elapsed() < TIMEOUT, "the bucket did not come back");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(cli(redis.addr, &["GET", "portico:cache:after"]), "x");
}

/// A plugin opens only the buckets its service is granted, and a bucket
/// holds at most its `max-keys`: past either, an error inside the plugin,
/// logged and counted, and the connection goes on.
#[test]
fn buckets_are_granted_and_bounded() {
    let scratch = Scratch::new("kv-grants");
    let config = scratch.config(
        r#"
        [admin]
        listen = "127.0.0.1:0"

        [keyvalue.small]
        max-keys = 3

        [keyvalue.private]

        [services.kv]
        plugin = "{misbehave}"
        listen = ["127.0.0.1:0"]
        grants = { keyvalue = ["small"] }
        "#,
    );
    let host = Host::start_config(&config, &[], 1, true);
    let ask = |command: &str| {
        let mut conn = TcpStream::connect(host.service("kv")).unwrap();
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        writeln!(conn, "{command}").unwrap();
        read_line(&mut conn)
    };
    assert_eq!(ask("open-bucket small"), "allowed\n");
    let denied = ask("open-bucket private");
    assert!(
        denied.starts_with("denied") && denied.contains("access denied"),
        "{denied}"
    );
    host.wait_for_log(&["key-value bucket denied", "bucket=\"private\"", "conn="]);
    let filled = ask("fill-bucket small");
    assert!(
        filled.starts_with("stored 3: set: bucket full: 3 keys"),
        "{filled}"
    );

    host.wait_for_log(&["key-value limit reached: bucket full: 3 keys", "conn="]);

    let (_, metrics) = get(&host.admin_url("/metrics"));
    let series = |name: &str| format!(r#"{name}{{service="kv"}}"#);
    assert_eq!(
        metric(&metrics, &series("portico_keyvalue_denied_total")),
        1.0
    );
    assert_eq!(
        metric(&metrics, &series("portico_keyvalue_limit_hits_total")),
        1.0
    );
}

/// A plugin built against the 0.1.0 contract, before key-value existed,
/// still loads and serves (the fixture is the echo plugin as built then).
#[test]
fn a_plugin_built_against_0_1_0_still_works() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/echo-0.1.0.wasm");
    let host = Host::start_file(&fixture, &[]);
    let mut conn = host.connect();
    assert!(echoes(&mut conn, "built against portico:plugin@0.1.0"));
}
