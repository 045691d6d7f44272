"""The web client in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium, never a download).

People in separate browser contexts (each its own storage, as two computers) chat with each other
and with JSON-line clients on the server's main port, through the page's accessible names. Skipped
without a browser, except where CHAT_REQUIRE_BROWSER says it must run (.ci/run sets it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from chat.client.connection import ChatClient
from chat.client.marks import SharedReadMarkers
from chat.server.config import ServerConfig
from chat.testing import TIMEOUT, LineClient, restartable_port
from chat.wire.protocol import ChatMessage, Left, MarkRead, PrivateMessage, ReadMarker

T = TypeVar("T")

CHROMIUM = os.environ.get("CHAT_CHROMIUM", "/usr/bin/chromium")
#: What the browser is started with: no sandbox (CI runs as root in a container), no GPU, no traffic of its own.
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage"]


def _missing(reason: str) -> None:
    if os.environ.get("CHAT_REQUIRE_BROWSER"):
        pytest.fail(f"CHAT_REQUIRE_BROWSER is set but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    expect.set_options(timeout=TIMEOUT * 1000)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield launched
        launched.close()


@pytest.fixture
def web(start_chat_server: Callable[..., Any], browser: Any) -> Iterator[Callable[..., Any]]:
    """`web(**config)`: a server with a web port; then `.page(name=None, width=1200)` opens a
    person's page in a browser context of its own (logged in as `name` if given)."""
    contexts: list[Any] = []
    clients: list[LineClient] = []

    class Web:
        def __init__(self, server: Any) -> None:
            self.server = server
            host, port = server.web_address
            self.url = f"http://{host}:{port}/"

        def context(self, width: int = 1200, height: int = 760) -> Any:
            context = browser.new_context(viewport={"width": width, "height": height})
            context.set_default_timeout(TIMEOUT * 1000)
            contexts.append(context)
            return context

        def page(self, name: str | None = None, width: int = 1200, context: Any = None) -> Any:
            page = (context or self.context(width)).new_page()
            page.crashes = []
            page.on("pageerror", lambda error: page.crashes.append(str(error)))
            # Anything the page's own policy blocked is a bug of the page (an inline style or script).
            page.on("console", lambda m: "Content Security Policy" in m.text and page.crashes.append(m.text))
            page.goto(self.url)
            if name is not None:
                login(page, name)
            return page

        def stop(self) -> None:
            self.stopped = (self.server.config, self.server.port, self.server.web_address[1])
            self.server.stop(TIMEOUT)

        def start(self) -> None:
            """Start the stopped server again on the same ports, with the same configuration."""
            config, port, web_port = self.stopped
            self.server = start_chat_server(dataclasses.replace(config, web_port=web_port), port=port)

        def client(self, name: str) -> LineClient:
            client = LineClient(self.server.address)
            clients.append(client)
            client.join(name)
            return client

    def start(restartable: bool = False, **config: Any) -> Web:
        """A server with the web client; `restartable`: on ports that stay free while it is stopped."""
        if restartable:
            server = start_chat_server(ServerConfig(web_port=restartable_port(), **config), port=restartable_port())
        else:
            server = start_chat_server(ServerConfig(web_port=0, **config))
        return Web(server)

    yield start
    for context in contexts:
        for page in context.pages:
            assert not getattr(page, "crashes", []), f"the page's script failed: {page.crashes}"
        context.close()
    for client in clients:
        client.close()


def login(page: Any, name: str, password: str = "") -> None:
    from playwright.sync_api import expect

    page.get_by_role("textbox", name="Name").fill(name)
    if password:
        page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("status")).to_have_attribute("data-state", "connected")


def say(page: Any, text: str) -> None:
    box = page.get_by_role("textbox", name="Message")
    box.fill(text)
    box.press("Enter")


def log_lines(page: Any) -> Any:
    return page.get_by_role("log").locator(".line")


def room_entry(page: Any, label: str) -> Any:
    return page.get_by_role("navigation", name="Rooms").get_by_role("button", name=label)


