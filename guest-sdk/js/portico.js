// Portico's JavaScript SDK: write a plugin as one function that gets a
// `Connection`, and leave the component-model bindings to this module.
//
// Over the bindings alone, every plugin repeats the same steps: read until
// the input stream throws `closed`, split lines, cut writes into the 4,096
// bytes `blockingWriteAndFlush` takes at most, and throw what `run` should
// report. Here they are `conn.read()`, `conn.lines()` and `conn.writeAll()`,
// and `throw new PorticoError(...)`.
//
// A complete plugin, in `app.js` beside this file:
//
//   import { handler, setting, PorticoError } from './portico.js';
//
//   export const run = handler((conn) => {
//     const greeting = setting('greeting', 'hello,');
//     for (const line of conn.lines()) {
//       if (line === 'fail') {
//         throw new PorticoError('the client asked to fail');
//       }
//       conn.writeAll(`${greeting} ${line}\n`);
//     }
//   });
//
// Build it with componentize-js against the contract (the folder `wit`,
// world `handler`; Portico serves raw TCP, so no wasi:http):
//
//   componentize-js app.js --wit wit --world-name handler \
//       --disable http fetch-event --out plugin.wasm
//
// Anything else in the contract is imported by its WIT name
// (`import { open } from 'wasi:keyvalue/store@0.2.0-draft'`), and
// `conn.input` and `conn.output` are the bindings' streams.

import { get } from 'wasi:config/store@0.2.0-rc.1';

// The most one `blockingWriteAndFlush` takes.
const MAX_WRITE = 4096;

// Thrown to end `run` with an error: the host logs its message as the
// connection's outcome (`outcome="error" error="MESSAGE"`). The SDK throws
// it too when a stream fails, or the client is gone.
export class PorticoError extends Error {
  constructor(message) {
    super(message);
    this.name = 'PorticoError';
  }
}

// Makes `serve(conn)` the plugin: export what it returns as `run`.
// `serve` is called once per connection, in a fresh instance, with a
// `Connection`. Returning ends the connection with `ok`; throwing a
// `PorticoError` (or a string) ends it with `err(message)`; any other
// exception is a crash, which the host logs as a trap.
export function handler(serve) {
  return (info, input, output) => {
    try {
      serve(new Connection(info, input, output));
    } catch (error) {
      // The bindings make a thrown string `run`'s `err`.
      if (error instanceof PorticoError) {
        throw error.message;
      }
      if (typeof error !== 'string') {
        // A crash: the bindings would only say it is not a string. The
        // host reads `Uncaught ...` and its indented stack as the report
        // of an uncaught exception, and names it on the `closed` line.
        const stack = (error?.stack ?? '').trimEnd().split('\n').filter((frame) => frame);
        console.error([`Uncaught ${error}`, ...stack.map((frame) => `  ${frame}`)].join('\n'));
      }
      throw error;
    }
  };
}

// The setting `name` (`--config NAME=VALUE`, or the service's
// `settings`), or `fallback` if it is not set.
export function setting(name, fallback) {
  return get(name) ?? fallback;
}

// One client's connection: its bytes both ways, and its details. `id` is
// the number the host's log gives it (`conn=ID`, a BigInt); `peer` and
// `local` are the client's address and the host's, as `ip:port`.
export class Connection {
  #pending = new Uint8Array(0);

  constructor(info, input, output) {
    this.id = info.id;
    this.peer = info.peerAddress;
    this.local = info.localAddress;
    this.input = input;
    this.output = output;
  }

  // Up to `size` bytes from the client (a Uint8Array), waiting until some
  // come; an empty one once it is done sending.
  read(size = 65536) {
    if (this.#pending.length > 0) {
      const data = this.#pending.subarray(0, size);
      this.#pending = this.#pending.subarray(data.length);
      return data;
    }
    return this.#receive(size) ?? new Uint8Array(0);
  }

  // The client's lines, as strings without their line ends (`\n` or
  // `\r\n`), until it is done sending; a last line without a newline is
  // one too. Bytes that are not UTF-8 become U+FFFD.
  *lines() {
    const decoder = new TextDecoder();
    for (;;) {
      let line;
      const end = this.#pending.indexOf(10); // '\n'
      if (end >= 0) {
        line = this.#pending.subarray(0, end);
        this.#pending = this.#pending.subarray(end + 1);
      } else {
        const data = this.#receive(65536);
        if (data !== null) {
          this.#pending = concat(this.#pending, data);
          continue;
        }
        if (this.#pending.length === 0) {
          return;
        }
        line = this.#pending;
        this.#pending = new Uint8Array(0);
      }
      const text = decoder.decode(line);
      yield text.endsWith('\r') ? text.slice(0, -1) : text;
    }
  }

  // Sends `data` (a Uint8Array, or a string as UTF-8) to the client,
  // waiting until it is all sent.
  writeAll(data) {
    if (typeof data === 'string') {
      data = new TextEncoder().encode(data);
    }
    try {
      for (let start = 0; start < data.length; start += MAX_WRITE) {
        this.output.blockingWriteAndFlush(data.subarray(start, start + MAX_WRITE));
      }
    } catch (error) {
      throw streamError(error);
    }
  }

  // Up to `size` bytes from the input stream, waiting until some come;
  // null once the client is done sending.
  #receive(size) {
    try {
      let data;
      do {
        data = this.input.blockingRead(BigInt(size));
      } while (data.length === 0); // a blocking read may still return nothing
      return data;
    } catch (error) {
      if (error.payload?.tag === 'closed') {
        return null;
      }
      throw streamError(error);
    }
  }
}

// A stream's error, as a PorticoError (any other error as it is).
function streamError(error) {
  switch (error.payload?.tag) {
    case 'closed':
      return new PorticoError('connection closed');
    case 'last-operation-failed':
      return new PorticoError(error.payload.val.toDebugString());
    default:
      return error;
  }
}

function concat(head, tail) {
  const joined = new Uint8Array(head.length + tail.length);
  joined.set(head);
  joined.set(tail, head.length);
  return joined;
}
