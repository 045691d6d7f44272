"""What typed lines mean."""

from __future__ import annotations

import pytest

from chat.client.commands import (
    COMMANDS,
    ClearScreen,
    CloseBuffer,
    Ignore,
    JoinRoom,
    JumpTo,
    Mistake,
    PartRoom,
    Query,
    Quit,
    RegisterName,
    Reply,
    SearchText,
    Send,
    ShowHelp,
    ShowTopic,
    SwitchRoom,
    parse,
)
from chat.wire.protocol import (
    Ban,
    Deop,
    Kick,
    ListRooms,
    Mute,
    Nick,
    Op,
    SendAction,
    SendMessage,
    SendPrivate,
    SetAway,
    SetModes,
    SetTopic,
    Unban,
    Voice,
    Who,
)


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


def test_what_is_typed_goes_to_the_room_typed_into():
    assert parse("hi", room="dev") == Send(SendMessage(room="dev", msg="hi"))
    assert parse("/me waves", room="dev") == Send(SendAction(room="dev", msg="waves"))
    assert parse("/who", room="dev") == Send(Who(room="dev"))
    assert parse("/topic release friday", room="dev") == Send(SetTopic(room="dev", topic="release friday"))


def test_room_commands():
    assert parse("/join dev") == JoinRoom("dev")
    assert parse("/part", room="dev") == PartRoom("dev")
    assert parse("/part ops", room="dev") == PartRoom("ops")
    assert parse("/switch ops") == SwitchRoom("ops")
    assert parse("/rooms") == Send(ListRooms())
    assert parse("/topic") == ShowTopic()


@pytest.mark.parametrize("line", ["/join", "/join two words", "/switch", "/part a b"])
def test_incomplete_room_command_explains_itself(line):
    command = parse(line)
    assert isinstance(command, Mistake) and command.detail


def test_register_takes_no_password_on_the_line():
    assert parse("/register") == RegisterName()
    assert isinstance(parse("/register hunter2"), Mistake)


def test_moderation_commands_act_on_the_room_typed_into():
    assert parse("/kick bob calm down", "den") == Send(Kick(room="den", name="bob", reason="calm down"))
    assert parse("/ban troll 2h spam", "den") == Send(Ban(room="den", name="troll", duration=7200, reason="spam"))
    assert parse("/ban troll spamming again", "den") == Send(Ban(room="den", name="troll", reason="spamming again"))
    assert parse("/mute loud 90", "den") == Send(Mute(room="den", name="loud", duration=90))
    assert parse("/unban troll", "den") == Send(Unban(room="den", name="troll"))
    assert parse("/op carol", "den") == Send(Op(room="den", name="carol"))
    assert parse("/deop carol", "den") == Send(Deop(room="den", name="carol"))
    assert isinstance(parse("/kick"), Mistake)
    assert isinstance(parse("/ban troll 0m"), Mistake)
    assert "usage: /op NAME" in parse("/op").detail


def test_modes_and_voice_commands():
    assert parse("/mode +moderated -topic", "den") == Send(SetModes(room="den", on=["moderated"], off=["topic"]))
    assert isinstance(parse("/mode +loud", "den"), Mistake)
    assert parse("/voice bob", "den") == Send(Voice(type="voice", room="den", name="bob"))
    assert parse("/devoice bob", "den") == Send(Voice(type="devoice", room="den", name="bob"))


def test_query_reply_ignore_names_and_clear_parse():
    assert parse("/query bob") == Query("bob")
    assert parse("/query") == Query(None)
    assert parse("/r see you") == Reply("see you")
    assert parse("/r") == Mistake("usage: /r TEXT")
    assert parse("/ignore troll") == Ignore("troll")
    assert parse("/ignore") == Ignore(None)
    assert parse("/unignore troll") == Ignore("troll", undo=True)
    assert parse("/clear") == ClearScreen()
    assert parse("/names", "dev") == parse("/who", "dev")
    assert {"/query", "/r", "/ignore", "/unignore", "/clear", "/away"} <= set(COMMANDS)  # all complete


def test_away_with_and_without_a_reason():
    assert parse("/away lunch, back at 2") == Send(SetAway.model_construct(msg="lunch, back at 2"))
    assert parse("/away") == Send(SetAway.model_construct(msg=""))


def test_in_a_private_conversation_room_commands_are_refused_and_text_goes_privately():
    assert parse("hello", "den", "bob") == Send(SendPrivate.model_construct(to="bob", msg="hello"))
    for line in ("/me waves", "/topic secret", "/history", "/kick carol", "/who", "/mode +topic"):
        refused = parse(line, "den", "bob")
        assert isinstance(refused, Mistake) and "private conversation with bob" in refused.detail
    assert parse("/part", "den", "bob") == CloseBuffer("bob")
    assert parse("/close", "den", "bob") == CloseBuffer("bob")
    assert parse("/close", "den") == CloseBuffer(None)
    assert parse("/part dev", "den", "bob") == PartRoom("dev")


def test_search_in_the_buffer_or_everywhere_and_jump_to_a_match():
    assert parse("/search release checklist", "dev") == SearchText("release checklist")
    assert parse("/search -all release*", "dev") == SearchText("release*", everywhere=True)
    assert parse("/search -allowed", "dev") == SearchText("-allowed")  # a word, not the flag
    assert parse("/jump 3", "dev") == JumpTo(3)
    for line in ("/search", "/search -all", "/jump", "/jump 0", "/jump x"):
        assert isinstance(parse(line, "dev"), Mistake)
