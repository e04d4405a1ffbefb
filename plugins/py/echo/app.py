"""A Portico plugin in Python: echoes every byte back until the client
closes.

componentize-py builds it against the contract in guest-sdk/wit (the
`handler` world), with the SDK, guest-sdk/python/portico.py: `run` is
called once per connection, in a fresh instance.
"""

import portico


def run(conn):
    while data := conn.read():
        conn.write_all(data)


WitWorld = portico.handler(run)
