use std::io::Write;
use std::thread;
use std::time::Duration;

use crate::util::{EchoLoad, Host, echoes, read_line};
use crate::{LOAD_CONNECTIONS, check, exclusive};

/// Connections admitted at once in the burst test.
const PLACES: usize = 20;

/// Bursts that fill every admission place at once, again and again, beside
/// an echo load that holds some of the places: every admitted connection
/// gets its instance (an allocation once lost a race with another thread
/// handing back a freed slot, and the connection trapped).
#[test]
fn bursts_at_the_limit_always_get_an_instance() {
    let _turn = exclusive();
    let places = PLACES.to_string();
    let host = Host::start(
        "misbehave",
        &["--max-connections", &places, "--max-queued", "1000"],
    );
    let load = EchoLoad::start(&host, LOAD_CONNECTIONS / 2);
    let burst = PLACES - LOAD_CONNECTIONS / 2;
    let rounds = 75;
    for round in 0..rounds {
        let clients: Vec<_> = (0..burst)
            .map(|i| {
                let mut conn = host.connect();
                thread::spawn(move || {
                    conn.write_all(b"echo\n").unwrap();
                    assert_eq!(read_line(&mut conn), "ok\n", "round {round}, client {i}");
                    assert!(echoes(&mut conn, "burst"), "round {round}, client {i}");
                })
            })
            .collect();
        for client in clients {
            client.join().unwrap();
        }
    }
    check("bursts at the limit", &load.stop());
    let served = rounds * burst;
    host.wait_for_lines(&["closed", "outcome=\"ok\""], served);
    let log = host.log();
    assert!(!log.contains("outcome=\"trap\""), "{log}");
    println!("{served} connections in bursts of {burst} at {PLACES} places: no trap");
}

/// Forty connections one after another, each dirtying 60 MiB of its
/// instance's memory: once connections stop ending, the host gives the
/// memory back (it once kept 1.3 GiB).
#[test]
fn memory_is_given_back_after_a_peak() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &["--max-memory", "64"]);
    let load = EchoLoad::start(&host, LOAD_CONNECTIONS);
    thread::sleep(Duration::from_millis(500));
    let before = host.rss_kib();
    for _ in 0..40 {
        let mut conn = host.connect();
        conn.write_all(b"dirty 60\n").unwrap();
        assert_eq!(read_line(&mut conn), "dirtied 60 MiB\n");
    }
    let peak = host.rss_kib();
    // The reclaimer runs once no connection has ended for two seconds.
    thread::sleep(Duration::from_secs(4));
    let after = host.rss_kib();
    check("memory residency", &load.stop());
    println!("host RSS: {before} KiB before, {peak} KiB after the peak, {after} KiB once quiet");
    assert!(after < before + 64 * 1024, "RSS {after} KiB, from {before}");
}

/// Slots whose instances were live at once.
const CONCURRENT_SLOTS: usize = 300;

/// Three hundred connections live at once, each then dirtying 2 MiB of its
/// instance's memory: once they have closed and the host is quiet, what
/// the freed slots keep resident (the pages reset by hand for the next
/// instance, where the kernel can scan for them) stays within 64 KiB per
/// slot, as the README promises, rather than what the peak dirtied.
#[test]
fn freed_slots_keep_at_most_64_kib_each() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &["--max-memory", "64"]);
    thread::sleep(Duration::from_millis(500));
    let before = host.rss_kib();
    // All connected first, so that each instance holds a slot of its own.
    let mut conns: Vec<_> = (0..CONCURRENT_SLOTS).map(|_| host.connect()).collect();
    for conn in &mut conns {
        conn.write_all(b"dirty 2\n").unwrap();
    }
    for conn in &mut conns {
        assert_eq!(read_line(conn), "dirtied 2 MiB\n");
    }
    drop(conns);
    // The reclaimer runs once no connection has ended for two seconds.
    thread::sleep(Duration::from_secs(4));
    let after = host.rss_kib();
    println!(
        "host RSS: {before} KiB before {CONCURRENT_SLOTS} instances each dirtied 2 MiB \
         in a slot of its own, {after} KiB once quiet"
    );
    // Kept whole, the dirtied pages would be 600 MiB.
    let kept_bound = CONCURRENT_SLOTS as u64 * 64 + 32 * 1024;
    assert!(
        after < before + kept_bound,
        "RSS {after} KiB once quiet, from {before}: more than 64 KiB per slot kept"
    );
}
