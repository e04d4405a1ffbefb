use std::io::Write;
use std::net::TcpStream;
use std::path::Path;

use crate::services::{Scratch, get, metric};
use crate::util::{Host, TIMEOUT, read_line};

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
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/chat/portico.toml");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("../../target/wasm32-wasip2/release/chat.wasm", "{chat}")
        .replace("127.0.0.1:7070", "127.0.0.1:0")
        .replace(
            "messaging = [\"rooms.*\"]",
            "messaging = [\"rooms.lobby\", \"rooms.quiet\"]",
        );
    let config = scratch.config(&format!("[admin]\nlisten = \"127.0.0.1:0\"\n{text}"));
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
