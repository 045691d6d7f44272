"""chat: a small self-hosted chat room, its wire protocol, server and terminal client.

Importing the package imports nothing heavy (only chat.compiled, which decides whether the
compiled build of the hot modules runs); the pieces live in their modules (protocol, codec,
room, outbox, server, client, ui, cli, testing).
"""

import os as _os

from chat.compiled import guard as _guard

__version__ = "0.1.0"
#: Which build runs (chat.compiled): the hot modules compiled with mypyc, or pure Python, and why.
BUILD = _guard(_os.path.dirname(_os.path.abspath(__file__)))
