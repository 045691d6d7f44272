"""Take README's screenshots of the web client: a desktop and a phone window on a small, lively room.

Run from the checkout: `.venv/bin/python scripts/web_screenshots.py` (needs /usr/bin/chromium and
playwright). It starts a server in this process on free loopback ports, has a few JSON-line
clients talk, logs a page in, and writes docs/web-desktop.png and docs/web-phone.png.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from chat.server.config import ServerConfig
from chat.server.tcp import ChatServer
from chat.testing import LineClient
from chat.wire.protocol import ChatMessage, ServerNotice, SessionToken, Users, Welcome

DOCS = Path(__file__).resolve().parent.parent / "docs"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


def main() -> int:
    server = ChatServer(ServerConfig(host="127.0.0.1", port=0, web_port=0))
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    serving.start()
    clients: list[LineClient] = []
    try:
        assert server.web_address is not None
        host, port = server.web_address

        def client(name: str, room: str = "lobby") -> LineClient:
            line = LineClient(server.server_address[:2])
            clients.append(line)
            line.send({"type": "join", "name": name, "room": room})
            line.expect(Welcome)
            return line

        alice = client("alice")
        alice.send({"type": "register", "password": "correct horse battery"})
        alice.expect(SessionToken)
        alice.send({"type": "join", "room": "dev"})
        alice.expect(Welcome)
        alice.send({"type": "topic", "room": "dev", "topic": "release friday: freeze at noon"})
        bob = client("bob", "dev")
        carol = client("carol", "dev")
        carol.send({"type": "away", "msg": "lunch"})
        carol.expect(ServerNotice)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            for width, height, name in ((1280, 720, "web-desktop.png"), (390, 760, "web-phone.png")):
                page = browser.new_context(viewport={"width": width, "height": height}).new_page()
                page.goto(f"http://{host}:{port}/")
                page.get_by_role("textbox", name="Name").fill("dana" if width > 400 else "erin")
                page.get_by_label("Room", exact=True).fill("dev")
                page.get_by_role("button", name="Join").click()
                expect(page.get_by_role("status")).to_have_attribute("data-state", "connected")
                me = "dana" if width > 400 else "erin"
                if width > 400:
                    box = page.get_by_role("textbox", name="Message")
                    box.fill("/join lobby")
                    box.press("Enter")
                    expect(page.get_by_role("heading", name="#lobby")).to_be_visible()
                    page.keyboard.press("Alt+1")  # back to #dev: the lobby's lines below count as unread
                    expect(page.get_by_role("heading", name="#dev")).to_be_visible()
                    for speaker, text in (
                        (alice, "morning! the build is green again"),
                        (bob, "nice. changelog draft: https://example.org/chat/changes"),
                        (carol, "I'll take the docs after lunch"),
                        (alice, f"{me}: can you try the web client on your phone?"),
                    ):
                        speaker.send({"type": "message", "room": "dev", "msg": text})
                        bob.expect(ChatMessage, msg=text)
                    bob.send({"type": "action", "room": "dev", "msg": "waves from the terminal"})
                    alice.send({"type": "message", "room": "lobby", "msg": "lunch, anyone?"})
                    bob.send({"type": "private", "to": me, "msg": "psst, the demo is at 3"})
                    bob.send({"type": "who", "room": "dev"})
                    bob.expect(Users)
                    expect(page.get_by_role("log").locator(".line").last).to_contain_text("waves")
                else:
                    page.get_by_role("textbox", name="Message").fill("on my phone now, looks good")
                    page.get_by_role("textbox", name="Message").press("Enter")
                    expect(page.get_by_role("log").locator(".line").last).to_contain_text("on my phone")
                page.evaluate("() => document.fonts.ready.then(() => true)")
                page.screenshot(path=str(DOCS / name))
            browser.close()  # the desktop page stays in the room while the phone's is taken
    finally:
        for line in clients:
            line.close()
        server.stop()
        serving.join()
    print("wrote", DOCS / "web-desktop.png", "and", DOCS / "web-phone.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
