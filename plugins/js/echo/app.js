// A Portico plugin in JavaScript: echoes every byte back until the client
// closes.
//
// componentize-js builds it against the contract in guest-sdk/wit (the
// `handler` world): `run` is called once per connection, in a fresh
// instance, with the connection's details and its two streams. Returning
// ends the connection with `ok`; throwing ends it with the error logged.

// The most `blockingWriteAndFlush` takes at once.
const CHUNK = 4096;

export function run(info, input, output) {
  for (;;) {
    let data;
    try {
      data = input.blockingRead(65536n);
    } catch (error) {
      if (error.payload?.tag === 'closed') {
        return; // the client is done sending
      }
      throw error;
    }
    for (let start = 0; start < data.length; start += CHUNK) {
      output.blockingWriteAndFlush(data.subarray(start, start + CHUNK));
    }
  }
}
