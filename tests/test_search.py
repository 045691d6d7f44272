"""Search in a buffer: pure matching and marking."""

from __future__ import annotations

from chat.client.buffers import Line
from chat.client.render import INDENT
from chat.client.search import MATCH, line_text, matching


def test_matching_lines_keep_their_order_and_text_with_every_match_marked_whatever_its_case():
    lines = [
        Line(1, [("class:time", "09:30 "), ("bold", "bob"), ("", ": "), (INDENT, ""), ("", "Deploy then deploy")]),
        Line(2, [("class:time", "09:31 "), ("", "lunch")]),
    ]
    [found] = matching(lines, "deploy")
    assert found.order == 1 and line_text(found.fragments) == line_text(lines[0].fragments)
    assert [text for style, text in found.fragments if style == MATCH] == ["Deploy", "deploy"]
    assert (INDENT, "") in found.fragments  # the wrap indent still marks where the text begins
    assert matching(lines, "") == lines
