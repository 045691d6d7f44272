"""The pure fan-out core: logs per room, cursors, held joins, queued lines, backlog and trimming."""

from __future__ import annotations

import pytest

from chat.server.fanout import TRIM_AT, Fanout, PeerState, Subscriber
from chat.server.lines import Line


def peer_in(fanout: Fanout, *rooms: str, label: str = "p") -> Subscriber:
    peer = Subscriber(label)
    for room in rooms:
        fanout.subscribe(peer, room)
    return peer


def test_publish_reaches_subscribers_of_that_room_only():
    fanout: Fanout[Subscriber] = Fanout()
    lobby, dev = peer_in(fanout, "lobby", label="l"), peer_in(fanout, "dev", label="d")
    fanout.publish("lobby", Line(b"a\n"))
    assert fanout.due() == {lobby}
    assert (fanout.take(lobby), fanout.take(dev)) == (b"a\n", b"")


def test_a_subscriber_gets_only_lines_published_after_it_subscribed():
    fanout: Fanout[Subscriber] = Fanout()
    early = peer_in(fanout, "lobby")
    fanout.publish("lobby", Line(b"before\n"))
    late = peer_in(fanout, "lobby")
    fanout.publish("lobby", Line(b"after\n"))
    assert fanout.take(early) == b"before\nafter\n"
    assert fanout.take(late) == b"after\n"


def test_peers_at_one_cursor_share_one_joined_buffer():
    fanout: Fanout[Subscriber] = Fanout()
    first, second = peer_in(fanout, "r"), peer_in(fanout, "r")
    fanout.publish("r", Line(b"x\n"))
    fanout.publish("r", Line(b"y\n"))
    fanout.due()
    assert fanout.take(first) is fanout.take(second)


def test_a_line_for_one_peer_comes_after_the_room_lines_published_before_it():
    fanout: Fanout[Subscriber] = Fanout()
    peer = peer_in(fanout, "r")
    fanout.publish("r", Line(b"1\n"))
    fanout.send_to(peer, b"reply\n", "r")
    fanout.publish("r", Line(b"2\n"))
    assert fanout.take(peer) == b"1\nreply\n2\n"


def test_a_held_cursor_keeps_live_lines_behind_the_history_queued_at_it():
    fanout: Fanout[Subscriber] = Fanout()
    peer = Subscriber("joiner")
    fanout.subscribe(peer, "r", held=True)
    fanout.publish("r", Line(b"live\n"))
    fanout.send_held(peer, "r", b"welcome\n")
    assert fanout.take(peer) == b"welcome\n"
    fanout.send_held(peer, "r", b"history\n")
    fanout.publish("r", Line(b"live2\n"))
    assert fanout.take(peer) == b"history\n"
    fanout.release(peer, "r")
    assert fanout.due() == {peer}
    assert fanout.take(peer) == b"live\nlive2\n"


def test_unsubscribing_still_sends_what_was_published_before_in_order():
    fanout: Fanout[Subscriber] = Fanout()
    peer = peer_in(fanout, "r")
    fanout.publish("r", Line(b"1\n"))
    fanout.send_to(peer, b"mine\n", "r")
    fanout.publish("r", Line(b"2\n"))
    fanout.unsubscribe(peer, "r")
    fanout.publish("r", Line(b"3\n"))
    assert fanout.take(peer) == b"1\nmine\n2\n"


def test_close_sends_what_is_owed_then_the_final_line_and_nothing_more():
    fanout: Fanout[Subscriber] = Fanout()
    peer = peer_in(fanout, "a", "b")
    fanout.publish("a", Line(b"a1\n"))
    fanout.publish("b", Line(b"b1\n"))
    fanout.close(peer, b"bye\n")
    fanout.publish("a", Line(b"a2\n"))
    fanout.send_to(peer, b"late\n")
    assert peer.state is PeerState.CLOSING
    data = fanout.take(peer)
    assert data.endswith(b"bye\n") and sorted(data.splitlines()) == [b"a1", b"b1", b"bye"]


def test_backlog_counts_room_bytes_queued_bytes_and_pending():
    fanout: Fanout[Subscriber] = Fanout()
    peer = peer_in(fanout, "a", "b")
    fanout.publish("a", Line(b"12345\n"))
    fanout.publish("b", Line(b"123\n"))
    fanout.send_to(peer, b"12\n")
    assert fanout.backlog(peer) == 6 + 4 + 3
    data = fanout.take(peer)
    assert fanout.accepted(peer, data, 5) is False  # some of it still pending
    assert fanout.backlog(peer) == len(data) - 5
    fanout.publish("a", Line(b"more\n"))
    assert fanout.accepted(peer, peer.pending, len(peer.pending)) is True  # all sent, and more waits


