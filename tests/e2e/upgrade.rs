//! Upgrading the binary without dropping anyone: SIGUSR2 or `POST
//! /upgrade` starts the binary again, hands it the listeners, and the old
//! process drains, under a client load that must see no refusal and no
//! reset.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::services::{Scratch, post};
use crate::util::{Host, TIMEOUT, free_addr, plugin, read_line};

/// Clients that connect, echo 1 KiB and close, over and over, each on a
/// thread of its own; what failed, and the slowest connect-and-echo.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    slowest_us: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, clients: usize) -> Load {
        let load = Load {
            stop: Arc::default(),
            failures: Arc::default(),
            slowest_us: Arc::default(),
            done: Arc::default(),
            clients: Vec::new(),
        };
        let clients = (0..clients)
            .map(|_| {
                let (stop, failures) = (load.stop.clone(), load.failures.clone());
                let (slowest_us, done) = (load.slowest_us.clone(), load.done.clone());
                std::thread::spawn(move || {
                    while !stop.load(Relaxed) {
                        let started = Instant::now();
                        match echo_once(addr) {
                            Ok(()) => {
                                let us = started.elapsed().as_micros() as u64;
                                slowest_us.fetch_max(us, Relaxed);
                                done.fetch_add(1, Relaxed);
                            }
                            Err(error) => failures.lock().unwrap().push(error.to_string()),
                        }
                    }
                })
            })
            .collect();
        Load { clients, ..load }
    }

    /// Stops the clients; the failures and the slowest round, in ms.
    fn stop(self) -> (Vec<String>, u64, u64) {
        self.stop.store(true, Relaxed);
        for client in self.clients {
            client.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (
            failures,
            self.slowest_us.load(Relaxed) / 1000,
            self.done.load(Relaxed),
        )
    }
}

fn echo_once(addr: SocketAddr) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    let payload = [7u8; 1024];
    stream.write_all(&payload)?;
    let mut echoed = [0u8; 1024];
    stream.read_exact(&mut echoed)?;
    if echoed != payload {
        return Err(std::io::Error::other("the echo differed"));
    }
    Ok(())
}

/// A process an upgrade started, killed when dropped: a test that fails
/// midway leaves no host behind.
struct Started(i32);

impl Drop for Started {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The pid in the `upgraded` log line that follows the `count`th one.
fn upgraded_pid(host: &Host, count: usize) -> i32 {
    let lines = host.wait_for_lines(&["upgraded: the new process listens"], count);
    let line = &lines[count - 1];
    line.split("pid=")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line}"))
}

