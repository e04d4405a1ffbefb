/*
 * A plugin in C with no SDK at all: a plain program for WASI, served by
 * Portico as inetd would serve it. Its stdin reads the connection, its
 * stdout writes to it, and what it prints to stderr goes to the host's log
 * under the connection's id. Its arguments are the words of the service's
 * `args` setting; its environment holds every setting and the client's
 * address (TCPREMOTEIP, TCPREMOTEPORT, as tcpserver sets them).
 *
 * Built by `cargo xtask plugins`: clang with wasi-libc, then made a
 * component with the WASI preview 1 command adapter.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Writes all of `len` bytes at `data` to stdout; 0 on success. */
static int write_all(const char *data, size_t len) {
    while (len > 0) {
        ssize_t written = write(STDOUT_FILENO, data, len);
        if (written < 0) {
            return -1;
        }
        data += written;
        len -= (size_t)written;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *client = getenv("TCPREMOTEIP");
    fprintf(stderr, "serving %s\n", client ? client : "an unknown client");

    /* Any arguments are a banner, written before the echo. */
    for (int i = 1; i < argc; i++) {
        if (write_all(argv[i], strlen(argv[i])) != 0 ||
            write_all(i + 1 < argc ? " " : "\n", 1) != 0) {
            return EXIT_FAILURE;
        }
    }

    char buffer[16384];
    ssize_t n;
    while ((n = read(STDIN_FILENO, buffer, sizeof buffer)) > 0) {
        if (write_all(buffer, (size_t)n) != 0) {
            return EXIT_FAILURE;
        }
    }
    return n < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
