// A Portico handler in Go: echoes every byte back until the client closes.
//
// `cargo xtask plugins` builds it with the contract's Go bindings (what
// `wit-bindgen go guest-sdk/wit --world handler` writes), whose package
// main calls Run here once per connection, in a fresh instance, and with
// the SDK, guest-sdk/go/portico, as package wit_component/portico. Go
// builds it for WASI preview 1 as a library (`-buildmode=c-shared`), and
// the preview 1 reactor adapter makes it a component.
package export_wit_world

import (
	"io"

	"wit_component/portico"
)

// Run serves one connection.
func Run(info portico.Info, input portico.Input, output portico.Output) portico.Result {
	return portico.Serve(info, input, output, func(conn *portico.Connection) error {
		_, err := io.Copy(conn, conn)
		return err
	})
}
