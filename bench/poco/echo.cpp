// The POCO baseline: an echo server in the pattern Portico started from,
// POCO's thread-per-connection TCPServer with a TCPServerConnection::run()
// per accepted socket. Built by `cargo xtask bench` against Debian's
// libpoco-dev; the benchmark starts it with `--listen ADDRESS:PORT` and
// reads the `listening on` line, as it does for the other servers.

#include <Poco/Net/ServerSocket.h>
#include <Poco/Net/SocketAddress.h>
#include <Poco/Net/StreamSocket.h>
#include <Poco/Net/TCPServer.h>
#include <Poco/Net/TCPServerConnection.h>
#include <Poco/Net/TCPServerConnectionFactory.h>
#include <Poco/Net/TCPServerParams.h>
#include <Poco/ThreadPool.h>

#include <cstring>
#include <iostream>
#include <string>
#include <thread>

namespace {

class EchoConnection : public Poco::Net::TCPServerConnection {
public:
    using Poco::Net::TCPServerConnection::TCPServerConnection;

    void run() override {
        Poco::Net::StreamSocket& stream = socket();
        stream.setNoDelay(true);
        char buffer[64 * 1024];
        try {
            for (;;) {
                int received = stream.receiveBytes(buffer, sizeof buffer);
                if (received <= 0) return;
                for (int sent = 0; sent < received;) {
                    sent += stream.sendBytes(buffer + sent, received - sent);
                }
            }
        } catch (const Poco::Exception&) {
            // The client went away: the connection ends, as any echo's would.
        }
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3 || std::strcmp(argv[1], "--listen") != 0) {
        std::cerr << "usage: poco-echo --listen ADDRESS:PORT\n";
        return 2;
    }
    try {
        Poco::Net::ServerSocket listener(Poco::Net::SocketAddress(argv[2]), 1024);
        // One thread per live connection, as TCPServer is meant to run: the
        // pool grows to the benchmark's largest count of held connections.
        const int most_connections = 20000;
        Poco::ThreadPool pool(16, most_connections);
        auto* params = new Poco::Net::TCPServerParams;
        params->setMaxThreads(most_connections);
        params->setMaxQueued(most_connections);
        Poco::Net::TCPServer server(
            new Poco::Net::TCPServerConnectionFactoryImpl<EchoConnection>(), pool, listener, params);
        server.start();
        std::cout << "listening on " << listener.address().toString() << std::endl;
        for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
    } catch (const Poco::Exception& error) {
        std::cerr << "poco-echo: " << error.displayText() << "\n";
        return 1;
    }
}
