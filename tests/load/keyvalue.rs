use std::io::Write;
use std::net::TcpStream;
use std::thread;

use crate::util::{Host, TIMEOUT, read_line};
use crate::{cores, exclusive, under_load};

/// As many plugins as cores fill one memory bucket with 1 MiB values
/// at once, beside an echo load: the bucket stops at its byte limit (64 MiB
/// by default), every filler gets an error, and the host's memory grows by
/// no more than that.
#[test]
fn filling_a_bucket_is_bounded() {
    let _turn = exclusive();
    let host = Host::start(
        "misbehave",
        &["--allow-keyvalue", "cache", "--admin", "127.0.0.1:0"],
    );
    let before = host.rss_kib();
    let stored: usize = under_load(&host, "plugins filling a bucket with 1 MiB values", || {
        let fillers: Vec<_> = (0..cores())
            .map(|_| {
                let addr = host.addr;
                thread::spawn(move || {
                    let mut conn = TcpStream::connect(addr).unwrap();
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    writeln!(conn, "fill-bucket cache").unwrap();
                    let answer = read_line(&mut conn);
                    assert!(answer.contains("bucket full: 67108864 bytes"), "{answer}");
                    answer
                        .strip_prefix("stored ")
                        .and_then(|rest| rest.split(':').next()?.parse::<usize>().ok())
                        .unwrap()
                })
            })
            .collect();
        fillers
            .into_iter()
            .map(|filler| filler.join().unwrap())
            .sum()
    });
    let grown_mib = host.rss_kib().saturating_sub(before) / 1024;
    println!("values stored by all fillers: {stored}; host RSS grew {grown_mib} MiB");
    assert_eq!(stored, 63, "64 MiB of 1 MiB values and their keys");
    assert!(grown_mib < 64 + 32, "RSS grew {grown_mib} MiB");
    let limit_hits = host.metric(r#"portico_keyvalue_limit_hits_total{service="misbehave"}"#);
    assert_eq!(limit_hits, cores() as f64, "one full bucket per filler");
}
