"""chat: a small self-hosted chat room, its wire protocol, server and terminal client.

Importing the package imports nothing heavy; the pieces live in their modules
(protocol, codec, room, outbox, server, client, ui, cli, testing).
"""

__version__ = "0.1.0"
