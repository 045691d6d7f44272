"""What typed lines mean."""

from __future__ import annotations

import pytest

from chat.client.commands import Mistake, Quit, Send, ShowHelp, parse
from chat.wire.protocol import Nick, SendAction, SendMessage, SendPrivate, Who


def sent(line: str):
    command = parse(line)
    assert isinstance(command, Send)
    return command.message


def test_plain_text_is_a_message():
    assert sent("hello there") == SendMessage(msg="hello there")


def test_blank_line_sends_nothing():
    assert parse("") is None and parse("   ") is None


def test_double_slash_says_a_line_starting_with_slash():
    assert sent("//shrug") == SendMessage(msg="/shrug")


def test_multiline_paste_is_one_message():
    assert sent("one\ntwo\nthree") == SendMessage(msg="one\ntwo\nthree")


def test_commands_become_protocol_messages():
    assert sent("/me waves") == SendAction(msg="waves")
    assert sent("/msg bob see you at 5") == SendPrivate(to="bob", msg="see you at 5")
    assert sent("/nick robert") == Nick(name="robert")
    assert sent("/who") == Who()
    assert sent("/WHO") == Who()


def test_local_commands():
    assert parse("/quit") == Quit()
    assert parse("/help") == ShowHelp()


@pytest.mark.parametrize("line", ["/me", "/msg", "/msg bob", "/msg bob   ", "/nick", "/nick two words", "/dance"])
def test_incomplete_or_unknown_command_explains_itself(line):
    command = parse(line)
    assert isinstance(command, Mistake) and command.detail
