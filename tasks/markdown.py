"""Markdown the reports share: user text (class names, file names, model ids, dataset
URLs, error messages) put into report.md, quality.md, preview summaries and Prefect
markdown artifacts as text, never as markup.

A file named ``*a*<img src=x onerror=...>|.jpg`` must show as that name: not in italics,
not as HTML in the Prefect UI, not as a table cell boundary. Each report escaping on its
own drifted apart; these are the rules they all use.
"""

from __future__ import annotations

import html
import re

# Characters that start markup inside a line of CommonMark/GFM text (emphasis, code,
# links and images, strikethrough, table cells); a backslash makes each literal. Text
# never starts a line here (it follows "- " or a cell's "| "), so block markers need
# nothing. HTML is escaped separately (entities): a backslash does not stop it.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]|~])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` with control characters (terminal escapes, NUL, ...) shown as
    ``\\xNN`` instead of acting on whoever reads it; newlines and tabs kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def markdown_text(text: object) -> str:
    """``text`` as literal inline markdown on one line: markup characters
    backslash-escaped, HTML as entities, newlines as spaces."""
    one_line = printable(text).replace("\r", " ").replace("\n", " ")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", html.escape(one_line, quote=False))


def markdown_cell(text: object) -> str:
    """``text`` as one markdown table cell (see ``markdown_text``: pipes included)."""
    return markdown_text(text)


def markdown_code(text: object) -> str:
    """``text`` as an inline code span, e.g. a file path: shown verbatim, whatever
    backticks it holds (the fence is longer than any run of them inside)."""
    one_line = printable(text).replace("\r", " ").replace("\n", " ")
    longest = max((len(run) for run in re.findall("`+", one_line)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if one_line.startswith("`") or one_line.endswith("`") else ""
    return f"{fence}{pad}{one_line}{pad}{fence}"
