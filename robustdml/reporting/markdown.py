"""The report's HTML: the small Markdown subset it writes, as HTML, and the self-contained page."""

from __future__ import annotations

import html
import re


def _md_to_html(text: str) -> str:
    """The small Markdown subset the report writes: headings, tables, bullets, paragraphs, code."""
    out, rows = [], []

    def inline(s):
        s = html.escape(s)
        parts = s.split("`")
        s = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
        parts = s.split("**")
        s = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
        return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', s)

    def flush():
        if rows:
            cells = [[c.strip() for c in r.strip("|").split("|")] for r in rows if not set(r) <= set("|-: ")]
            out.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{inline(c)}</{'th' if i == 0 else 'td'}>" for c in row) + "</tr>"
                for i, row in enumerate(cells)) + "</table>")
            rows.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            rows.append(line)
            continue
        flush()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            title = line[level:].strip()
            anchor = re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")  # as Markdown renderers do
            out.append(f'<h{level} id="{anchor}">{inline(title)}</h{level}>')
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)
