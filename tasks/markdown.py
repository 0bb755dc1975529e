"""Markdown the reports share: one rule for putting text into a table cell.

Every report (run, preview, quality, credits) renders user-named things (class names,
model ids, dataset URLs, error messages) into GitHub-flavoured markdown tables. A pipe
would end the cell and a newline the row, so each report escaping on its own drifted
apart; this is the single rule they all use.
"""

from __future__ import annotations


def markdown_cell(text: object) -> str:
    """``text`` as one markdown table cell: pipes escaped, newlines made spaces."""
    return str(text).replace("|", "\\|").replace("\n", " ")
