"""A Portico plugin in Python: echoes every byte back until the client
closes.

componentize-py builds it against the contract in guest-sdk/wit (the
`handler` world): `WitWorld.run` is called once per connection, in a fresh
instance, with the connection's details and its two streams.
"""

import wit_world
from componentize_py_types import Err
from wit_world.imports import streams

# The most `blocking_write_and_flush` takes at once.
CHUNK = 4096


class WitWorld(wit_world.WitWorld):
    def run(self, info, input, output):
        while True:
            try:
                data = input.blocking_read(65536)
            except Err as error:
                if isinstance(error.value, streams.StreamError_Closed):
                    return  # the client is done sending
                raise
            for start in range(0, len(data), CHUNK):
                output.blocking_write_and_flush(data[start : start + CHUNK])
