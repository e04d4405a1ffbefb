// Package portico is Portico's Go SDK: write a handler as one function
// that gets a *Connection, an io.Reader and io.Writer, and leave the
// component-model bindings to this package.
//
// Over the bindings alone, every plugin repeats the same steps: read until
// the input stream reports closed, cut writes into the 4,096 bytes
// BlockingWriteAndFlush takes at most, drop both borrowed streams before
// returning, and turn an error into the result's Err. Here a Connection
// reads and writes as any Go stream does, so io.Copy and bufio work, and
// Serve does the rest.
//
// A complete plugin, the package export_wit_world of the module the
// contract's Go bindings make (`wit-bindgen go wit --world handler`), with
// this package at wit_component/portico:
//
//	package export_wit_world
//
//	import (
//		"fmt"
//		"wit_component/portico"
//	)
//
//	func Run(info portico.Info, input portico.Input, output portico.Output) portico.Result {
//		return portico.Serve(info, input, output, func(conn *portico.Connection) error {
//			greeting := portico.Setting("greeting", "hello,")
//			lines := conn.Lines()
//			for lines.Scan() {
//				if _, err := fmt.Fprintf(conn, "%s %s\n", greeting, lines.Text()); err != nil {
//					return err
//				}
//			}
//			return lines.Err()
//		})
//	}
//
// Build it for WASI preview 1 as a library, record the world it
// implements, and make it a component with the preview 1 reactor adapter:
//
//	GOOS=wasip1 GOARCH=wasm go build -buildmode=c-shared -ldflags=-checklinkname=0 -o core.wasm .
//	wasm-tools component embed wit --world handler core.wasm -o embedded.wasm
//	wasm-tools component new embedded.wasm --adapt wasi_snapshot_preview1.reactor.wasm -o plugin.wasm
//
// Anything else in the contract (key-value, pubsub, hibernation, outbound
// sockets) is in the bindings' packages (wit_component/wasi_keyvalue_store,
// ...), and Connection.Input and Connection.Output are the bindings'
// streams.
package portico

import (
	"bufio"
	"errors"
	"io"

	"wit_component/portico_plugin_types"
	"wit_component/wasi_config_store"
	"wit_component/wasi_io_streams"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// What the bindings pass Run, and what it returns: Run's signature is
// theirs, `func Run(Info, Input, Output) Result`.
type (
	Info   = portico_plugin_types.ConnectionInfo
	Input  = *wasi_io_streams.InputStream
	Output = *wasi_io_streams.OutputStream
	Result = witTypes.Result[witTypes.Unit, string]
)

// The most one BlockingWriteAndFlush takes.
const maxWrite = 4096

// ErrClosed is what Write returns once the client is gone.
var ErrClosed = errors.New("connection closed")

// Serve serves one connection with handle, and returns what Run must:
// Ok if handle returns nil, else Err with the error's message, which the
// host logs as the connection's outcome (`outcome="error" error="..."`).
// It drops both streams before returning, as the component model requires
// of borrowed ones. A panic is a crash: Go prints it on stderr and the
// instance ends.
func Serve(info Info, input Input, output Output, handle func(conn *Connection) error) Result {
	defer input.Drop()
	defer output.Drop()
	conn := &Connection{
		ID:     info.Id,
		Peer:   info.PeerAddress,
		Local:  info.LocalAddress,
		Input:  input,
		Output: output,
	}
	if err := handle(conn); err != nil {
		return witTypes.Err[witTypes.Unit, string](err.Error())
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}

// Setting returns the setting name (`--config NAME=VALUE`, or the
// service's settings), or fallback if it is not set. (Portico's store
// never fails; another host's failure reads as not set.)
func Setting(name, fallback string) string {
	got := wasi_config_store.Get(name)
	if got.IsErr() {
		return fallback
	}
	return got.Ok().SomeOr(fallback)
}

// Connection is one client's connection: an io.Reader of what the client
// sends, an io.Writer back to it, and its details.
type Connection struct {
	// ID is the number the host's log gives the connection (`conn=ID`).
	ID uint64
	// Peer and Local are the client's address and the host's, as
	// `ip:port`.
	Peer, Local string
	// The bindings' streams, borrowed for the call to Run.
	Input  Input
	Output Output
}

// Read reads up to len(p) bytes from the client, waiting until some come;
// it returns io.EOF once the client is done sending.
func (c *Connection) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		read := c.Input.BlockingRead(uint64(len(p)))
		if read.IsErr() {
			return 0, streamError(read.Err(), io.EOF)
		}
		// A blocking read may still return nothing: read again.
		if data := read.Ok(); len(data) > 0 {
			return copy(p, data), nil
		}
	}
}

// Write sends all of p to the client, waiting until it is sent; it
// returns ErrClosed once the client is gone.
func (c *Connection) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		n := min(len(p)-written, maxWrite)
		if result := c.Output.BlockingWriteAndFlush(p[written : written+n]); result.IsErr() {
			return written, streamError(result.Err(), ErrClosed)
		}
		written += n
	}
	return written, nil
}

// Lines returns a scanner of the client's lines, without their line ends
// (`\n` or `\r\n`), until it is done sending; a last line without a
// newline is one too. Lines are at most bufio.MaxScanTokenSize (64 KiB)
// unless given a larger Buffer. The scanner reads ahead: read the
// connection through it alone.
func (c *Connection) Lines() *bufio.Scanner {
	return bufio.NewScanner(c)
}

// streamError is a stream's error as a Go error: closed if the stream is
// closed.
func streamError(err wasi_io_streams.StreamError, closed error) error {
	if err.Tag() == wasi_io_streams.StreamErrorClosed {
		return closed
	}
	failure := err.LastOperationFailed()
	defer failure.Drop()
	return errors.New(failure.ToDebugString())
}
