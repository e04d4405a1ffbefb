use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

use crate::services::{Scratch, get, metric};
use crate::util::{Host, Peer, TIMEOUT, read_line};

/// The chat plugin's shipped config, with its plugin path made absolute,
/// its port left to the system, and `edit` applied.
fn chat_config(scratch: &Scratch, edit: impl Fn(String) -> String) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/chat/portico.toml");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("../../target/wasm32-wasip2/release/chat.wasm", "{chat}")
        .replace("127.0.0.1:7070", "127.0.0.1:0");
    scratch.config(&edit(text))
}

/// A chat client: connected, greeted, and in `room`.
fn member(host: &Host, nick: &str, room: &str) -> TcpStream {
    let mut conn = TcpStream::connect(host.service("chat")).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(read_line(&mut conn).starts_with("welcome"));
    writeln!(conn, "/nick {nick}").unwrap();
    assert_eq!(read_line(&mut conn), format!("* you are {nick}\n"));
    writeln!(conn, "/join {room}").unwrap();
    assert_eq!(read_line(&mut conn), format!("* you are in {room}\n"));
    conn
}

/// The chat plugin on its shipped config: a line reaches every other
/// member of the room and nobody else, and a room outside the grant cannot
/// be joined.
#[test]
fn chat_rooms_carry_lines_between_connections() {
    let scratch = Scratch::new("chat");
    let config = chat_config(&scratch, |text| {
        let text = text.replace(
            "messaging = [\"rooms.*\"]",
            "messaging = [\"rooms.lobby\", \"rooms.quiet\"]",
        );
        format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}")
    });
    let host = Host::start_config(&config, &[], 1, true);

    let mut alice = member(&host, "alice", "lobby");
    let mut bob = member(&host, "bob", "lobby");
    let mut carol = member(&host, "carol", "quiet");
    assert_eq!(read_line(&mut alice), "* bob joined\n");

    writeln!(alice, "hello, lobby").unwrap();
    assert_eq!(read_line(&mut bob), "alice: hello, lobby\n");
    writeln!(carol, "anyone?").unwrap();
    writeln!(bob, "hi alice").unwrap();
    // Alice gets Bob's line and not her own; Carol's room is another.
    assert_eq!(read_line(&mut alice), "bob: hi alice\n");
    writeln!(carol, "/join secret").unwrap();
    assert_eq!(
        read_line(&mut carol),
        "* cannot join secret: subscribing to \"rooms.secret\": access denied\n"
    );
    let (_, metrics) = get(&host.admin_url("/metrics"));
    assert_eq!(
        metric(
            &metrics,
            r#"portico_messaging_denied_total{service="chat"}"#
        ),
        1.0
    );
}

/// Two hosts on one NATS server: a line said on one reaches the room's
/// members on the other.
#[test]
fn chat_rooms_span_hosts_through_nats() {
    let nats = Peer::start("nats-server", |port| {
        ["-a", "127.0.0.1", "-p", port].map(String::from).to_vec()
    });
    let scratch = Scratch::new("chat-nats");
    let config = chat_config(&scratch, |text| {
        text.replace(
            "backend = \"memory\"",
            &format!("backend = \"nats\"\nurl = \"nats://{}\"", nats.addr),
        )
    });
    let first = Host::start_config(&config, &[], 1, false);
    let second = Host::start_config(&config, &[], 1, false);

    let mut alice = member(&first, "alice", "lobby");
    let mut bob = member(&second, "bob", "lobby");
    assert_eq!(read_line(&mut alice), "* bob joined\n");
    writeln!(alice, "hello from the first host").unwrap();
    assert_eq!(read_line(&mut bob), "alice: hello from the first host\n");
    writeln!(bob, "and back from the second").unwrap();
    assert_eq!(read_line(&mut alice), "bob: and back from the second\n");
}
