"""``.. argparse-help:: package.module:function``: a command-line reference built from argparse.

The directive imports ``function``, calls it without arguments to get an
:class:`argparse.ArgumentParser`, and renders what the parser itself knows: the usage line,
the description, every option (its flags with their metavar, its help text, its choices and
its default) grouped as ``--help`` groups them, the epilog, and any sub-commands. The page
therefore cannot drift from the code: change an option and the next build shows it.

When the function cannot be imported, or returns something that is not a parser, the
directive renders an admonition that says which function it needs and why it failed, and
logs the same at INFO level. It never emits a Sphinx warning for that case, so a docs build
with ``-W`` keeps working while the command line is still being written.

Options of the directive:

``:no-usage:``
    leave out the usage line.
``:no-help-option:``
    leave out ``-h/--help``, which every parser has.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
from collections.abc import Iterator
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

log = logging.getLogger(__name__)

__all__ = ["ArgparseHelp", "setup"]


#: The width argparse wraps the usage line at, whatever terminal the build runs in.
USAGE_WIDTH = 90


@contextlib.contextmanager
def _fixed_width(columns: int) -> Iterator[None]:
    """argparse sizes its output to the terminal (``COLUMNS``); pin it so builds agree."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(columns)
    try:
        yield
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def _load_parser(target: str) -> argparse.ArgumentParser:
    """Import ``module:function``, call it, and check that it gave a parser.

    Raises:
        ValueError: ``target`` is not of the ``module:function`` form.
        ImportError, AttributeError: the module or the function does not exist.
        TypeError: the function did not return an ``ArgumentParser``.
    """
    module_name, colon, attr = target.partition(":")
    if not colon or not module_name or not attr:
        raise ValueError(f"expected 'package.module:function', got {target!r}")
    module = importlib.import_module(module_name)
    factory = getattr(module, attr)
    parser = factory()
    if not isinstance(parser, argparse.ArgumentParser):
        raise TypeError(f"{target}() returned {type(parser).__name__}, not an ArgumentParser")
    return parser


def _invocation(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The flags with their metavar, exactly as ``--help`` prints them (``-c CLASSPATH, ...``)."""
    formatter = parser._get_formatter()
    try:
        return formatter._format_action_invocation(action)
    except (AttributeError, TypeError):  # pragma: no cover - a future argparse
        if action.option_strings:
            return ", ".join(action.option_strings)
        return str(action.metavar or action.dest)


def _help_text(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help string with argparse's ``%(default)s``-style fields filled in."""
    text = action.help or ""
    if "%" not in text:
        return text
    params: dict[str, Any] = dict(vars(action), prog=parser.prog)
    for name in list(params):
        if params[name] is argparse.SUPPRESS:
            del params[name]
    if params.get("choices") is not None:
        params["choices"] = ", ".join(str(c) for c in params["choices"])
    try:
        return text % params
    except (KeyError, TypeError, ValueError):
        return text


def _default_shown(action: argparse.Action) -> str | None:
    """The default worth printing, or None.

    Flags (``store_true``, ``count``, ``version``...) take no value, so their argparse default
    says nothing a reader can use; None, empty lists and ``SUPPRESS`` mean "not set".
    """
    if action.nargs == 0:
        return None
    default = action.default
    if default is None or default is argparse.SUPPRESS or default == [] or default == "":
        return None
    if isinstance(default, list | tuple):
        return " ".join(str(d) for d in default)
    return str(default)


def _paragraph(text: str) -> nodes.paragraph:
    return nodes.paragraph(text, text)


def _literal_paragraph(label: str, value: str) -> nodes.paragraph:
    para = nodes.paragraph()
    para += nodes.emphasis(label, label)
    para += nodes.Text(" ")
    para += nodes.literal(value, value)
    return para


class ArgparseHelp(SphinxDirective):
    """Render the parser returned by the function named in the argument."""

    required_arguments = 1
    optional_arguments = 0
    has_content = False
    option_spec = {
        "no-usage": directives.flag,
        "no-help-option": directives.flag,
    }

    def run(self) -> list[nodes.Node]:
        target = self.arguments[0]
        try:
            parser = _load_parser(target)
        except Exception as exc:  # any failure to build the parser degrades, never breaks
            return [self._unavailable(target, exc)]
        with _fixed_width(USAGE_WIDTH):
            return self._render(parser)

    # ------------------------------------------------------------------ degraded output

    def _unavailable(self, target: str, exc: Exception) -> nodes.Node:
        reason = f"{type(exc).__name__}: {exc}"
        log.info(
            "argparse-help: %s is not available (%s); rendering a placeholder",
            target,
            reason,
            location=self.get_location(),
        )
        box = nodes.admonition()
        box["classes"].append("attention")
        title = "Option reference not generated"
        box += nodes.title(title, title)
        para = nodes.paragraph()
        para += nodes.Text("This reference is generated at build time from the parser that ")
        para += nodes.literal(target, target)
        para += nodes.Text(
            " returns (a function taking no arguments and returning an "
            "argparse.ArgumentParser). That function could not be used in this build:"
        )
        box += para
        box += nodes.literal_block(reason, reason)
        hint = "Until it exists, run the command with --help for the full list of options."
        box += _paragraph(hint)
        return box

    # ------------------------------------------------------------------ rendering

    def _render(self, parser: argparse.ArgumentParser) -> list[nodes.Node]:
        out: list[nodes.Node] = []
        if "no-usage" not in self.options:
            usage = parser.format_usage().strip()
            usage = usage.removeprefix("usage:").strip()
            block = nodes.literal_block(usage, usage)
            block["language"] = "text"
            out.append(block)
        if parser.description:
            out.append(_paragraph(parser.description))
        subcommands: list[tuple[str, argparse.ArgumentParser, str]] = []
        for group in parser._action_groups:
            items = nodes.definition_list()
            for action in group._group_actions:
                if isinstance(action, argparse._SubParsersAction):
                    helps = {a.dest: a.help or "" for a in action._choices_actions}
                    for name, sub in action.choices.items():
                        subcommands.append((name, sub, helps.get(name, "")))
                    continue
                if action.help is argparse.SUPPRESS:
                    continue
                if isinstance(action, argparse._HelpAction) and "no-help-option" in self.options:
                    continue
                items += self._item(parser, action)
            if len(items):
                title = group.title or "arguments"
                heading = nodes.rubric(title.capitalize(), title.capitalize())
                out.append(heading)
                if group.description:
                    out.append(_paragraph(group.description))
                out.append(items)
        if parser.epilog:
            out.append(_paragraph(parser.epilog))
        for name, sub, help_text in subcommands:
            heading = f"{parser.prog} {name}"
            out.append(nodes.rubric(heading, heading))
            if help_text:
                out.append(_paragraph(help_text))
            out.extend(self._render(sub))
        return out

    def _item(self, parser: argparse.ArgumentParser, action: argparse.Action) -> nodes.Node:
        item = nodes.definition_list_item()
        invocation = _invocation(parser, action)
        term = nodes.term()
        term += nodes.literal(invocation, invocation)
        item += term
        body = nodes.definition()
        help_text = _help_text(parser, action)
        if help_text:
            body += _paragraph(help_text)
        if action.choices is not None and not isinstance(action.choices, dict):
            choices = ", ".join(str(c) for c in action.choices)
            body += _literal_paragraph("Choices:", choices)
        default = _default_shown(action)
        if default is not None:
            body += _literal_paragraph("Default:", default)
        if action.required and action.option_strings:
            body += _paragraph("Required.")
        item += body
        return item


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("argparse-help", ArgparseHelp)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
