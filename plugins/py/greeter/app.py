"""Greeter in Python: a line protocol whose words come from the operator's
settings (`--config KEY=VALUE`, or a service's `settings` table), read
through `wasi:config/store`. The same protocol as the Rust greeter:

- `banner` (default `hello`): sent when a client connects;
- `greeting` (default `hello,`): each line is answered `<greeting> <line>`;
- `quit` (default `quit`): the line that ends the session, answered `bye`.

The line `fail` ends it with an error instead, to show how a plugin reports
one: raising `portico.Error(message)` ends `run` with `err`, which the host
logs as the connection's outcome. The line `crash` raises any other
exception, to show what the host logs of a crash: a trap, the traceback on
stderr.
"""

import portico


def run(conn):
    banner = portico.setting("banner", "hello")
    greeting = portico.setting("greeting", "hello,")
    quit = portico.setting("quit", "quit")

    conn.write_all(f"{banner}\n")
    for line in conn.lines():
        name = line.strip()
        if name == quit:
            conn.write_all("bye\n")
            return
        if name == "fail":
            raise portico.Error("the client asked to fail")
        if name == "crash":
            raise RuntimeError("the client asked to crash")
        conn.write_all(f"{greeting} {name}\n")


WitWorld = portico.handler(run)