def test_two_people_in_browsers_chat_with_each_other_and_a_json_client(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page("alice")
    bob = site.page("bob")
    carol = site.client("carol")
    say(alice, "hello from alice é")
    expect(log_lines(bob).last).to_contain_text("alice: hello from alice é")
    assert carol.expect(ChatMessage, name="alice").msg == "hello from alice é"
    carol.say("hi both, from the terminal")
    expect(log_lines(alice).last).to_contain_text("carol: hi both, from the terminal")
    expect(log_lines(bob).last).to_contain_text("carol: hi both, from the terminal")
    members = alice.get_by_role("complementary", name="Members")
    for name in ("alice", "bob", "carol"):
        expect(members.get_by_text(name, exact=True)).to_be_visible()


def test_rooms_show_unread_counts_and_mentions_until_opened(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page("alice")
    say(alice, "/join #dev")  # the # is how rooms are shown; it is no part of the name
    expect(alice.get_by_role("heading", name="#dev")).to_be_visible()
    expect(alice.get_by_role("complementary", name="Members").get_by_text("alice")).to_be_visible()
    expect(alice.locator("#rooms li.parted")).to_have_count(0)  # both rooms shown as joined
    carol = site.client("carol")
    carol.say("something in the lobby")
    carol.say("alice: are you there?")
    lobby = room_entry(alice, "#lobby 2 unread, mentioned")
    expect(lobby).to_be_visible()
    expect(alice).to_have_title("(2) chat")
    alice.keyboard.press("Alt+1")
    expect(alice.get_by_role("heading", name="#lobby")).to_be_visible()
    expect(log_lines(alice).last).to_contain_text("carol: alice: are you there?")
    expect(log_lines(alice).last).to_have_class("line message mention")
    expect(room_entry(alice, "#lobby")).to_be_visible()
    expect(alice).to_have_title("chat")


def test_a_private_conversation_between_a_page_and_a_terminal(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page("alice")
    carol = site.client("carol")
    carol.send({"type": "private", "to": "alice", "msg": "psst, just you"})
    entry = room_entry(alice, "@carol 1 unread, mentioned")
    expect(entry).to_be_visible()
    entry.click()
    expect(log_lines(alice).last).to_contain_text("carol: psst, just you")
    say(alice, "got it")
    reply = carol.expect(PrivateMessage, name="alice")
    assert (reply.to, reply.msg) == ("carol", "got it")
    expect(log_lines(alice).last).to_contain_text("alice: got it")


def test_a_reload_comes_back_without_typing_and_shows_each_missed_line_once(web):
    from playwright.sync_api import expect

    site = web()
    context = site.context()
    alice = site.page("alice", context=context)
    carol = site.client("carol")
    carol.say("before you left")
    expect(log_lines(alice).last).to_contain_text("before you left")
    alice.close()
    for i in range(3):
        carol.say(f"missed {i}")
    again = site.page(context=context)  # the same browser profile: its saved session
    expect(again.get_by_role("status")).to_have_attribute("data-state", "connected")
    log = again.get_by_role("log")
    expect(log.locator(".line").last).to_contain_text("missed 2")
    expect(log.get_by_text("before you left")).to_have_count(1)  # fetched above, as context
    for i in range(3):
        expect(log.get_by_text(f"missed {i}")).to_have_count(1)
    texts = log.locator(".line, .marker").all_inner_texts()
    assert "new since you left" in texts, (texts, again.evaluate("localStorage.getItem('chat.session')"))
    marker = texts.index("new since you left")
    assert "missed 0" in texts[marker + 1] and "before you left" in " ".join(texts[:marker]), texts
    carol.say("and now live")
    expect(log.locator(".line").last).to_contain_text("and now live")
    expect(log.get_by_text("missed 0")).to_have_count(1)


PAYLOADS = [
    '<img src=x onerror="window.__xss=1">',
    "<script>window.__xss=2</script>",
    '"><svg onload=window.__xss=3>',
    "javascript:window.__xss=4",
]


def test_markup_from_the_network_is_shown_as_text_and_no_script_runs(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page("alice")
    mallory = site.client("<b>m</b>")  # a name with markup in it is a valid name
    for payload in PAYLOADS:
        mallory.say(payload)
    mallory.send({"type": "topic", "room": "lobby", "topic": "<i onmouseover=window.__xss=5>topic</i>"})
    mallory.send({"type": "private", "to": "alice", "msg": "<img src=x onerror=window.__xss=6>"})
    log = alice.get_by_role("log")
    for payload in PAYLOADS:
        expect(log.get_by_text(payload, exact=True)).to_have_count(1)
    expect(alice.locator("#topic")).to_have_text("<i onmouseover=window.__xss=5>topic</i>")
    expect(room_entry(alice, "@<b>m</b> 1 unread, mentioned")).to_be_visible()
    expect(log.get_by_text("<b>m</b>", exact=True).first).to_be_visible()
    assert alice.locator("#app img, #app script, #app svg:not(#members-toggle svg), #app b, #app i").count() == 0
    assert alice.get_by_role("link").count() == 0  # javascript: is no link
    assert alice.evaluate("window.__xss") is None


def test_links_open_safely(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page("alice")
    site.client("carol").say("see https://example.org/docs?a=1, then")
    link = alice.get_by_role("link", name="https://example.org/docs?a=1")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(link).to_have_attribute("href", "https://example.org/docs?a=1")


def test_a_2000_line_burst_renders_quickly_into_a_bounded_page(web, record_property):
    from playwright.sync_api import expect

    site = web(flood_rate=0)
    alice = site.page("alice")
    carol = site.client("carol")
    started = time.perf_counter()
    carol.say_all(f"burst {i} " + "x" * 40 for i in range(2000))
    expect(log_lines(alice).last).to_contain_text("burst 1999", timeout=TIMEOUT * 3000)
    rendered = time.perf_counter() - started
    rendered_lines = log_lines(alice).count()
    elements = alice.evaluate("document.getElementsByTagName('*').length")
    heap = alice.evaluate("performance.memory ? performance.memory.usedJSHeapSize : 0")
    record_property("burst_render_seconds", round(rendered, 3))
    record_property("burst_dom_elements", elements)
    print(f"\n2,000-line burst: {rendered:.2f} s to the last line; {rendered_lines} lines in the log, "
          f"{elements} elements in the page, JS heap {heap / 1e6:.1f} MB")
    assert rendered_lines <= 500, "the page keeps a bounded number of lines"
    assert elements < 3000
    say(alice, "still responsive")
    expect(log_lines(alice).last).to_contain_text("alice: still responsive")


def test_a_phone_sized_page_never_scrolls_sideways(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page("alice", width=390)
    carol = site.client("carol")
    carol.say("a" * 300)
    carol.say("https://example.org/" + "long/" * 60)
    expect(log_lines(alice).last).to_contain_text("https://example.org/long/")
    assert alice.evaluate("document.documentElement.scrollWidth") <= 390
    assert alice.evaluate("document.getElementById('scroller').scrollWidth") <= 390
    alice.get_by_role("button", name="Rooms and conversations").click()
    expect(room_entry(alice, "#lobby")).to_be_visible()
    alice.keyboard.press("Escape")
    expect(alice.get_by_role("navigation", name="Rooms")).to_be_hidden()


def test_the_keyboard_alone_logs_in_sends_switches_and_completes(web):
    from playwright.sync_api import expect

    site = web()
    carol = site.client("carol")
    alice = site.page()
    alice.keyboard.type("alice")  # the Name box has the focus
    alice.keyboard.press("Enter")
    expect(alice.get_by_role("status")).to_have_attribute("data-state", "connected")
    expect(alice.get_by_role("textbox", name="Message")).to_be_focused()
    alice.keyboard.type("first line")
    alice.keyboard.press("Shift+Enter")
    alice.keyboard.type("second line")
    alice.keyboard.press("Enter")
    assert carol.expect(ChatMessage, name="alice").msg == "first line\nsecond line"
    alice.keyboard.type("ca")
    alice.keyboard.press("Tab")
    expect(alice.get_by_role("textbox", name="Message")).to_have_value("carol: ")
    alice.keyboard.type("hi")
    alice.keyboard.press("Enter")
    assert carol.expect(ChatMessage, name="alice").msg == "carol: hi"
    alice.keyboard.press("Tab")  # nothing to complete in an empty box: the focus moves on, no trap
    expect(alice.get_by_role("button", name="Send")).to_be_focused()
    alice.keyboard.press("Shift+Tab")
    expect(alice.get_by_role("textbox", name="Message")).to_be_focused()
    alice.keyboard.press("Control+k")
    alice.keyboard.type("dev")
    alice.keyboard.press("Enter")
    expect(alice.get_by_role("heading", name="#dev")).to_be_visible()
    expect(alice.get_by_role("textbox", name="Message")).to_be_focused()
    alice.keyboard.press("Alt+1")
    expect(alice.get_by_role("heading", name="#lobby")).to_be_visible()
    alice.keyboard.press("Alt+2")
    expect(alice.get_by_role("heading", name="#dev")).to_be_visible()


def test_an_account_registers_from_the_page_and_logs_in_again_after_logging_out(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page()
    alice.get_by_role("textbox", name="Name").fill("alice")
    alice.get_by_label("Password", exact=True).fill("correct horse battery")
    alice.get_by_role("checkbox").check()
    alice.get_by_role("button", name="Join").click()
    expect(alice.get_by_role("log").get_by_text("registered", exact=False)).to_be_visible()
    alice.get_by_role("button", name="Log out").click()
    expect(alice.get_by_role("button", name="Join")).to_be_visible()
    alice.get_by_role("textbox", name="Name").fill("alice")
    alice.get_by_label("Password", exact=True).fill("wrong password")
    alice.get_by_role("button", name="Join").click()
    expect(alice.get_by_role("alert")).to_contain_text("Wrong name or password")
    login(alice, "alice", "correct horse battery")
    say(alice, "back with my account")
    expect(log_lines(alice).last).to_contain_text("alice: back with my account")


def test_scrolling_back_fetches_older_history_and_keeps_the_page_bounded(web):
    from playwright.sync_api import expect

    site = web(flood_rate=0, history=50)
    carol = site.client("carol")
    carol.say_all(f"old {i}" for i in range(1200))
    alice = site.page("alice")
    log = alice.get_by_role("log")
    expect(log.locator(".line").last).to_contain_text("old 1199")
    expect(log.get_by_text("old 1150", exact=True)).to_have_count(1)
    scroller = alice.locator("#scroller")
    most = 0
    for _ in range(200):  # each step back shows or fetches a page; bounded however it goes
        first = log.locator(".line[data-id]").first
        shown = first.get_attribute("data-id")
        if shown == "1":
            break
        scroller.evaluate("node => { node.scrollTop = 0; node.dispatchEvent(new Event('scroll')); }")
        expect(first).not_to_have_attribute("data-id", shown or "")  # older lines came in above
        most = max(most, log.locator(".line").count())
    expect(log.get_by_text("old 0", exact=True)).to_be_visible()
    assert most <= 400, f"{most} lines in the page at once"
    ids = [int(i) for i in log.locator(".line[data-id]").evaluate_all("nodes => nodes.map(n => n.dataset.id)")]
    assert ids == sorted(ids) and len(ids) == len(set(ids)), "older pages land in order, each line once"
    expect(log.get_by_role("separator").first).to_be_attached()  # the day the history starts
    alice.keyboard.press("Alt+1")  # the room again: back to its newest line, following it
    carol.say("new at the bottom")
    expect(log.locator(".line").last).to_contain_text("carol: new at the bottom")
    assert log.locator(".line").count() <= 400


def test_the_page_shows_it_is_offline_and_resumes_after_a_server_restart(web, tmp_path):
    from playwright.sync_api import expect

    site = web(restartable=True, db=str(tmp_path / "chat.db"))
    alice = site.page("alice")
    carol = site.client("carol")
    carol.say("before the restart")
    expect(log_lines(alice).last).to_contain_text("before the restart")
    carol.close()
    alice.evaluate("""() => {
        window.__states = [];
        const state = document.getElementById('state');
        new MutationObserver(() => window.__states.push(state.dataset.state))
            .observe(state, { attributes: true, attributeFilter: ['data-state'] });
    }""")
    site.stop()
    state = alice.get_by_role("status")
    expect(state).to_have_attribute("data-state", "offline")
    say(alice, "typed while offline")
    expect(log_lines(alice).last).to_contain_text("offline: this line will be sent")
    site.start()
    expect(state).to_have_attribute("data-state", "connected")
    log = alice.get_by_role("log")
    expect(log.locator(".line.message").last).to_contain_text("alice: typed while offline")
    assert alice.evaluate("window.__states")[-1] == "connected"
    carol = site.client("carol")
    carol.say("after the restart")
    expect(log_lines(alice).last).to_contain_text("after the restart")
    expect(log.get_by_text("before the restart")).to_have_count(1)
    expect(log.get_by_text("typed while offline", exact=True)).to_have_count(1)


RECORD_NOTIFICATIONS = """
window.__notes = [];
window.Notification = class {
    static permission = 'granted';
    static requestPermission() { return Promise.resolve('granted'); }
    constructor(title, options) { window.__notes.push([title, options.body]); }
};
Object.defineProperty(document, 'hidden', { get: () => window.__hidden === true });
"""


def test_mentions_and_private_lines_notify_while_the_tab_is_hidden(web):
    from playwright.sync_api import expect

    site = web()
    context = site.context()
    context.add_init_script(RECORD_NOTIFICATIONS)  # the browser's own prompt cannot be clicked here
    alice = site.page("alice", context=context)
    alice.get_by_role("button", name="Notify me").click()
    expect(alice.get_by_role("button", name="Notifications on")).to_be_visible()
    carol = site.client("carol")
    carol.say("alice: while you look")
    expect(log_lines(alice).last).to_contain_text("while you look")
    alice.evaluate("window.__hidden = true")
    carol.say("nothing to see here")
    carol.say("alice: are you back?")
    carol.send({"type": "private", "to": "alice", "msg": "just us"})
    alice.wait_for_function("() => window.__notes.length >= 2")
    assert sorted(alice.evaluate("window.__notes")) == [  # rooms and private lines have no order between them
        ["carol (private)", "just us"],
        ["carol in #lobby", "alice: are you back?"],
    ]
    expect(alice).to_have_title("(3) chat")


def test_an_owner_moderates_from_the_page_and_the_member_list_shows_roles_and_away(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page()
    alice.get_by_role("textbox", name="Name").fill("alice")
    alice.get_by_label("Password", exact=True).fill("correct horse battery")
    alice.get_by_role("checkbox").check()
    alice.get_by_role("button", name="Join").click()
    expect(alice.get_by_role("log").get_by_text("registered", exact=False)).to_be_visible()
    say(alice, "/join dev")  # an account's new room is its own
    members = alice.get_by_role("complementary", name="Members")
    expect(members.get_by_role("listitem").filter(has_text="alice")).to_contain_text("owner")
    bob = site.page()
    bob.get_by_role("textbox", name="Name").fill("bob")
    bob.get_by_label("Room", exact=True).fill("dev")
    bob.get_by_role("button", name="Join").click()
    expect(members.get_by_text("bob", exact=True)).to_be_visible()
    say(bob, "/away making tea")
    expect(bob.get_by_role("log")).to_contain_text("away")
    say(alice, "/who")
    expect(members.get_by_role("listitem").filter(has_text="bob")).to_contain_text("(away)")
    say(alice, "/kick bob cool off")
    expect(alice.get_by_role("log")).to_contain_text("alice kicked bob (cool off)")
    expect(log_lines(alice).last).to_contain_text("bob left (kicked)")
    expect(log_lines(bob).last).to_contain_text("you are out of dev")
    expect(members.get_by_text("bob", exact=True)).to_have_count(0)
    say(bob, "still here?")
    expect(log_lines(bob).last).to_contain_text("not in dev")


def test_the_page_follows_the_systems_light_or_dark_theme(web, browser):
    site = web()
    backgrounds = {}
    for scheme in ("light", "dark"):
        context = site.context()
        page = context.new_page()
        page.emulate_media(color_scheme=scheme)
        page.goto(site.url)
        backgrounds[scheme] = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert backgrounds == {"light": "rgb(255, 255, 255)", "dark": "rgb(23, 25, 30)"}


def test_a_room_whose_history_started_over_shows_its_new_lines(web):
    from playwright.sync_api import expect

    site = web(restartable=True)  # history in memory: a restart forgets it, and ids start from 1 again
    alice = site.page("alice")
    carol = site.client("carol")
    for i in range(3):
        carol.say(f"old {i}")
    expect(log_lines(alice).last).to_contain_text("old 2")
    carol.close()
    site.stop()
    site.start()
    expect(alice.get_by_role("status")).to_have_attribute("data-state", "connected")
    expect(alice.get_by_role("log")).to_contain_text("history started over")
    carol = site.client("carol")
    carol.say("new 0")  # id 1 again: not taken for the old id 1
    expect(log_lines(alice).last).to_contain_text("carol: new 0")


class TerminalClient:
    """The terminal client's connection (ChatClient) on an event loop of its own thread, so that a
    test driving the page with Playwright's synchronous API can use both at once."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="terminal-client", daemon=True)
        self.thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(work, self.loop).result(TIMEOUT)

    def next_of(self, kind: type[T], **fields: Any) -> T:
        async def wait() -> T:
            async for event in self.client.events():
                if isinstance(event, kind) and all(getattr(event, k) == v for k, v in fields.items()):
                    return event
            raise AssertionError(f"events ended before a {kind.__name__}")

        return self.run(wait())

    def close(self) -> None:
        self.run(self.client.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(TIMEOUT)
        self.loop.close()


def register(page: Any, name: str, password: str) -> None:
    from playwright.sync_api import expect

    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("checkbox").check()
    page.get_by_role("button", name="Join").click()
    expect(page.get_by_role("log").get_by_text("registered", exact=False)).to_be_visible()


def test_an_account_on_a_page_and_in_the_terminal_client_agrees_on_what_is_read(web):
    from playwright.sync_api import expect

    site = web()
    alice = site.page()
    register(alice, "alice", "correct horse battery")
    terminal = TerminalClient(ChatClient(*site.server.address, "alice", password="correct horse battery"))
    try:
        welcome = terminal.run(terminal.client.connect())
        assert welcome.account
        markers = SharedReadMarkers(lambda room, up_to: None)
        carol = site.client("carol")
        carol.say("one")
        carol.say("two")
        said = carol.expect(ChatMessage, msg="two")
        # The page shows the lobby: what it shows is read, and the terminal hears it.
        expect(log_lines(alice).last).to_contain_text("carol: two")
        heard = terminal.next_of(ReadMarker, room="lobby", id=said.id)
        markers.heard("lobby", heard.id)
        assert markers.read_up_to("lobby") == said.id
        # Elsewhere on the page, the lobby's new lines are unread there until the terminal reads them.
        say(alice, "/join dev")
        expect(alice.get_by_role("heading", name="#dev")).to_be_visible()
        carol.say("three")
        carol.say("alice: four")
        four = carol.expect(ChatMessage, msg="alice: four")
        expect(room_entry(alice, "#lobby 2 unread, mentioned")).to_be_visible()
        expect(alice).to_have_title("(2) chat")
        terminal.run(terminal.client.send(MarkRead(room="lobby", id=four.id)))
        expect(room_entry(alice, "#lobby")).to_have_accessible_name("#lobby")
        expect(alice).to_have_title("chat")
        alice.keyboard.press("Alt+1")  # what the terminal read is not "new since you left" here
        expect(alice.get_by_role("heading", name="#lobby")).to_be_visible()
        expect(log_lines(alice).last).to_contain_text("carol: alice: four")
        expect(alice.get_by_role("log").locator(".marker")).to_have_count(0)
        # A new device of the account starts where the others are: nothing of the lobby unread.
        phone = site.page(width=390)
        login(phone, "alice", "correct horse battery")
        phone.get_by_role("button", name="Rooms and conversations").click()
        expect(room_entry(phone, "#dev")).to_be_visible()  # the account's rooms follow it
        expect(room_entry(phone, "#lobby")).to_have_accessible_name("#lobby")
    finally:
        terminal.close()


DROP_A_LINE = """
window.__drop = null;
const realSend = WebSocket.prototype.send;
WebSocket.prototype.send = function (data) {
    const drop = window.__drop;
    if (drop && String(data).includes(drop.text)) {
        window.__drop = null;
        if (drop.reaches) realSend.call(this, data);
        this.close();  // the echo (if any) never reaches the page
        return;
    }
    realSend.call(this, data);
};
"""


@pytest.mark.parametrize("reaches", [True, False], ids=["line-reached-the-server", "line-lost-on-the-way"])
def test_a_line_typed_as_the_socket_drops_is_kept_once_after_the_reconnect(web, reaches):
    from playwright.sync_api import expect

    site = web()
    context = site.context()
    context.add_init_script(DROP_A_LINE)
    alice = site.page("alice", context=context)
    carol = site.client("carol")
    alice.evaluate("reaches => { window.__drop = { text: 'as the socket drops', reaches }; }", reaches)
    say(alice, "typed as the socket drops")
    state = alice.get_by_role("status")
    expect(state).to_have_attribute("data-state", "connected")
    say(alice, "and after it")
    assert carol.expect(ChatMessage, name="alice").msg == "typed as the socket drops"
    assert carol.expect(ChatMessage, name="alice").msg == "and after it"  # nothing between: kept once
    log = alice.get_by_role("log")
    expect(log.locator(".line.message").last).to_contain_text("alice: and after it")
    expect(log.get_by_text("typed as the socket drops", exact=True)).to_have_count(1)
    dave = LineClient(site.server.address)  # somebody who comes later sees the room's history
    try:
        welcome = dave.join("dave")
        kept = [m.msg for m in (dave.next() for _ in range(welcome.history)) if isinstance(m, ChatMessage)]
    finally:
        dave.close()
    assert kept.count("typed as the socket drops") == 1, kept


def test_search_finds_a_line_in_the_users_rooms_and_none_of_a_room_it_is_not_in(web, tmp_path):
    from playwright.sync_api import expect

    site = web(db=str(tmp_path / "chat.db"), flood_rate=0)  # search needs the history file's index
    carol = site.client("carol")
    carol.say("the needle is in the lobby")
    carol.say_all(f"hay {i}" for i in range(120))  # the found line is older than the page keeps
    carol.send({"type": "join", "room": "secret"})
    carol.send({"type": "message", "room": "secret", "msg": "a needle in a secret room"})
    assert carol.expect(ChatMessage, room="secret").msg == "a needle in a secret room"
    alice = site.page("alice")
    say(alice, "/join dev")
    expect(alice.get_by_role("heading", name="#dev")).to_be_visible()
    say(alice, "/search needle")  # this room only: nothing here
    panel = alice.get_by_role("region", name="Search for “needle” in #dev")
    expect(panel.get_by_role("status")).to_have_text("No line found.")
    say(alice, "/search -all needle")
    panel = alice.get_by_role("region", name="Search for “needle” everywhere")
    results = panel.get_by_role("list", name="Search results").get_by_role("button")
    expect(results).to_have_count(1)
    expect(results.first).to_contain_text("#lobby carol: the needle is in the lobby")
    expect(panel).not_to_contain_text("secret")
    results.first.click()
    expect(alice.get_by_role("heading", name="#lobby")).to_be_visible()
    found = alice.get_by_role("log").locator(".line.found")
    expect(found).to_contain_text("carol: the needle is in the lobby")
    expect(found).to_be_in_viewport()
    ids = [int(i) for i in alice.get_by_role("log").locator(".line[data-id]").evaluate_all(
        "nodes => nodes.map(n => n.dataset.id)")]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) > 100, ids  # no hole between it and the rest
    panel.get_by_role("button", name="Close search results").click()
    expect(panel).to_be_hidden()


def test_a_server_that_cannot_search_says_so(web):
    from playwright.sync_api import expect

    site = web(flood_rate=0)  # no history file: no index
    alice = site.page("alice")
    site.client("carol").say_all(f"line {i}" for i in range(60))
    expect(log_lines(alice).last).to_contain_text("carol: line 59")
    say(alice, "/search anything")
    panel = alice.get_by_role("region", name="Search for “anything” in #lobby")
    expect(panel.get_by_role("status")).to_contain_text("This server cannot search")
    expect(log_lines(alice).last).to_be_in_viewport()  # the panel took room, the newest line stays in view
    alice.keyboard.press("Escape")
    expect(panel).to_be_hidden()


DROP_A_LINE_AND_STAY_OFFLINE = DROP_A_LINE.replace(
    "this.close();", "window.__offline = true; this.close();"
) + """
const RealWebSocket = window.WebSocket;
window.WebSocket = class extends RealWebSocket {
    // Offline until the page is loaded again: every reconnect asks for a path the server refuses
    // (its own origin, as the page's policy allows).
    constructor(url, protocols) { super(window.__offline ? url.slice(0, -'/ws'.length) + '/offline' : url, protocols); }
};
"""


def test_a_line_unechoed_when_the_page_is_reloaded_is_sent_once_by_the_reloaded_page(web):
    from playwright.sync_api import expect

    site = web()
    context = site.context()
    context.add_init_script(DROP_A_LINE_AND_STAY_OFFLINE)
    alice = site.page("alice", context=context)
    carol = site.client("carol")
    alice.evaluate("() => { window.__drop = { text: 'lost in the drop', reaches: false }; }")
    say(alice, "lost in the drop")
    expect(alice.get_by_role("status")).to_have_attribute("data-state", "offline")
    unsent = alice.get_by_role("list", name="Not sent yet")
    expect(unsent.get_by_role("listitem")).to_have_text("alice: lost in the drop not sent yet")
    alice.reload()
    expect(alice.get_by_role("status")).to_have_attribute("data-state", "connected")
    say(alice, "after the reload")
    assert carol.expect(ChatMessage, name="alice").msg == "lost in the drop"
    assert carol.expect(ChatMessage, name="alice").msg == "after the reload"
    log = alice.get_by_role("log")
    expect(log.locator(".line.message").last).to_contain_text("alice: after the reload")
    expect(log.get_by_text("lost in the drop", exact=True)).to_have_count(1)
    expect(unsent).to_be_hidden()  # kept by the server: in the log, no longer waiting below it


def test_an_account_logging_in_on_a_new_device_is_put_back_in_its_rooms(web):
    from playwright.sync_api import expect

    # No pacing: the page's first lines (join, register, who...) would hold its read back, and a
    # line still waiting for its turn when the connection ends is not this page's to keep.
    site = web(flood_rate=0)
    laptop = site.page()
    register(laptop, "alice", "correct horse battery")
    say(laptop, "/join dev")
    expect(laptop.get_by_role("heading", name="#dev")).to_be_visible()
    carol = site.client("carol")
    carol.send({"type": "join", "room": "dev"})
    carol.send({"type": "message", "room": "dev", "msg": "see you tomorrow"})
    expect(log_lines(laptop).last).to_contain_text("carol: see you tomorrow")
    laptop.goto("about:blank")  # away at once: what it showed is read all the same
    carol.expect(Left, name="alice", room="dev")  # the account has no session left
    phone = site.page()
    login(phone, "alice", "correct horse battery")
    expect(room_entry(phone, "#dev")).to_have_accessible_name("#dev")  # put back in it, nothing unread
    room_entry(phone, "#dev").click()
    expect(log_lines(phone).last).to_contain_text("carol: see you tomorrow")
