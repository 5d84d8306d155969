"""report.md and a self-contained report.html (images embedded as base64, inline CSS, nothing
fetched from the network) from a list of sections."""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1000px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
img { max-width: 100%; display: block; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; } caption { text-align: left; font-weight: 600; padding: 0.3em 0; }
p.note { color: #555; }
"""


@dataclass
class Section:
    title: str
    text: str = ""
    images: list[Path] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)


def _md_cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(_md_cell(c) for c in frame.columns) + " |"]
    lines.append("| " + " | ".join("---" for _ in frame.columns) + " |")
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join(_md_cell(v) for v in row) + " |")
    return "\n".join(lines)


def _html_table(caption: str, frame: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    )
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write(out: Path, title: str, intro: str, sections: list[Section]) -> tuple[Path, Path]:
    """Write ``out/report.md`` and ``out/report.html``; returns both paths."""
    md = [f"# {title}", "", intro, ""]
    page = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="note">{html.escape(intro)}</p>',
    ]
    for section in sections:
        md += [f"## {section.title}", ""]
        page.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.text:
            md += [section.text, ""]
            page.append(f"<p>{html.escape(section.text)}</p>")
        for caption, frame in section.tables:
            if caption:
                md += [f"**{caption}**", ""]
            md += [_md_table(frame), ""]
            page.append(_html_table(caption, frame))
        for image in section.images:
            md += [f"![{image.stem}]({image.name})", ""]
            encoded = base64.b64encode(image.read_bytes()).decode("ascii")
            page.append(
                f'<img alt="{html.escape(image.stem)}" src="data:image/png;base64,{encoded}">'
            )
    page.append("</body></html>")
    md_path, html_path = out / "report.md", out / "report.html"
    _write(md_path, "\n".join(md))
    _write(html_path, "\n".join(page) + "\n")
    return md_path, html_path