fn is_running(pid: i32) -> bool {
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Two upgrades in a row (SIGUSR2, then `POST /upgrade` to the new
/// process), under a load of as many clients as cores and then some, and
/// a connection held open across both: no client is refused or reset, the
/// held connection is served to its end by the process it started on, the
/// pid changes each time, and each old process exits cleanly.
#[test]
fn upgrades_drop_no_one() {
    let scratch = Scratch::new("upgrade");
    let (addr, admin) = (free_addr(), free_addr());
    let config = scratch.config(&format!(
        r#"
        [admin]
        listen = "{admin}"
        [services.echo]
        plugin = "{{echo}}"
        listen = ["{addr}"]
        "#
    ));
    let mut host = Host::start_config(&config, &[], 1, true);
    let mut held = host.connect();
    held.write_all(b"before\n").unwrap();
    assert_eq!(read_line(&mut held), "before\n");

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let load = Load::start(addr, cores * 2);
    std::thread::sleep(Duration::from_millis(500));
    let before_ms = load.slowest_us.swap(0, Relaxed) / 1000;
    host.signal(libc::SIGUSR2);
    let second = upgraded_pid(&host, 1);
    assert_ne!(second, host.pid());
    std::thread::sleep(Duration::from_millis(300));

    // The first process drains: the connection it holds is served on.
    held.write_all(b"during\n").unwrap();
    assert_eq!(read_line(&mut held), "during\n");
    drop(held);
    assert!(host.wait_exit_keeping_log().success(), "the first process");

    let (status, body) = post(&format!("http://{admin}/upgrade"));
    assert_eq!(status, 200, "{body}");
    let third = upgraded_pid(&host, 2);
    let _third = Started(third);
    assert!(third != second && is_running(third), "{third}");
    let deadline = Instant::now() + TIMEOUT;
    while is_running(second) {
        assert!(Instant::now() < deadline, "the second process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));

    let (failures, slowest_ms, done) = load.stop();
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(done > 100, "only {done} rounds");
    // How long accepting paused, at most: the slowest round across both
    // hand-overs, against the slowest in the half second before.
    eprintln!(
        "upgrade under load: {done} rounds by {} clients, none failed; slowest \
         connect-and-echo {slowest_ms} ms across two upgrades, {before_ms} ms before them",
        cores * 2
    );
}

/// A new process that cannot start (its config names a plugin that is
/// gone) leaves the old one serving, which logs why.
#[test]
fn a_failed_upgrade_keeps_the_old_process_serving() {
    let scratch = Scratch::new("upgrade-fails");
    let copy = scratch.0.join("echo.wasm");
    std::fs::copy(plugin("echo"), &copy).unwrap();
    let addr = free_addr();
    let config = scratch.0.join("portico.toml");
    std::fs::write(
        &config,
        format!(
            "[services.echo]\nplugin = {:?}\nlisten = [\"{addr}\"]\n",
            copy.display()
        ),
    )
    .unwrap();
    let host = Host::start_config(&config, &[], 1, false);
    std::fs::remove_file(&copy).unwrap();
    host.signal(libc::SIGUSR2);
    host.wait_for_log(&[
        "upgrade failed, still serving",
        "the new process (pid",
        "it exited before it listened",
    ]);
    echo_once(addr).unwrap();
}

/// A hibernated connection moves to the new process with its state, and
/// its client, idle across the upgrade, notices nothing: its next line
/// wakes a fresh instance in the new process, which has the state; one
/// with a wake timer is woken there by what remains of its timer.
#[test]
fn hibernated_connections_move_to_the_new_process() {
    let scratch = Scratch::new("upgrade-hibernated");
    let (addr, admin) = (free_addr(), free_addr());
    let config = scratch.config(&format!(
        r#"
        [admin]
        listen = "{admin}"
        [services.misbehave]
        plugin = "{{misbehave}}"
        listen = ["{addr}"]
        "#
    ));
    let mut host = Host::start_config(&config, &[], 1, true);
    let hibernated = r#"portico_connections_hibernated{service="misbehave"}"#;
    let mut sleeper = host.connect();
    sleeper.write_all(b"hibernate 100\n").unwrap();
    assert_eq!(read_line(&mut sleeper), "hibernating\n");
    let mut timed = host.connect();
    timed.write_all(b"hibernate 7 1500\n").unwrap();
    assert_eq!(read_line(&mut timed), "hibernating\n");
    host.wait_for_metric(hibernated, 2.0);

    host.signal(libc::SIGUSR2);
    let _new = Started(upgraded_pid(&host, 1));
    host.wait_for_lines(&["handed over to the new process"], 2);
    host.wait_for_lines(&["taken over from the replaced process"], 2);
    assert!(host.wait_exit_keeping_log().success(), "the old process");

    sleeper.write_all(b"info\n").unwrap();
    assert_eq!(read_line(&mut sleeper), "woke client-data 100\n");
    assert!(read_line(&mut sleeper).contains(" 127.0.0.1:"));
    // Woken by its timer, in the new process: the instance sees why.
    assert_eq!(read_line(&mut timed), "woke timer 7\n");
}

/// Chat members hibernated with their room's subscription move too: after
/// the upgrade, a line one says in the new process reaches the other,
/// whose subscription was made again there.
#[test]
fn hibernated_subscribers_move_with_their_subscriptions() {
    let scratch = Scratch::new("upgrade-chat");
    let (addr, admin) = (free_addr(), free_addr());
    let config = crate::messaging::chat_config(&scratch, |text| {
        let text = text.replace("127.0.0.1:0", &addr.to_string());
        format!("[admin]\nlisten = \"{admin}\"\n{text}")
    });
    let mut host = Host::start_config(&config, &[], 1, true);
    let mut alice = crate::messaging::member(&host, "alice", "lobby");
    let mut bob = crate::messaging::member(&host, "bob", "lobby");
    assert_eq!(read_line(&mut alice), "* bob joined\n");
    host.wait_for_metric(r#"portico_connections_hibernated{service="chat"}"#, 2.0);

    host.signal(libc::SIGUSR2);
    let _new = Started(upgraded_pid(&host, 1));
    host.wait_for_lines(&["handed over to the new process"], 2);
    host.wait_for_lines(&["taken over from the replaced process"], 2);
    assert!(host.wait_exit_keeping_log().success(), "the old process");

    writeln!(alice, "hello from the new process").unwrap();
    assert_eq!(read_line(&mut bob), "alice: hello from the new process\n");
    writeln!(bob, "and back").unwrap();
    assert_eq!(read_line(&mut alice), "bob: and back\n");
}

/// A service on port 0 gets a port of its own in the new process; the old
/// port, handed over and taken by nothing, is closed there, so a client of
/// it is refused at once rather than left queued.
#[test]
fn a_handed_over_socket_no_service_takes_is_closed() {
    let scratch = Scratch::new("upgrade-port-0");
    let config = scratch.config(
        r#"
        [services.echo]
        plugin = "{echo}"
        listen = ["127.0.0.1:0"]
        "#,
    );
    let mut host = Host::start_config(&config, &[], 1, false);
    let old = host.addr;
    host.signal(libc::SIGUSR2);
    let _new = Started(upgraded_pid(&host, 1));
    host.wait_for_log(&["served by no service: closed", &old.to_string()]);
    assert!(host.wait_exit_keeping_log().success(), "the old process");
    assert!(TcpStream::connect(old).is_err(), "{old} still accepts");
}
