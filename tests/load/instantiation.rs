use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::{EchoLoad, Host, assert_closed, host_command};
use crate::{cores, exclusive, wat};

/// Time from the host's start to the moment the `init` setting arms the
/// misbehave plugin's start-up code: time enough to pass the start-up
/// check, which must not see the attack.
const ARM_AFTER: Duration = Duration::from_secs(4);

/// Starts the misbehave plugin set to `init` (spin or sleep) in the start-up
/// code of every instance created once [`ARM_AFTER`] has passed; returns
/// the host and when the attack is armed.
fn armed_host(init: &str, args: &[&str]) -> (Host, Instant) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let armed_at = format!("init-after-ms={}", (now + ARM_AFTER).as_millis());
    let init = format!("init={init}");
    let mut all = vec!["--config", &init, "--config", &armed_at];
    all.extend_from_slice(args);
    let host = Host::start("misbehave", &all);
    (host, Instant::now() + ARM_AFTER)
}

/// Waits until `armed`, checking that the host got that far first.
fn wait_until(armed: Instant) {
    let left = armed.saturating_duration_since(Instant::now());
    assert!(
        !left.is_zero(),
        "the host took longer than {ARM_AFTER:?} to start"
    );
    thread::sleep(left + Duration::from_millis(200));
}

/// Start-up code that spins, in as many connections as there are cores and
/// then twice that, all at once: each is stopped at its CPU budget, and an
/// echo load served by instances created before the attack keeps its
/// latency.
#[test]
fn spinning_start_up_code_is_stopped_at_the_cpu_budget() {
    let _turn = exclusive();
    let (host, armed) = armed_host("spin", &["--cpu-budget", "500ms", "--idle-timeout", "60s"]);
    let load = EchoLoad::start(&host, crate::LOAD_CONNECTIONS);
    wait_until(armed);
    let started = Instant::now();
    for attackers in [cores(), 2 * cores()] {
        let conns: Vec<_> = (0..attackers).map(|_| host.connect()).collect();
        for mut conn in conns {
            assert_closed(&mut conn);
        }
    }
    host.wait_for_lines(
        &["closed", "outcome=\"stopped\"", "CPU budget spent"],
        3 * cores(),
    );
    crate::check("start-up spin", &load.stop());
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Start-up code that waits for ever is stopped by the idle timeout, and
/// by the lifetime limit where that comes first.
#[test]
fn waiting_start_up_code_is_stopped_by_idle_and_lifetime_limits() {
    let _turn = exclusive();
    let (host, armed) = armed_host("sleep", &["--idle-timeout", "1s"]);
    let load = EchoLoad::start(&host, crate::LOAD_CONNECTIONS);
    wait_until(armed);
    let mut conns: Vec<_> = (0..2 * cores()).map(|_| host.connect()).collect();
    for conn in &mut conns {
        assert_closed(conn);
    }
    host.wait_for_lines(
        &["closed", "outcome=\"stopped\"", "idle timeout"],
        2 * cores(),
    );
    crate::check("start-up sleep", &load.stop());

    let (host, armed) = armed_host("sleep", &["--max-lifetime", "1s"]);
    wait_until(armed);
    assert_closed(&mut host.connect());
    host.wait_for_log(&["closed", "outcome=\"stopped\"", "maximum lifetime reached"]);
}

/// A drain stops connections stuck in start-up code, and the host exits 0
/// within the drain timeout and a margin.
#[test]
fn drain_stops_start_up_code() {
    let _turn = exclusive();
    let (host, armed) = armed_host("spin", &["--cpu-budget", "60s", "--drain-timeout", "1s"]);
    wait_until(armed);
    let _stuck: Vec<_> = (0..2 * cores()).map(|_| host.connect()).collect();
    thread::sleep(Duration::from_millis(300));
    let signalled = Instant::now();
    host.signal(libc::SIGTERM);
    assert_eq!(host.wait_exit().code(), Some(0));
    let took = signalled.elapsed();
    println!("drain with start-up code spinning: exited after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

/// A core start function that never returns: the start-up check gives up
/// at the CPU budget with one error line, and a SIGTERM during the check
/// stops the host at once.
#[test]
fn start_function_that_never_returns_is_refused_at_start() {
    let _turn = exclusive();
    let plugin = wat::component(
        "start-spin",
        &format!(
            "(func $spin (loop $again (br $again))) (start $spin) {}",
            wat::RUN_OK
        ),
    );

    let started = Instant::now();
    let output = host_command()
        .arg("--plugin")
        .arg(&plugin)
        .args(["--listen", "127.0.0.1:0", "--cpu-budget", "1s"])
        .output()
        .expect("run the host");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("start-up code") && errors[0].contains("--cpu-budget"));
    assert!(started.elapsed() < Duration::from_secs(8));

    let mut child = host_command()
        .arg("--plugin")
        .arg(&plugin)
        .args(["--listen", "127.0.0.1:0", "--cpu-budget", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the host");
    thread::sleep(Duration::from_millis(500));
    let signalled = Instant::now();
    // SAFETY: kill(2) on our own child's pid has no memory effects.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().expect("wait for the host");
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert_eq!(status.code(), Some(0));
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        log.push_str(&line.unwrap());
    }
    assert!(log.contains("stopped before listening"), "{log}");
    let _ = std::fs::remove_file(plugin);
}
