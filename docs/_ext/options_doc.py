"""``.. options-table::``: a table of server options, read from ``smtptrio.Options`` itself.

Each row gives the option name, its default as the dataclass declares it, and the ``#:``
comment written above the field in the source. The names to show are listed in the
``:names:`` option (comma or space separated), in the order wanted; without it every field
is shown. A name that is not a field of ``Options`` is a build warning, so a renamed option
breaks the docs build instead of leaving a stale row behind.
"""

from __future__ import annotations

import dataclasses
import re
from types import MappingProxyType
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

log = logging.getLogger(__name__)

__all__ = ["OptionsTable", "setup"]


def _default_text(field: dataclasses.Field[Any]) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:  # pragma: no cover - every option has a default
        return "(required)"
    if isinstance(value, MappingProxyType):
        value = dict(value)
    if isinstance(value, frozenset):
        return "{" + ", ".join(repr(v) for v in sorted(value)) + "}" if value else "frozenset()"
    return repr(value)


def _inline(text: str) -> list[nodes.Node]:
    """Plain text with ````literal```` spans kept as literals (the comments use them)."""
    out: list[nodes.Node] = []
    for i, part in enumerate(re.split(r"``(.+?)``", text)):
        if not part:
            continue
        out.append(nodes.literal(part, part) if i % 2 else nodes.Text(part))
    return out


class OptionsTable(SphinxDirective):
    has_content = False
    option_spec = {"names": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        from smtptrio.server.options import Options

        fields = {f.name: f for f in dataclasses.fields(Options)}
        analyzer = ModuleAnalyzer.for_module(Options.__module__)
        comments = analyzer.find_attr_docs()
        wanted = self.options.get("names")
        names = re.split(r"[\s,]+", wanted.strip()) if wanted else list(fields)
        rows: list[tuple[str, str, str]] = []
        for name in names:
            field = fields.get(name)
            if field is None:
                log.warning(
                    "options-table: %r is not a field of smtptrio.Options", name,
                    location=self.get_location(),
                )
                continue
            doc = " ".join(line.strip() for line in comments.get(("Options", name), [])).strip()
            rows.append((name, _default_text(field), doc))
        return [self._table(rows)]

    @staticmethod
    def _table(rows: list[tuple[str, str, str]]) -> nodes.table:
        table = nodes.table()
        table["classes"].append("options-table")
        group = nodes.tgroup(cols=3)
        table += group
        for width in (24, 18, 58):
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        group += head
        head_row = nodes.row()
        for title in ("Option", "Default", "Meaning"):
            entry = nodes.entry()
            entry += nodes.paragraph(title, title)
            head_row += entry
        head += head_row
        body = nodes.tbody()
        group += body
        for name, default, doc in rows:
            row = nodes.row()
            for i, cell in enumerate((name, default, doc)):
                entry = nodes.entry()
                para = nodes.paragraph()
                if i < 2:
                    para += nodes.literal(cell, cell)
                else:
                    para.extend(_inline(cell))
                entry += para
                row += entry
            body += row
        return table


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("options-table", OptionsTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
