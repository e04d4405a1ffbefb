use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::services::{Scratch, get, metric};
use crate::util::{Host, Peer, TIMEOUT, read_line};

/// The chat plugin's shipped config, with its plugin path made absolute,
/// its port left to the system, and `edit` applied.
pub(crate) fn chat_config(
    scratch: &Scratch,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/chat/portico.toml");
    let text = std::fs::read_to_string(shipped)
        .unwrap()
        .replace("../../target/wasm32-wasip2/release/chat.wasm", "{chat}")
        .replace("127.0.0.1:7070", "127.0.0.1:0");
    scratch.config(&edit(text))
}

/// A real `nats-server`.
fn nats_server() -> Peer {
    Peer::start("nats-server", |port| {
        ["-a", "127.0.0.1", "-p", port].map(String::from).to_vec()
    })
}

/// Two hosts whose chat service shares rooms through `nats`.
fn chat_over_nats(scratch: &Scratch, nats: &Peer) -> (Host, Host) {
    let config = chat_config(scratch, |text| {
        text.replace(
            "backend = \"memory\"",
            &format!("backend = \"nats\"\nurl = \"nats://{}\"", nats.addr),
        )
    });
    let first = Host::start_config(&config, &[], 1, false);
    let second = Host::start_config(&config, &[], 1, false);
    (first, second)
}

/// The next line `conn` receives within `wait`, if one comes.
fn line_within(conn: &mut TcpStream, wait: Duration) -> Option<String> {
    conn.set_read_timeout(Some(wait)).unwrap();
    let mut line = Vec::new();
    let mut byte = [0];
    while let Ok(1) = conn.read(&mut byte) {
        line.push(byte[0]);
        if byte[0] == b'\n' {
            break;
        }
    }
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    (line.last() == Some(&b'\n')).then(|| String::from_utf8(line).unwrap())
}

/// A chat client: connected, greeted, and in `room`.
pub(crate) fn member(host: &Host, nick: &str, room: &str) -> TcpStream {
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

    // Between lines every member hibernates; a line wakes the members of
    // its room who did not say it, and nobody else.
    let hibernated = r#"portico_connections_hibernated{service="chat"}"#;
    let message_wakes = r#"portico_wakes_total{service="chat",reason="message"}"#;
    host.wait_for_metric(hibernated, 3.0);
    let before = host.metric(message_wakes);
    writeln!(alice, "still there, bob?").unwrap();
    assert_eq!(read_line(&mut bob), "alice: still there, bob?\n");
    host.wait_for_metric(hibernated, 3.0);
    assert_eq!(host.metric(message_wakes), before + 1.0);
}

/// Two hosts on one NATS server: a line said on one reaches the room's
/// members on the other.
#[test]
fn chat_rooms_span_hosts_through_nats() {
    let nats = nats_server();
    let scratch = Scratch::new("chat-nats");
    let (first, second) = chat_over_nats(&scratch, &nats);

    let mut alice = member(&first, "alice", "lobby");
    let mut bob = member(&second, "bob", "lobby");
    assert_eq!(read_line(&mut alice), "* bob joined\n");
    writeln!(alice, "hello from the first host").unwrap();
    assert_eq!(read_line(&mut bob), "alice: hello from the first host\n");
    writeln!(bob, "and back from the second").unwrap();
    assert_eq!(read_line(&mut alice), "bob: and back from the second\n");
}

/// The NATS server dies and comes back: meanwhile publishing fails inside
/// the plugin at once (chat says so) and its connections go on; afterwards
/// the rooms span the hosts again, subscriptions restored.
#[test]
fn chat_goes_on_while_nats_is_away() {
    let mut nats = nats_server();
    let scratch = Scratch::new("chat-nats-away");
    let (first, second) = chat_over_nats(&scratch, &nats);
    let mut alice = member(&first, "alice", "lobby");
    let mut bob = member(&second, "bob", "lobby");
    assert_eq!(read_line(&mut alice), "* bob joined\n");

    nats.kill();
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < TIMEOUT, "publishing never failed");
        writeln!(alice, "anyone there?").unwrap();
        match line_within(&mut alice, Duration::from_millis(500)) {
            Some(line) if line.starts_with("* not sent:") && line.contains("NATS") => break,
            Some(line) => panic!("unexpected {line:?}"),
            None => {}
        }
    }
    writeln!(alice, "/nick alicia").unwrap();
    assert_eq!(read_line(&mut alice), "* you are alicia\n");

    nats.restart();
    let started = Instant::now();
    loop {
        assert!(
            started.elapsed() < TIMEOUT,
            "the rooms never joined up again"
        );
        writeln!(alice, "back again").unwrap();
        let heard = line_within(&mut bob, Duration::from_millis(500));
        if heard.as_deref() == Some("alicia: back again\n") {
            break;
        }
        // Until the hosts reconnect, alice is told her lines were not sent.
        while let Some(line) = line_within(&mut alice, Duration::from_millis(10)) {
            assert!(line.starts_with("* not sent"), "{line:?}");
        }
    }
}

/// Chat plugins built against the 0.2.0 and 0.3.0 contracts (kept as
/// fixtures) are linked to the current pubsub: their members and those of
/// the current chat, in one host, share rooms, and their refusals still
/// arrive as `access-denied`.
#[test]
fn chats_built_against_earlier_contracts_share_rooms_with_the_current_one() {
    for version in ["0.2.0", "0.3.0"] {
        an_earlier_chat_shares_rooms(version);
    }
}

fn an_earlier_chat_shares_rooms(version: &str) {
    let scratch = Scratch::new(&format!("chat-{version}"));
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../tests/fixtures/chat-{version}.wasm"));
    let config = scratch.config(&format!(
        r#"
        [services.chat]
        plugin = "{{chat}}"
        listen = ["127.0.0.1:0"]
        [services.chat.grants]
        messaging = ["rooms.*"]
        [services.old]
        plugin = "{}"
        listen = ["127.0.0.1:0"]
        [services.old.grants]
        messaging = ["rooms.lobby"]
        "#,
        fixture.display()
    ));
    let host = Host::start_config(&config, &[], 2, false);
    let mut alice = member(&host, "alice", "lobby");
    let mut old = TcpStream::connect(host.service("old")).unwrap();
    old.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(read_line(&mut old).starts_with("welcome"));
    writeln!(old, "/nick bob").unwrap();
    assert_eq!(read_line(&mut old), "* you are bob\n");
    writeln!(old, "/join lobby").unwrap();
    assert_eq!(read_line(&mut old), "* you are in lobby\n");
    assert_eq!(read_line(&mut alice), "* bob joined\n");
    writeln!(old, "hello from {version}").unwrap();
    assert_eq!(
        read_line(&mut alice),
        format!("bob: hello from {version}\n")
    );
    writeln!(alice, "hello from the current chat").unwrap();
    assert_eq!(read_line(&mut old), "alice: hello from the current chat\n");
    writeln!(old, "/join quiet").unwrap();
    assert_eq!(
        read_line(&mut old),
        "* cannot join quiet: subscribing to \"rooms.quiet\": access denied\n"
    );
}
