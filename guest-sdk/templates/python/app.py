"""An echo plugin for Portico: it sends back every byte the client sends,
until the client is done sending.

Portico calls `run` once for every connection, in a fresh instance of
this plugin, and closes the connection when `run` returns. `portico.py`,
beside this file, is the SDK: it hides the component-model bindings that
componentize-py generates from `wit/`.
"""

import portico


def run(conn):
    # `read` waits for the client's next bytes, and returns b"" once the
    # client has closed its side: that ends the loop, then the connection.
    while data := conn.read():
        conn.write_all(data)
    # To end with an error the host logs instead, raise portico.Error("why").


# componentize-py looks for a class `WitWorld` in this module:
# `portico.handler` makes one that calls `run`.
WitWorld = portico.handler(run)
