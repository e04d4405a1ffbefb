// A Portico plugin in JavaScript: echoes every byte back until the client
// closes.
//
// componentize-js builds it against the contract in guest-sdk/wit (the
// `handler` world), with the SDK, guest-sdk/js/portico.js, beside it: `run`
// is called once per connection, in a fresh instance.

import { handler } from './portico.js';

export const run = handler((conn) => {
  for (let data; (data = conn.read()).length > 0; ) {
    conn.writeAll(data);
  }
});
