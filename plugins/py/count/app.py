"""A line counter in Python: answers each line the client sends with how
many it has sent so far. Between lines the connection hibernates: the
instance is gone, and the count and any partial line travel in the state
that the next instance gets back from `conn.woken`.
"""

import portico

# The first byte of this build's state; the count follows, then the
# partial line.
STATE_FORMAT = b"\x01"
MAX_LINE = 1024


def restore(state):
    """The count and partial line in a woken connection's state; a state
    this build cannot read starts the count over."""
    if state[:1] != STATE_FORMAT or len(state) < 9:
        return 0, b""
    return int.from_bytes(state[1:9], "little"), state[9:]


def run(conn):
    lines, pending = 0, b""
    if conn.woken is not None:
        if conn.woken.reason == portico.WakeReason.DRAINING:
            conn.write_all("bye\n")
            return
        lines, pending = restore(conn.woken.state)
    while True:
        while b"\n" in pending:
            _, pending = pending.split(b"\n", 1)
            lines += 1
            conn.write_all(f"{lines}\n")
        if len(pending) >= MAX_LINE:
            raise portico.Error("a line longer than 1024 bytes")
        data = conn.try_read(4096)
        if data is None:
            # Nothing to do until the client sends: give the instance
            # back, or, if the host will not have it, wait here.
            state = STATE_FORMAT + lines.to_bytes(8, "little") + pending
            if conn.hibernate(state):
                return
            data = conn.read(4096)
        if not data:
            return
        pending += data


WitWorld = portico.handler(run)