def test_trim_forgets_lines_every_subscriber_has_taken_and_keeps_the_laggards():
    fanout: Fanout[Subscriber] = Fanout()
    fast, slow = peer_in(fanout, "r", label="fast"), peer_in(fanout, "r", label="slow")
    for i in range(TRIM_AT):
        fanout.publish("r", Line(b"%d\n" % i))
    fanout.take(fast)
    fanout.trim()
    assert fanout.log_length("r") == TRIM_AT  # slow has taken nothing yet
    assert fanout.take(slow).count(b"\n") == TRIM_AT
    fanout.trim()
    assert fanout.log_length("r") == 0


def test_a_room_nobody_reads_keeps_no_lines():
    fanout: Fanout[Subscriber] = Fanout()
    peer = peer_in(fanout, "r")
    fanout.unsubscribe(peer, "r")
    fanout.publish("r", Line(b"into the void\n"))
    assert fanout.log_length("r") == 0


def test_forget_releases_the_peer_and_its_cursors():
    fanout: Fanout[Subscriber] = Fanout()
    peer = peer_in(fanout, "r")
    fanout.publish("r", Line(b"x\n"))
    fanout.forget(peer)
    assert peer.state is PeerState.RELEASED and peer.cursors == {}
    assert list(fanout.subscribers("r")) == []


def test_own_bytes_count_a_peers_replies_not_the_rooms_lines():
    """A client that says much and reads little is behind on the room, not on answers it asked for:
    only its own lines count against the limit that stops serving its requests."""
    fanout: Fanout[Subscriber] = Fanout()
    peer = peer_in(fanout, "r")
    fanout.publish("r", Line(b"x" * 1000 + b"\n"))
    data = fanout.take(peer)
    fanout.accepted(peer, data, 10)
    assert fanout.queued_bytes(peer) == 0 and fanout.backlog(peer) == len(data) - 10
    fanout.accepted(peer, peer.pending, 0)
    assert fanout.queued_bytes(peer) == 0
    fanout.accepted(peer, peer.pending, len(peer.pending))
    fanout.send_to(peer, b"reply\n")
    fanout.publish("r", Line(b"y" * 1000 + b"\n"))
    data = fanout.take(peer)
    fanout.accepted(peer, data, 3)
    assert fanout.queued_bytes(peer) == len(b"reply\n")  # at most what it had of its own
    fanout.accepted(peer, peer.pending, len(peer.pending) - 2)
    assert fanout.queued_bytes(peer) == 2
    fanout.accepted(peer, peer.pending, 2)
    assert fanout.queued_bytes(peer) == 0


class CountingDialect:
    """A second dialect that upper-cases lines and counts how often it encodes one."""

    name = "shout"

    def __init__(self) -> None:
        self.encodes = 0

    def encode(self, line: Line) -> bytes:
        self.encodes += 1
        return line.json.upper()


def test_each_dialect_gets_the_room_lines_in_its_own_bytes_encoded_once_per_line():
    fanout: Fanout[Subscriber] = Fanout()
    shout = CountingDialect()
    json_peers = [Subscriber(f"j{i}") for i in range(3)]
    shout_peers = [Subscriber(f"s{i}", shout) for i in range(3)]
    for peer in json_peers + shout_peers:
        fanout.subscribe(peer, "r")
    fanout.publish("r", Line(b'{"a":1}\n'), Line(b'{"b":2}\n'))
    assert [fanout.take(peer) for peer in json_peers] == [b'{"a":1}\n{"b":2}\n'] * 3
    assert [fanout.take(peer) for peer in shout_peers] == [b'{"A":1}\n{"B":2}\n'] * 3
    assert shout.encodes == 2  # one per line, however many peers of that dialect read it


def test_lines_left_to_a_leaving_peer_are_queued_in_its_dialect():
    fanout: Fanout[Subscriber] = Fanout()
    peer = Subscriber("s", CountingDialect())
    fanout.subscribe(peer, "r")
    fanout.publish("r", Line(b"x\n"))
    fanout.unsubscribe(peer, "r")
    assert fanout.take(peer) == b"X\n"


def test_own_lines_taken_for_sending_are_still_owed_until_the_connection_accepts_them():
    fanout: Fanout[Subscriber] = Fanout()
    peer = Subscriber("p")
    fanout.send_to(peer, b"page\n")
    data = fanout.take(peer)  # the writer sends it outside the lock: not accepted yet
    assert fanout.queued_bytes(peer) == 5
    fanout.accepted(peer, data, 2)
    assert fanout.queued_bytes(peer) == 3
    fanout.accepted(peer, peer.pending, 3)
    assert fanout.queued_bytes(peer) == 0


