"""Docs pages with a generated part: the text between two marker lines is rewritten, the hand-
written text around it kept (`simkv cost report`, the end-to-end validation page)."""

from __future__ import annotations

from pathlib import Path


def link_dir(figure_dir: Path, page: Path) -> Path:
    """`figure_dir` as a page at `page` links to it (relative where it can be)."""
    try:
        return figure_dir.resolve().relative_to(page.parent.resolve())
    except ValueError:
        return figure_dir


def write_generated_section(page: Path, body: str, start: str, end: str, title: str) -> None:
    """Write `body` between the `start` and `end` markers of `page` (a new page gets `title` and
    the markers; a page without them gets them appended)."""
    text = page.read_text() if page.exists() else f"# {title}\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1] if end in rest else ""
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(f"{head}{start}\n\n{body}\n{end}{tail}")
