// Greeter in Go, as a WASI command: a line protocol whose words come from
// the operator's settings, which a command finds in its environment. The
// same protocol as the Rust greeter:
//
//   - banner (default "hello"): sent when a client connects;
//   - greeting (default "hello,"): each line is answered "<greeting> <line>";
//   - quit (default "quit"): the line that ends the session, answered "bye".
//
// The line "fail" ends it with an error instead, to show how a command
// reports one: what it prints to stderr goes to the host's log, and a
// failure status is the connection's outcome. The line "crash" panics, to
// show what the host logs of a crash: Go prints the panic to stderr and
// exits with a failure status.
//
// stdin reads the connection and stdout writes to it.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
)

func setting(name, fallback string) string {
	if value, ok := os.LookupEnv(name); ok {
		return value
	}
	return fallback
}

func main() {
	banner := setting("banner", "hello")
	greeting := setting("greeting", "hello,")
	quit := setting("quit", "quit")

	fmt.Println(banner)
	lines := bufio.NewScanner(os.Stdin)
	for lines.Scan() {
		name := strings.TrimSpace(lines.Text())
		if name == quit {
			fmt.Println("bye")
			return
		}
		if name == "fail" {
			fmt.Fprintln(os.Stderr, "the client asked to fail")
			os.Exit(1)
		}
		if name == "crash" {
			panic("the client asked to crash")
		}
		fmt.Println(greeting, name)
	}
}