class PeerWriter:
    """A dialect of one peer (as IRC's writer): a room's said lines come from the shared dialect."""

    name = "peer"
    per_peer = True

    def __init__(self, shared: CountingDialect) -> None:
        self.shared = shared
        self.encodes = 0

    def encode(self, line: Line) -> bytes:
        self.encodes += 1
        return b"" if line.echo_to is not None and line.echo_to is self.peer else line.encoded(self.shared)

    def written(self, line: Line) -> bytes:
        return self.encode(line)

    peer: object = None


def said(n: int, to: object = None) -> Line:
    return Line.said("message", "r", "ann", f"m{n}", "2026-12-07T00:00:00Z", n).echoed(None, to)


def writers_in(fanout: Fanout[Subscriber], shared: CountingDialect, count: int) -> list[Subscriber]:
    peers = []
    for i in range(count):
        writer = PeerWriter(shared)
        peer = writer.peer = Subscriber(f"w{i}", writer)
        fanout.subscribe(peer, "r")
        peers.append(peer)
    return peers


def test_per_peer_writers_share_one_buffer_for_said_lines():
    fanout: Fanout[Subscriber] = Fanout()
    shared = CountingDialect()
    first, second = writers_in(fanout, shared, 2)
    fanout.publish("r", said(1), said(2))
    fanout.due()
    assert fanout.take(first) is fanout.take(second)
    assert shared.encodes == 2
    assert (first.dialect.encodes, second.dialect.encodes) == (0, 0)  # type: ignore[attr-defined]


def test_a_line_that_is_not_said_is_written_by_each_peers_own_writer():
    fanout: Fanout[Subscriber] = Fanout()
    shared = CountingDialect()
    first, second = writers_in(fanout, shared, 2)
    fanout.publish("r", said(1), Line(b'{"type":"joined"}\n'), said(2))
    expected = said(1).json.upper() + b'{"TYPE":"JOINED"}\n' + said(2).json.upper()
    assert fanout.take(first) == fanout.take(second) == expected
    assert (first.dialect.encodes, second.dialect.encodes) == (3, 3)  # type: ignore[attr-defined]
    fanout.publish("r", said(3))
    assert fanout.take(first) is fanout.take(second)  # past it, shared again


def test_a_senders_own_lines_are_left_to_its_writer_only_while_they_are_in_its_slice():
    fanout: Fanout[Subscriber] = Fanout()
    shared = CountingDialect()
    sender, other = writers_in(fanout, shared, 2)
    fanout.publish("r", said(1), said(2, sender), said(3))
    assert fanout.take(sender) == said(1).json.upper() + said(3).json.upper()
    assert fanout.take(other) == said(1).json.upper() + said(2).json.upper() + said(3).json.upper()
    fanout.publish("r", said(4))
    assert fanout.take(sender) is fanout.take(other) == said(4).json.upper()


@pytest.mark.parametrize("hides_own", [True, False])
def test_a_writer_that_says_how_it_shows_own_lines_never_writes_a_said_slice_itself(hides_own):
    fanout: Fanout[Subscriber] = Fanout()
    shared = CountingDialect()
    sender, other = writers_in(fanout, shared, 2)
    for peer in (sender, other):
        peer.dialect.hides_own = hides_own  # type: ignore[attr-defined]
    fanout.publish("r", said(1), said(2, sender), said(3))
    everything = said(1).json.upper() + said(2).json.upper() + said(3).json.upper()
    seen = fanout.take(other)
    assert seen == everything
    if hides_own:
        assert fanout.take(sender) == said(1).json.upper() + said(3).json.upper()
    else:
        assert fanout.take(sender) is seen  # the one buffer joined for both
    assert (sender.dialect.encodes, other.dialect.encodes) == (0, 0)  # type: ignore[attr-defined]
    assert shared.encodes == 3


def test_a_json_sender_without_a_cid_shares_the_joined_buffer():
    fanout: Fanout[Subscriber] = Fanout()
    sender, other = peer_in(fanout, "r", label="s"), peer_in(fanout, "r", label="o")
    fanout.publish("r", said(1, sender), said(2))
    assert fanout.take(sender) is fanout.take(other)


def test_due_alone_hands_out_peers_owed_their_own_lines_but_not_busy_ones_nor_a_rooms_readers():
    fanout: Fanout[Subscriber] = Fanout()
    member = peer_in(fanout, "lobby", label="member")
    joiner = peer_in(fanout, label="joiner")
    busy = peer_in(fanout, label="busy")
    fanout.due()
    fanout.publish("lobby", Line(b"said\n"))
    fanout.send_to(joiner, b"welcome\n")
    fanout.send_to(busy, b"reply\n")
    assert fanout.due_alone({busy}) == {joiner}  # the room's reader waits for the pass
    assert fanout.take(joiner) == b"welcome\n"
    assert fanout.due() == {member, busy}  # still due, in the next pass
