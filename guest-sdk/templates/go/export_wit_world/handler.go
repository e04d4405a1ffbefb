// Package export_wit_world is this plugin: an echo that sends back every
// byte the client sends, until the client is done sending.
//
// Portico calls Run once for every connection, in a fresh instance of the
// plugin, and closes the connection when Run returns. The package
// wit_component/portico is the SDK: it hides the component-model bindings
// (the module's other packages, generated from wit/).
package export_wit_world

import (
	"io"

	"wit_component/portico"
)

// Run serves one connection. The bindings call it, so its signature is
// theirs: portico.Serve hands the connection to echo, and reports the
// error echo returns as the connection's outcome.
func Run(info portico.Info, input portico.Input, output portico.Output) portico.Result {
	return portico.Serve(info, input, output, echo)
}

// echo copies what the client sends back to it. io.Copy returns nil once
// the client has closed its side, which ends the connection cleanly; to
// end it with an error the host logs, return one.
func echo(conn *portico.Connection) error {
	_, err := io.Copy(conn, conn)
	return err
}
