"""A report as plain data (sections of text, tables and figures) and its Markdown and HTML renderings.

The HTML page is self-contained: styles inline, figures embedded as base64 PNG, no external assets.
Tables hold aggregated statistics only, never row-level predictions.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl


@dataclass(frozen=True)
class Table:
    """A captioned table of display strings (every column already formatted)."""

    key: str
    caption: str
    frame: pl.DataFrame
    note: str = ""


@dataclass(frozen=True)
class Figure:
    """A captioned PNG figure; `key` is its file stem."""

    key: str
    caption: str
    png: bytes

    @property
    def filename(self) -> str:
        """`<key>.png`."""
        return f"{self.key}.png"


@dataclass
class Section:
    """One part of the report (e.g. one of the paper's four questions)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)


@dataclass
class Report:
    """The whole report."""

    title: str
    summary: list[str]
    sections: list[Section]

    @property
    def figures(self) -> list[Figure]:
        """Every figure, in document order."""
        return [figure for section in self.sections for figure in section.figures]


def _cell_md(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pl.DataFrame) -> str:
    """A GitHub pipe table of `frame` (values shown as they are)."""
    if frame.width == 0:
        return ""
    header = "| " + " | ".join(_cell_md(name) for name in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(_cell_md(value) for value in row) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *rows])


def render_markdown(report: Report) -> str:
    """The report as Markdown; figures are referenced as sibling PNG files."""
    lines = [f"# {report.title}", ""]
    lines += [*report.summary, ""]
    for section in report.sections:
        lines += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            lines += [paragraph, ""]
        for table in section.tables:
            lines += [f"**{table.caption}**", ""]
            lines += [markdown_table(table.frame) if table.frame.height else "_no rows_", ""]
            if table.note:
                lines += [f"_{table.note}_", ""]
        for figure in section.figures:
            lines += [f"![{figure.caption}]({figure.filename})", "", f"_{figure.caption}_", ""]
    return "\n".join(lines).rstrip() + "\n"


_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1180px;
       margin: 2em auto; padding: 0 1em; color: #1f2328; line-height: 1.45; }
h1 { border-bottom: 2px solid #d0d7de; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #d0d7de; padding-bottom: .2em; margin-top: 2em; }
p, li, figcaption, h1, h2 { overflow-wrap: anywhere; }
.scroll { overflow-x: auto; margin: .3em 0 1.5em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f6f8fa; }
td:first-child, th:first-child { text-align: left; }
.caption { font-size: 13px; font-weight: 600; margin: 1em 0 0; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { font-size: 13px; color: #57606a; }
.note { font-size: 12px; color: #57606a; margin-top: -1em; }
@media (max-width: 600px) {
  body { margin: 1em auto; padding: 0 .75em; }
  h1 { font-size: 1.6em; }
  h2 { font-size: 1.3em; }
}
"""


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(str(name))}</th>" for name in table.frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in row) + "</tr>"
        for row in table.frame.iter_rows()
    )
    if not table.frame.height:
        body = f'<tr><td colspan="{max(table.frame.width, 1)}">no rows</td></tr>'
    note = f'<p class="note">{html.escape(table.note)}</p>' if table.note else ""
    key = html.escape(table.key)
    # The caption sits above the scroll box, so a narrow window shows all of it, not the first columns' width.
    return (
        f'<p class="caption" id="{key}-caption">{html.escape(table.caption)}</p>'
        f'<div class="scroll"><table id="{key}" aria-labelledby="{key}-caption">'
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>{note}"
    )


def _html_figure(figure: Figure) -> str:
    data = base64.b64encode(figure.png).decode("ascii")
    caption = html.escape(figure.caption)
    return (
        f'<figure id="{html.escape(figure.key)}"><img alt="{caption}" src="data:image/png;base64,{data}">'
        f"<figcaption>{caption}</figcaption></figure>"
    )


def _paragraphs(paragraphs: Sequence[str]) -> str:
    return "".join(f"<p>{html.escape(text)}</p>" for text in paragraphs)


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (inline CSS, figures as data URIs)."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(report.title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(report.title)}</h1>",
        _paragraphs(report.summary),
        "<nav><ul>"
        + "".join(
            f'<li><a href="#section-{index}">{html.escape(section.title)}</a></li>'
            for index, section in enumerate(report.sections)
        )
        + "</ul></nav>",
    ]
    for index, section in enumerate(report.sections):
        parts.append(f'<section id="section-{index}"><h2>{html.escape(section.title)}</h2>')
        parts.append(_paragraphs(section.paragraphs))
        parts.extend(_html_table(table) for table in section.tables)
        parts.extend(_html_figure(figure) for figure in section.figures)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
