"""User text in reports renders as that text: no emphasis, links, HTML or broken table
cells, whatever the file or class is called (checked with a real CommonMark/GFM
renderer, markdown-it-py)."""

from __future__ import annotations

import html as html_lib

import pytest
from markdown_it import MarkdownIt

from tasks.markdown import markdown_cell, markdown_code, markdown_text, printable

HOSTILE = [
    "*bold* _it_ **b**",
    "<img src=x onerror=alert(1)>",
    "[link](http://example.com) ![img](x.png)",
    "a|b|c",
    "back\\slash `code` ``two``",
    "~~strike~~ & &amp;",
    "line\nbreak",
]


def _rendered(markdown: str) -> str:
    return (
        MarkdownIt("commonmark")
        .enable("table")
        .enable("strikethrough")
        .render(markdown)
    )


def _inline(html: str) -> str:
    """The text of ``<p>...</p>``, entities decoded."""
    assert html.startswith("<p>") and html.endswith("</p>\n"), html
    return html_lib.unescape(html[3:-5])


@pytest.mark.parametrize("text", HOSTILE)
def test_text_renders_literally(text):
    html = _rendered(f"- file: {markdown_text(text)}")
    assert "<em>" not in html and "<strong>" not in html and "<a " not in html
    assert "<img" not in html and "<s>" not in html and "<code>" not in html
    shown = html.replace("<ul>\n<li>", "").replace("</li>\n</ul>\n", "")
    assert html_lib.unescape(shown) == "file: " + text.replace("\n", " ")


@pytest.mark.parametrize("text", HOSTILE)
def test_code_spans_show_paths_verbatim(text):
    html = _rendered(markdown_code(text))
    assert html.startswith("<p><code>") and html.count("<code>") == 1, html
    inner = _inline(html).removeprefix("<code>").removesuffix("</code>")
    assert inner == text.replace("\n", " ")


@pytest.mark.parametrize("text", HOSTILE)
def test_a_cell_stays_one_cell(text):
    table = "| name | n |\n| --- | --- |\n" + f"| {markdown_cell(text)} | 1 |\n"
    html = _rendered(table)
    assert html.count("<td>") == 2, html
    assert "<img" not in html and "<em>" not in html


def test_control_characters_are_shown_not_obeyed():
    assert printable("a\x1b[31mred\x07\x00") == "a\\x1b[31mred\\x07\\x00"
    assert printable("tab\tand\nnewline") == "tab\tand\nnewline"
    assert "\x1b" not in markdown_text("\x1b[2J") and "\x1b" not in markdown_code(
        "\x1b"
    )
