use std::io::Write;
use std::net::TcpStream;
use std::thread;

use crate::util::{Host, TIMEOUT, assert_closed, read_line};
use crate::{cores, exclusive, under_load};

/// Subscribers that never read, one plugin subscribing to topic after
/// topic, and as many publishers as there are cores publishing in a tight
/// loop, beside an echo load: the subscription limit holds, full queues
/// drop and count instead of growing, the publishers are stopped by their
/// CPU budget, and the host's memory stays put.
#[test]
fn publishing_floods_are_bounded() {
    let _turn = exclusive();
    let host = Host::start(
        "misbehave",
        &[
            "--allow-messaging",
            "flood.>",
            "--cpu-budget",
            "1s",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let before = host.rss_kib();
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut conn = host.connect();
            writeln!(conn, "subscribe-idle flood.x").unwrap();
            assert_eq!(read_line(&mut conn), "subscribed\n");
            conn
        })
        .collect();

    under_load(&host, "plugins publishing in a tight loop", || {
        let mut many = host.connect();
        writeln!(many, "subscribe-many flood.many").unwrap();
        let answer = read_line(&mut many);
        assert!(answer.starts_with("subscribed 16: "), "{answer}");
        host.wait_for_log(&["messaging limit reached: 16 subscriptions per connection"]);
        let publishers: Vec<_> = (0..cores())
            .map(|_| {
                let addr = host.addr;
                thread::spawn(move || {
                    let mut conn = TcpStream::connect(addr).unwrap();
                    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
                    writeln!(conn, "publish-loop flood.x").unwrap();
                    assert_closed(&mut conn);
                })
            })
            .collect();
        for publisher in publishers {
            publisher.join().unwrap();
        }
    });
    let lines = host.wait_for_lines(&["closed", "CPU budget spent"], cores());
    assert_eq!(lines.len(), cores());
    let grown_mib = host.rss_kib().saturating_sub(before) / 1024;
    let dropped = host.metric(r#"portico_messages_dropped_total{service="misbehave"}"#);
    println!("messages dropped at full queues: {dropped}; host RSS grew {grown_mib} MiB");
    assert!(dropped > 1000.0, "{dropped}");
    let limit_hits = host.metric(r#"portico_messaging_limit_hits_total{service="misbehave"}"#);
    assert_eq!(limit_hits, 1.0, "the 17th subscription");
    assert!(grown_mib < 32, "RSS grew {grown_mib} MiB");
    drop(idle);
}
