/*
 * Portico's C SDK: write a handler as one function, `portico_run`, and
 * leave the component-model glue to this file and the bindings of the
 * contract.
 *
 * The bindings are what `wit-bindgen c guest-sdk/wit --world handler`
 * writes (handler.h, handler.c, handler_component_type.o); `cargo xtask
 * plugins` writes the same with the wit-bindgen-c crate. Compile them with
 * portico.c and your plugin for wasm32-wasi as a reactor, then make the
 * module a component with the WASI preview 1 reactor adapter:
 *
 *   clang --target=wasm32-wasi -mexec-model=reactor -I BINDINGS -I guest-sdk/c \
 *       BINDINGS/handler.c BINDINGS/handler_component_type.o \
 *       guest-sdk/c/portico.c plugin.c -o core.wasm
 *   wasm-tools component new core.wasm \
 *       --adapt wasi_snapshot_preview1.reactor.wasm -o plugin.wasm
 *
 * `host new --lang c NAME` writes a project with all of it (the bindings,
 * this SDK, the adapter of the host's wasmtime and a build.sh running these
 * two commands), which builds outside this repository.
 *
 * Anything else in the contract (key-value, pubsub, outbound sockets) is
 * in handler.h, called with `conn->input` and `conn->output` as the
 * bindings' stream handles.
 */
#ifndef PORTICO_H
#define PORTICO_H

#include <stddef.h>
#include <stdint.h>

#include "handler.h"

/* One connection, as `portico_run` gets it. */
typedef struct portico_connection {
    /* The connection's id (the host's log says `conn=ID`), and the
     * client's and the host's addresses, as `ip:port` (not NUL-ended:
     * print them with "%.*s", (int)len, ptr). */
    handler_connection_info_t *info;
    /* The client's bytes, and the way back to it: borrowed from the host
     * for the call, and dropped by portico.c when `portico_run` returns, as
     * the component model requires. */
    handler_borrow_input_stream_t input;
    handler_borrow_output_stream_t output;
} portico_connection_t;

/* What a plugin defines: serves one connection, returning when done with
 * it. Returns NULL when all went well, or an error message, which the host
 * logs as the connection's outcome (it is copied; it may be a literal). */
const char *portico_run(portico_connection_t *conn);

/* Reads at most `len` bytes into `buffer`, waiting until some arrive.
 * Returns how many, 0 once the client is done sending, or -1 on an error. */
ptrdiff_t portico_read(portico_connection_t *conn, void *buffer, size_t len);

/* What `portico_try_read` returns when nothing has come yet. */
#define PORTICO_WOULD_BLOCK (-2)

/* As `portico_read`, without waiting: PORTICO_WOULD_BLOCK if nothing has
 * come yet. */
ptrdiff_t portico_try_read(portico_connection_t *conn, void *buffer, size_t len);

/* Writes all `len` bytes at `data` to the client and flushes them.
 * Returns 0, or -1 once the client is gone. */
int portico_write(portico_connection_t *conn, const void *data, size_t len);

/* The setting `name` (from `--config NAME=VALUE` or the service's
 * settings), as a NUL-ended string to free(); NULL if it is not set. */
char *portico_setting(const char *name);

/* Hibernation (contract 0.4.0; its rules are `hibernation` in
 * guest-sdk/wit/handler.wit). A connection with nothing to do until its
 * client sends gives its instance back; the next instance's `portico_run`
 * learns from `portico_woken` that it woke, and gets the state back. */

/* Asks the host to hibernate the connection once `portico_run` returns
 * NULL, keeping the `len` bytes at `state` for the next instance, and to
 * wake it after `wake_after_ms` milliseconds if nothing else does first
 * (-1: no timer). Returns NULL, or why the host refused (the connection
 * then stays live; the text is the SDK's, valid until the next call). */
const char *portico_hibernate(const void *state, size_t len, int64_t wake_after_ms);

/* For an instance started because a hibernated connection woke: fills
 * `wake` (`reason`, one of PORTICO_PLUGIN_HIBERNATION_WAKE_REASON_*; the
 * `state`; the kept `subscriptions`) and returns 1; free it with
 * portico_plugin_hibernation_wake_free, which also drops the
 * subscriptions. Returns 0 for a new connection. */
int portico_woken(portico_plugin_hibernation_wake_t *wake);

#endif
