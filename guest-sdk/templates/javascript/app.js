// An echo plugin for Portico: it sends back every byte the client sends,
// until the client is done sending.
//
// Portico calls `run` once for every connection, in a fresh instance of
// this plugin, and closes the connection when `run` returns. `portico.js`,
// beside this file, is the SDK: it hides the component-model bindings
// that componentize-js generates from `wit/`.

import { handler } from './portico.js';

export const run = handler((conn) => {
  // `read()` waits for the client's next bytes, and returns an empty array
  // once the client has closed its side: that ends the loop, then the
  // connection.
  let data;
  while ((data = conn.read()).length > 0) {
    conn.writeAll(data);
  }
  // To end with an error the host logs instead, throw new PorticoError('why')
  // (import it from './portico.js' too).
});
