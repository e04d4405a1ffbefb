// A Portico handler in Go: echoes every byte back until the client closes.
//
// `cargo xtask plugins` builds it with the contract's Go bindings (what
// `wit-bindgen go guest-sdk/wit --world handler` writes), whose package
// main calls Run here once per connection, in a fresh instance. Go builds
// it for WASI preview 1 as a library (`-buildmode=c-shared`), and the
// preview 1 reactor adapter makes it a component.
package export_wit_world

import (
	"wit_component/portico_plugin_types"
	"wit_component/wasi_io_streams"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// The most one BlockingWriteAndFlush takes.
const maxWrite = 4096

// Run serves one connection. The streams are borrowed from the host for
// the call: drop both before returning, or the call traps.
func Run(info portico_plugin_types.ConnectionInfo, input *wasi_io_streams.InputStream, output *wasi_io_streams.OutputStream) witTypes.Result[witTypes.Unit, string] {
	defer input.Drop()
	defer output.Drop()
	for {
		read := input.BlockingRead(65536)
		if read.IsErr() {
			if read.Err().Tag() == wasi_io_streams.StreamErrorClosed {
				return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
			}
			return witTypes.Err[witTypes.Unit, string]("reading from the client failed")
		}
		for data := read.Ok(); len(data) > 0; {
			n := min(len(data), maxWrite)
			if output.BlockingWriteAndFlush(data[:n]).IsErr() {
				return witTypes.Err[witTypes.Unit, string]("the client went away")
			}
			data = data[n:]
		}
	}
}
