/*
 * A Portico handler in C: echoes every byte back until the client closes.
 * It implements `portico_run` from guest-sdk/c/portico.h; the SDK and the
 * contract's C bindings do the rest (see portico.h for how to build one).
 */
#include "portico.h"

const char *portico_run(portico_connection_t *conn) {
    char buffer[16384];
    ptrdiff_t n;
    while ((n = portico_read(conn, buffer, sizeof buffer)) > 0) {
        if (portico_write(conn, buffer, (size_t)n) != 0) {
            return "the client went away";
        }
    }
    return n == 0 ? NULL : "reading from the client failed";
}
