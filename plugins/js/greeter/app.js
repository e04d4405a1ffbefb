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
// reports one: what `run` throws is its `err`, which the host logs as the
// connection's outcome. The line `crash` calls what is not a function, to
// show what the host logs of a crash.

import { get } from 'wasi:config/store@0.2.0-rc.1';

// The most `blockingWriteAndFlush` takes at once.
const CHUNK = 4096;

function setting(name, fallback) {
  return get(name) ?? fallback;
}

function send(output, text) {
  const data = new TextEncoder().encode(text + '\n');
  for (let start = 0; start < data.length; start += CHUNK) {
    output.blockingWriteAndFlush(data.subarray(start, start + CHUNK));
  }
}

// The client's lines, without their ends, until it stops sending.
function* lines(input) {
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    let end;
    while ((end = pending.indexOf('\n')) < 0) {
      try {
        pending += decoder.decode(input.blockingRead(4096n), { stream: true });
      } catch (error) {
        if (error.payload?.tag === 'closed') {
          return;
        }
        throw error;
      }
    }
    yield pending.slice(0, end).trim();
    pending = pending.slice(end + 1);
  }
}

export function run(info, input, output) {
  const banner = setting('banner', 'hello');
  const greeting = setting('greeting', 'hello,');
  const quit = setting('quit', 'quit');

  send(output, banner);
  for (const name of lines(input)) {
    if (name === quit) {
      send(output, 'bye');
      return;
    }
    if (name === 'fail') {
      throw 'the client asked to fail';
    }
    if (name === 'crash') {
      undefined.crash();
    }
    send(output, `${greeting} ${name}`);
  }
}
