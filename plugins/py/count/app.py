"""A line counter in Python: answers each line the client sends with how
many it has sent so far. Between lines the connection hibernates: the
instance is gone, and the count and any partial line travel in the state
that the next instance gets back from `hibernation.woken()`.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import hibernation, streams

# The first byte of this build's state; the count follows, then the
# partial line.
STATE_FORMAT = b"\x01"
MAX_LINE = 1024


def restore(wake):
    """The count and partial line in a woken connection's state; a state
    this build cannot read starts the count over."""
    state = wake.state
    if state[:1] != STATE_FORMAT or len(state) < 9:
        return 0, b""
    return int.from_bytes(state[1:9], "little"), state[9:]


def read(input, wait):
    """What the client has sent: b"" if nothing yet (without `wait`), None
    at its end."""
    try:
        return input.blocking_read(4096) if wait else input.read(4096)
    except Err as error:
        if isinstance(error.value, streams.StreamError_Closed):
            return None
        raise


class WitWorld(wit_world.WitWorld):
    def run(self, info, input, output):
        lines, pending = 0, b""
        wake = hibernation.woken()
        if wake is not None:
            if wake.reason == hibernation.WakeReason.DRAINING:
                output.blocking_write_and_flush(b"bye\n")
                return
            lines, pending = restore(wake)
        while True:
            while b"\n" in pending:
                _, pending = pending.split(b"\n", 1)
                lines += 1
                output.blocking_write_and_flush(f"{lines}\n".encode())
            if len(pending) >= MAX_LINE:
                raise Err("a line longer than 1024 bytes")
            data = read(input, wait=False)
            if data == b"":
                # Nothing to do until the client sends: give the instance
                # back, or, if the host will not have it, wait here.
                state = STATE_FORMAT + lines.to_bytes(8, "little") + pending
                try:
                    hibernation.hibernate(state, None)
                    return
                except Err:
                    data = read(input, wait=True)
            if data is None:
                return
            pending += data
