/*
 * The glue behind portico.h: the `run` export the bindings expect, over
 * `portico_run`, and the few stream and settings calls a handler needs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "portico.h"

/* The most one `blocking-write-and-flush` may carry. */
#define MAX_WRITE 4096

bool exports_handler_run(handler_connection_info_t *info, handler_borrow_input_stream_t input,
                         handler_borrow_output_stream_t output, handler_string_t *err) {
    portico_connection_t conn = {info, input, output};
    const char *failure = portico_run(&conn);
    /* Borrowed handles must be dropped before the export returns, or the
     * call traps. */
    wasi_io_streams_input_stream_drop_borrow(input);
    wasi_io_streams_output_stream_drop_borrow(output);
    if (failure) {
        handler_string_dup(err, failure);
        return false;
    }
    return true;
}

/* Drops the error resource a failed stream call may carry. */
static void drop_stream_error(wasi_io_streams_stream_error_t *error) {
    if (error->tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED) {
        wasi_io_error_error_drop_own(error->val.last_operation_failed);
    }
}

/* What a read call returned, into `buffer`: how many bytes, 0 at the
 * client's end, -1 on an error. */
static ptrdiff_t take_read(bool read, handler_list_u8_t *bytes,
                           wasi_io_streams_stream_error_t *error, void *buffer, size_t len) {
    if (!read) {
        int closed = error->tag == WASI_IO_STREAMS_STREAM_ERROR_CLOSED;
        drop_stream_error(error);
        return closed ? 0 : -1;
    }
    size_t n = bytes->len < len ? bytes->len : len;
    memcpy(buffer, bytes->ptr, n);
    handler_list_u8_free(bytes);
    return (ptrdiff_t)n;
}

ptrdiff_t portico_read(portico_connection_t *conn, void *buffer, size_t len) {
    handler_list_u8_t bytes;
    wasi_io_streams_stream_error_t error;
    bool read = wasi_io_streams_method_input_stream_blocking_read(conn->input, len, &bytes, &error);
    return take_read(read, &bytes, &error, buffer, len);
}

ptrdiff_t portico_try_read(portico_connection_t *conn, void *buffer, size_t len) {
    handler_list_u8_t bytes;
    wasi_io_streams_stream_error_t error;
    bool read = wasi_io_streams_method_input_stream_read(conn->input, len, &bytes, &error);
    ptrdiff_t n = take_read(read, &bytes, &error, buffer, len);
    return read && n == 0 && len > 0 ? PORTICO_WOULD_BLOCK : n;
}

int portico_write(portico_connection_t *conn, const void *data, size_t len) {
    const uint8_t *at = data;
    while (len > 0) {
        size_t n = len < MAX_WRITE ? len : MAX_WRITE;
        handler_list_u8_t chunk = {(uint8_t *)at, n};
        wasi_io_streams_stream_error_t error;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(conn->output, &chunk,
                                                                           &error)) {
            drop_stream_error(&error);
            return -1;
        }
        at += n;
        len -= n;
    }
    return 0;
}

char *portico_setting(const char *name) {
    handler_string_t key = {(uint8_t *)name, strlen(name)};
    handler_option_string_t value;
    wasi_config_store_error_t error;
    if (!wasi_config_store_get(&key, &value, &error)) {
        wasi_config_store_error_free(&error);
        return NULL;
    }
    if (!value.is_some) {
        return NULL;
    }
    char *copy = malloc(value.val.len + 1);
    if (copy) {
        memcpy(copy, value.val.ptr, value.val.len);
        copy[value.val.len] = '\0';
    }
    handler_string_free(&value.val);
    return copy;
}

const char *portico_hibernate(const void *state, size_t len, int64_t wake_after_ms) {
    static char refusal[256];
    handler_list_u8_t bytes = {(uint8_t *)state, len};
    portico_plugin_hibernation_duration_t wake_after = (uint64_t)wake_after_ms * 1000000;
    portico_plugin_hibernation_error_t error;
    if (portico_plugin_hibernation_hibernate(&bytes, wake_after_ms < 0 ? NULL : &wake_after,
                                             &error)) {
        return NULL;
    }
    switch (error.tag) {
    case PORTICO_PLUGIN_HIBERNATION_ERROR_STATE_TOO_LARGE:
        snprintf(refusal, sizeof refusal, "cannot hibernate: %.*s",
                 (int)error.val.state_too_large.len, (const char *)error.val.state_too_large.ptr);
        break;
    case PORTICO_PLUGIN_HIBERNATION_ERROR_TOO_MANY_HIBERNATED:
        snprintf(refusal, sizeof refusal,
                 "cannot hibernate: the service holds as many hibernated connections as it may");
        break;
    default:
        snprintf(refusal, sizeof refusal, "cannot hibernate: the host is shutting down");
    }
    portico_plugin_hibernation_error_free(&error);
    return refusal;
}

int portico_woken(portico_plugin_hibernation_wake_t *wake) {
    return portico_plugin_hibernation_woken(wake) ? 1 : 0;
}
