/*
 * {{name}}: a Portico plugin in C. The host calls `portico_run` once per
 * accepted connection, in a fresh instance of this plugin, and closes the
 * connection when it returns.
 *
 * This one echoes every byte back until the client closes: change
 * `portico_run` to make it yours. portico.h has the rest: settings
 * (`portico_setting`), reads that do not wait, hibernation.
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
    /* NULL is success; a message is logged as the connection's error. */
    return n == 0 ? NULL : "reading from the client failed";
}
