/*
 * Greeter in C, as a WASI command: a line protocol whose words come from
 * the operator's settings, which a command finds in its environment. The
 * same protocol as the Rust greeter:
 *
 * - `banner` (default `hello`): sent when a client connects;
 * - `greeting` (default `hello,`): each line is answered `<greeting> <line>`;
 * - `quit` (default `quit`): the line that ends the session, answered `bye`.
 *
 * The line `fail` ends it with an error instead, to show how a command
 * reports one: what it prints to stderr goes to the host's log, and a
 * failure status is the connection's outcome. The line `crash` aborts,
 * to show what the host logs of a crash (a trap).
 *
 * stdin reads the connection and stdout writes to it. stdout is not a
 * terminal, so C buffers it: flush after each answer.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *setting(const char *name, const char *fallback) {
    const char *value = getenv(name);
    return value ? value : fallback;
}

/* Removes the line end and surrounding spaces from `line`, in place. */
static char *trim(char *line) {
    while (*line == ' ' || *line == '\t') {
        line++;
    }
    size_t len = strlen(line);
    while (len > 0 && strchr(" \t\r\n", line[len - 1])) {
        line[--len] = '\0';
    }
    return line;
}

int main(void) {
    const char *banner = setting("banner", "hello");
    const char *greeting = setting("greeting", "hello,");
    const char *quit = setting("quit", "quit");

    printf("%s\n", banner);
    fflush(stdout);
    char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        const char *name = trim(line);
        if (strcmp(name, quit) == 0) {
            printf("bye\n");
            break;
        }
        if (strcmp(name, "fail") == 0) {
            fprintf(stderr, "the client asked to fail\n");
            return EXIT_FAILURE;
        }
        if (strcmp(name, "crash") == 0) {
            abort();
        }
        printf("%s %s\n", greeting, name);
        fflush(stdout);
    }
    return fflush(stdout) == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
