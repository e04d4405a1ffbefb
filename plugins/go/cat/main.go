// A plugin in Go with no SDK at all: a plain program for WASI (GOOS=wasip1),
// served by Portico as inetd would serve it. Its stdin reads the connection,
// its stdout writes to it, and what it prints to stderr goes to the host's
// log under the connection's id. Its arguments are the words of the
// service's `args` setting; its environment holds every setting and the
// client's address (TCPREMOTEIP, TCPREMOTEPORT, as tcpserver sets them).
//
// Built by `cargo xtask plugins`, then made a component with the WASI
// preview 1 command adapter.
package main

import (
	"fmt"
	"io"
	"os"
	"strings"
)

func main() {
	fmt.Fprintf(os.Stderr, "serving %s\n", os.Getenv("TCPREMOTEIP"))
	// Any arguments are a banner, written before the echo.
	if len(os.Args) > 1 {
		fmt.Println(strings.Join(os.Args[1:], " "))
	}
	if _, err := io.Copy(os.Stdout, os.Stdin); err != nil {
		fmt.Fprintf(os.Stderr, "echo failed: %v\n", err)
		os.Exit(1)
	}
}
