"""The naive seed-style server, kept only as the benchmark's baseline.

ThreadingTCPServer; every message is sent with sendall to each client in
turn, under one lock. It speaks just enough of protocol.md for chat-bench
(join, message) and is not for use.
"""

import argparse
import json
import socketserver
import threading
from datetime import UTC, datetime


class NaiveServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address):
        super().__init__(address, NaiveHandler)
        self.lock = threading.Lock()
        self.clients = {}
        self.last_id = 0


class NaiveHandler(socketserver.StreamRequestHandler):
    def handle(self):
        server = self.server
        name = None
        try:
            for line in self.rfile:
                message = json.loads(line)
                if message.get("type") == "join":
                    name = message["name"]
                    with server.lock:
                        server.clients[self.request] = name
                        users = list(server.clients.values())
                    welcome = {"type": "welcome", "name": name, "users": users, "history": 0}
                    self.request.sendall(json.dumps(welcome).encode() + b"\n")
                    continue
                with server.lock:
                    server.last_id += 1
                    out = {
                        "type": "message",
                        "id": server.last_id,
                        "name": name,
                        "msg": message["msg"],
                        "time": datetime.now(UTC).isoformat(),
                    }
                    data = json.dumps(out).encode() + b"\n"
                    for client in list(server.clients):
                        try:
                            client.sendall(data)
                        except OSError:
                            server.clients.pop(client, None)
        except (OSError, ValueError):
            pass
        finally:
            with server.lock:
                server.clients.pop(self.request, None)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=7778)
    args = parser.parse_args()
    NaiveServer(("127.0.0.1", args.port)).serve_forever()
