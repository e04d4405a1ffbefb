"""Greeter in Python: a line protocol whose words come from the operator's
settings (`--config KEY=VALUE`, or a service's `settings` table), read
through `wasi:config/store`. The same protocol as the Rust greeter:

- `banner` (default `hello`): sent when a client connects;
- `greeting` (default `hello,`): each line is answered `<greeting> <line>`;
- `quit` (default `quit`): the line that ends the session, answered `bye`.

The line `fail` ends it with an error instead, to show how a plugin reports
one: raising `Err(message)` ends `run` with `err`, which the host logs as
the connection's outcome. The line `crash` raises any other exception,
to show what the host logs of a crash: a trap, the traceback on stderr.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import streams, wasi_config_store as config

# The most `blocking_write_and_flush` takes at once.
CHUNK = 4096


def setting(name, default):
    value = config.get(name)
    return default if value is None else value


def send(output, text):
    data = (text + "\n").encode()
    for start in range(0, len(data), CHUNK):
        output.blocking_write_and_flush(data[start : start + CHUNK])


def lines(input):
    """The client's lines, without their ends, until it stops sending."""
    pending = b""
    while True:
        while b"\n" not in pending:
            try:
                pending += input.blocking_read(4096)
            except Err as error:
                if isinstance(error.value, streams.StreamError_Closed):
                    return
                raise
        line, pending = pending.split(b"\n", 1)
        yield line.decode(errors="replace").strip()


class WitWorld(wit_world.WitWorld):
    def run(self, info, input, output):
        banner = setting("banner", "hello")
        greeting = setting("greeting", "hello,")
        quit = setting("quit", "quit")

        send(output, banner)
        for name in lines(input):
            if name == quit:
                send(output, "bye")
                return
            if name == "fail":
                raise Err("the client asked to fail")
            if name == "crash":
                raise RuntimeError("the client asked to crash")
            send(output, f"{greeting} {name}")
