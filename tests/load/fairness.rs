use std::io::Write;
use std::thread;
use std::time::Duration;

use crate::util::{EchoLoad, Host};
use crate::{LOAD_CONNECTIONS, check, cores, exclusive};

/// How long the echo load is measured beside each set of busy plugins.
const MEASURED: Duration = Duration::from_secs(3);

/// Plugins that compute without pause, 1, as many as the machine has cores,
/// and twice that, each beside an echo load: the echo load keeps a p99
/// under the bound however many workers the busy plugins could occupy.
#[test]
fn busy_plugins_do_not_stall_other_connections() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &["--cpu-budget", "4s"]);
    let mut stopped = 0;
    for spinners in [1, cores(), 2 * cores()] {
        let load = EchoLoad::start(&host, LOAD_CONNECTIONS);
        let busy: Vec<_> = (0..spinners)
            .map(|_| {
                let mut conn = host.connect();
                conn.write_all(b"loop\n").unwrap();
                conn
            })
            .collect();
        thread::sleep(MEASURED);
        check(&format!("beside {spinners} busy plugins"), &load.stop());
        stopped += spinners;
        host.wait_for_lines(&["closed", "CPU budget spent"], stopped);
        drop(busy);
    }
}

/// The host calls a plugin can make in a tight loop, each in as many
/// connections as there are cores and then twice that: a zero-length
/// timer, a poll, a random number, a line of log. The echo load keeps its
/// latency, and each loop is stopped at its CPU budget.
#[test]
fn host_call_loops_do_not_stall_other_connections() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &["--cpu-budget", "1s"]);
    let mut stopped = 0;
    for command in ["zero-timer", "spam-log"] {
        for attackers in [cores(), 2 * cores()] {
            let load = EchoLoad::start(&host, LOAD_CONNECTIONS);
            let busy: Vec<_> = (0..attackers)
                .map(|_| {
                    let mut conn = host.connect();
                    conn.write_all(format!("{command}\n").as_bytes()).unwrap();
                    conn
                })
                .collect();
            stopped += attackers;
            host.wait_for_lines(&["closed", "CPU budget spent"], stopped);
            check(&format!("{attackers} x {command}"), &load.stop());
            drop(busy);
        }
    }
}

/// A zero-length timer polled in a loop costs the host no more CPU than
/// the plugin's budget allows (it once cost 2.8 times the budget).
#[test]
fn zero_timer_loop_costs_no_more_than_its_budget() {
    let _turn = exclusive();
    let host = Host::start("misbehave", &["--cpu-budget", "1s"]);
    let before = host.cpu_time();
    let mut conn = host.connect();
    conn.write_all(b"zero-timer\n").unwrap();
    host.wait_for_log(&["closed", "CPU budget spent"]);
    let spent = host.cpu_time() - before;
    println!("zero-timer loop on a 1s budget: host CPU {spent:?}");
    assert!(spent < Duration::from_millis(1500), "host CPU {spent:?}");
}
