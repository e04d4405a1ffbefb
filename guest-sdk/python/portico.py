"""Portico's Python SDK: write a plugin as one function that gets a
`Connection`, and leave the component-model bindings to this module.

Over the bindings alone, every plugin repeats the same steps: read until
the input stream reports `closed`, split lines, cut writes into the 4,096
bytes `blocking_write_and_flush` takes at most, and turn errors into
`Err`. Here they are `Connection.read`, `lines` and `write_all`, and
`raise portico.Error(...)`.

A complete plugin, in `app.py` beside this file:

    import portico

    def run(conn):
        greeting = portico.setting("greeting", "hello,")
        for line in conn.lines():
            if line == "fail":
                raise portico.Error("the client asked to fail")
            conn.write_all(f"{greeting} {line}\\n")

    WitWorld = portico.handler(run)

Build it with componentize-py against the contract (the folder `wit`,
world `handler`); the bindings it imports (`wit_world`) are generated
then:

    componentize-py -d wit -w handler componentize app -o plugin.wasm

A plugin that hibernates uses `Connection.try_read`, `hibernate` and
`woken`. Anything else in the contract (key-value, pubsub, outbound
sockets) is in `wit_world.imports`, and `Connection.input` and
`Connection.output` are the bindings' streams.
"""

from functools import cached_property

import wit_world
from componentize_py_types import Err
from wit_world.imports import hibernation, streams, wasi_config_store

__all__ = ["Connection", "Error", "WakeReason", "handler", "setting"]

# The most one `blocking_write_and_flush` takes.
MAX_WRITE = 4096

# Why a hibernated connection woke (`Connection.woken.reason`).
WakeReason = hibernation.WakeReason


class Error(Exception):
    """Raise it to end `run` with an error: the host logs its message as
    the connection's outcome (`outcome="error" error="MESSAGE"`). The SDK
    raises it too when a stream fails, or the client is gone."""


def handler(serve):
    """Makes `serve(conn)` the plugin: returns the class componentize-py
    looks for in the app module, so assign it to `WitWorld`.

    `serve` is called once per connection, in a fresh instance, with a
    `Connection`. Returning ends the connection with `ok`; raising `Error`
    ends it with `err(message)`; any other exception is a crash: its
    traceback goes to stderr, and the host logs a trap.
    """

    class WitWorld(wit_world.WitWorld):
        def run(self, info, input, output):
            try:
                serve(Connection(info, input, output))
            except Error as error:
                raise Err(str(error)) from None

    return WitWorld


def setting(name, default=None):
    """The setting `name` (`--config NAME=VALUE`, or the service's
    `settings`), or `default` if it is not set."""
    try:
        value = wasi_config_store.get(name)
    except Err as error:
        raise Error(f"reading the setting {name}: {error.value.value}") from None
    return default if value is None else value


class Connection:
    """One client's connection: its bytes both ways, and its details.

    `id` is the number the host's log gives it (`conn=ID`); `peer` and
    `local` are the client's address and the host's, as `ip:port`.
    """

    def __init__(self, info, input, output):
        self.id = info.id
        self.peer = info.peer_address
        self.local = info.local_address
        self.input = input
        self.output = output
        # What `lines` read past its last line, for the next read.
        self._pending = b""

    def read(self, size=65536):
        """Up to `size` bytes from the client, waiting until some come;
        b"" once it is done sending."""
        return self._take(size) or self._receive(size, wait=True) or b""

    def try_read(self, size=65536):
        """As `read`, without waiting: None if nothing has come yet."""
        data = self._take(size) or self._receive(size, wait=False)
        if data is None:
            return b""
        return data or None

    def lines(self):
        """The client's lines, as `str` without their line ends (`\\n` or
        `\\r\\n`), until it is done sending; a last line without a newline
        is one too. Bytes that are not UTF-8 become U+FFFD."""
        while True:
            end = self._pending.find(b"\n")
            if end >= 0:
                line, self._pending = self._pending[:end], self._pending[end + 1 :]
            else:
                data = self._receive(65536, wait=True)
                if data:
                    self._pending += data
                    continue
                if not self._pending:
                    return
                line, self._pending = self._pending, b""
            yield line.removesuffix(b"\r").decode(errors="replace")

    def write_all(self, data):
        """Sends `data` (bytes, or str as UTF-8) to the client, waiting
        until it is all sent."""
        if isinstance(data, str):
            data = data.encode()
        data = bytes(data)
        try:
            for start in range(0, len(data), MAX_WRITE):
                self.output.blocking_write_and_flush(data[start : start + MAX_WRITE])
        except Err as error:
            raise _stream_error(error) from None

    @cached_property
    def woken(self):
        """For an instance started because a hibernated connection woke:
        why (`reason`, a `WakeReason`), with the `state` and
        `subscriptions` kept for it; None for a new connection."""
        return hibernation.woken()

    def hibernate(self, state, wake_after=None):
        """Asks the host to hibernate the connection once `run` returns,
        keeping `state` (bytes) for the instance that wakes, and to wake it
        after `wake_after` seconds if nothing else does first. Returns
        False if the host refused: the connection then stays live. (The
        rules are `hibernation` in the contract.)"""
        nanos = None if wake_after is None else int(wake_after * 1e9)
        try:
            hibernation.hibernate(state, nanos)
        except Err:
            return False
        return True

    def _take(self, size):
        """Up to `size` bytes of what `lines` read ahead."""
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def _receive(self, size, wait):
        """Up to `size` bytes from the input stream; b"" if nothing has
        come yet (without `wait`), None once the client is done sending."""
        try:
            if not wait:
                return self.input.read(size)
            data = b""
            while not data:  # a blocking read may still return nothing
                data = self.input.blocking_read(size)
            return data
        except Err as error:
            if isinstance(error.value, streams.StreamError_Closed):
                return None
            raise _stream_error(error) from None


def _stream_error(error):
    """`error`, an `Err` a stream raised, as an `Error`."""
    if isinstance(error.value, streams.StreamError_Closed):
        return Error("connection closed")
    return Error(error.value.value.to_debug_string())
