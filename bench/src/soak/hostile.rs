//! The hostile plugins beside the legitimate load: as many attackers at
//! once as the machine has cores, each taking turns at a busy loop, a
//! memory hog, log spam (the misbehave plugin's `loop`, `alloc` and
//! `spam-log`) and start-up code that spins (the spinners service, whose
//! every instance spins in `_initialize` once the soak is under way).
//! Each is cut off by its service's CPU budget or memory limit; the next
//! is launched as soon as one is, for the whole run.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::record::Record;

/// Longest an attack may last before the soak says the host did not cut
/// it off: well past the 500 ms CPU budget, since an attacker shares its
/// core with the others.
const CUT_OFF_WITHIN: Duration = Duration::from_secs(30);
/// A pause between an attacker's attacks, so that the memory hog (cut
/// off in a few milliseconds) does not launch thousands a second.
const PAUSE: Duration = Duration::from_millis(50);

/// The attacks, in the order each attacker takes them.
const ATTACKS: [Attack; 4] = [
    Attack::Loop,
    Attack::Alloc,
    Attack::SpamLog,
    Attack::SpinAtStart,
];

#[derive(Clone, Copy, Debug)]
enum Attack {
    Loop,
    Alloc,
    SpamLog,
    SpinAtStart,
}

/// Attacks launched and attacks the host cut off.
#[derive(Default)]
pub struct Tally {
    pub launched: AtomicU64,
    pub cut_off: AtomicU64,
}

/// Where attackers connect.
#[derive(Clone, Copy)]
pub struct Targets {
    /// The misbehave plugin, told what to do by its first line.
    pub hostile: SocketAddr,
    /// The misbehave plugin whose instances spin at start.
    pub spinners: SocketAddr,
}

/// Runs attacker `index` until `stop`.
pub async fn attacker(
    index: usize,
    targets: Targets,
    tally: Arc<Tally>,
    record: Arc<Record>,
    stop: CancellationToken,
) {
    let mut turn = index;
    while !stop.is_cancelled() {
        let attack = ATTACKS[turn % ATTACKS.len()];
        turn += 1;
        tally.launched.fetch_add(1, Relaxed);
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(CUT_OFF_WITHIN, attack_once(attack, targets)) => outcome,
            () = stop.cancelled() => return,
        };
        match outcome {
            Ok(Ok(())) => {
                tally.cut_off.fetch_add(1, Relaxed);
            }
            Ok(Err(error)) => record.problem(format!("attack {attack:?} could not start: {error}")),
            Err(_) => record.problem(format!(
                "attack {attack:?} was not cut off within {CUT_OFF_WITHIN:?}"
            )),
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// Launches `attack` and waits until the host closes its connection.
async fn attack_once(attack: Attack, targets: Targets) -> std::io::Result<()> {
    let (addr, command): (_, &[u8]) = match attack {
        Attack::Loop => (targets.hostile, b"loop\n"),
        Attack::Alloc => (targets.hostile, b"alloc\n"),
        Attack::SpamLog => (targets.hostile, b"spam-log\n"),
        // Once armed, the instance spins before it reads this; before,
        // it spins in `run`.
        Attack::SpinAtStart => (targets.spinners, b"loop\n"),
    };
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(command).await?;
    let mut sink = [0; 4096];
    // Whatever the plugin writes until it is stopped; a reset is a close.
    while matches!(stream.read(&mut sink).await, Ok(1..)) {}
    Ok(())
}
