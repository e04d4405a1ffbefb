/*
 * A line counter in C: answers each line the client sends with how many it
 * has sent so far. Between lines the connection hibernates: the instance
 * is gone, and the count and any partial line travel in the state that the
 * next instance gets back (see portico_hibernate in portico.h).
 */
#include <stdio.h>
#include <string.h>

#include "portico.h"

/* The first byte of this build's state; the count follows, then the
 * partial line. */
#define STATE_FORMAT 1
#define COUNT_BYTES sizeof(uint64_t)
#define MAX_LINE 1024

const char *portico_run(portico_connection_t *conn) {
    uint64_t lines = 0;
    char pending[MAX_LINE];
    size_t pending_len = 0;
    portico_plugin_hibernation_wake_t wake;
    if (portico_woken(&wake)) {
        int draining = wake.reason == PORTICO_PLUGIN_HIBERNATION_WAKE_REASON_DRAINING;
        const uint8_t *state = wake.state.ptr;
        size_t len = wake.state.len;
        /* A state this build cannot read starts the count over. */
        if (len >= 1 + COUNT_BYTES && len - 1 - COUNT_BYTES <= MAX_LINE &&
            state[0] == STATE_FORMAT) {
            memcpy(&lines, state + 1, COUNT_BYTES);
            pending_len = len - 1 - COUNT_BYTES;
            memcpy(pending, state + 1 + COUNT_BYTES, pending_len);
        }
        portico_plugin_hibernation_wake_free(&wake);
        if (draining) {
            portico_write(conn, "bye\n", 4);
            return NULL;
        }
    }
    for (;;) {
        char *end;
        while ((end = memchr(pending, '\n', pending_len))) {
            char answer[32];
            int n = snprintf(answer, sizeof answer, "%llu\n", (unsigned long long)++lines);
            if (portico_write(conn, answer, (size_t)n) != 0) {
                return NULL;
            }
            size_t used = (size_t)(end - pending) + 1;
            memmove(pending, end + 1, pending_len - used);
            pending_len -= used;
        }
        if (pending_len == MAX_LINE) {
            return "a line longer than 1024 bytes";
        }
        ptrdiff_t n = portico_try_read(conn, pending + pending_len, MAX_LINE - pending_len);
        if (n == PORTICO_WOULD_BLOCK) {
            /* Nothing to do until the client sends: give the instance back,
             * or, if the host will not have it, wait here. */
            uint8_t state[1 + COUNT_BYTES + MAX_LINE] = {STATE_FORMAT};
            memcpy(state + 1, &lines, COUNT_BYTES);
            memcpy(state + 1 + COUNT_BYTES, pending, pending_len);
            if (!portico_hibernate(state, 1 + COUNT_BYTES + pending_len, -1)) {
                return NULL;
            }
            n = portico_read(conn, pending + pending_len, MAX_LINE - pending_len);
        }
        if (n == 0) {
            return NULL;
        }
        if (n < 0) {
            return "reading from the client failed";
        }
        pending_len += (size_t)n;
    }
}
