// Greeter in JavaScript: a line protocol whose words come from the
// operator's settings (`--config KEY=VALUE`, or a service's `settings`
// table), read through `wasi:config/store`. The same protocol as the Rust
// greeter:
//
// - `banner` (default `hello`): sent when a client connects;
// - `greeting` (default `hello,`): each line is answered `<greeting> <line>`;
// - `quit` (default `quit`): the line that ends the session, answered `bye`.
//
// The line `fail` ends it with an error instead, to show how a plugin
// reports one: a `PorticoError` thrown ends `run` with `err`, which the host
// logs as the connection's outcome. The line `crash` calls what is not a
// function, to show what the host logs of a crash.

import { handler, setting, PorticoError } from './portico.js';

export const run = handler((conn) => {
  const banner = setting('banner', 'hello');
  const greeting = setting('greeting', 'hello,');
  const quit = setting('quit', 'quit');

  conn.writeAll(`${banner}\n`);
  for (const line of conn.lines()) {
    const name = line.trim();
    if (name === quit) {
      conn.writeAll('bye\n');
      return;
    }
    if (name === 'fail') {
      throw new PorticoError('the client asked to fail');
    }
    if (name === 'crash') {
      undefined.crash();
    }
    conn.writeAll(`${greeting} ${name}\n`);
  }
});
