"""Sphinx configuration for the smtptrio documentation.

Built by ``nox -s docs`` twice, both with warnings as errors: once as HTML and once with the
doctest builder, which runs every example on these pages (they start real servers on
127.0.0.1, port 0). Nothing here reaches the network: no intersphinx, no remote themes.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
# The local extensions (the argparse and options reference generators).
sys.path.insert(0, os.path.join(HERE, "_ext"))
# The package itself, for a build from a checkout that did not install it.
sys.path.insert(1, os.path.dirname(HERE))

from smtptrio import __version__  # noqa: E402

project = "smtptrio"
author = "The smtptrio developers"
copyright = "the smtptrio developers"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.doctest",
    "sphinx.ext.viewcode",
    "argparse_doc",
    "options_doc",
]

root_doc = "index"
exclude_patterns = ["_build"]
templates_path: list[str] = []
pygments_style = "sphinx"

# --- autodoc / napoleon ----------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_class_signature = "mixed"
# Google-style docstrings (STYLE.md section 6). ``:ivar:`` fields instead of attribute
# directives keep "Attributes:" sections from duplicating the members autodoc lists.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# --- doctest ---------------------------------------------------------------------------------
# Every example imports what it uses, so a reader can copy it as it stands: no global setup.
doctest_global_setup = ""
trim_doctest_flags = True

# --- HTML ------------------------------------------------------------------------------------
html_theme = "alabaster"
html_theme_options = {
    "description": "SMTP servers on Trio, with aiosmtpd-compatible handlers",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []
html_title = f"smtptrio {release}"


# --- attribute docstrings --------------------------------------------------------------------
# napoleon reads the first line of an attribute or property docstring as "type: description",
# so a ``#:`` comment such as "The socket peer: ``(host, port)``..." would render with
# "The socket peer" as its type. smtptrio's attribute comments are plain sentences, never
# Google-style typed fields (the types come from the annotations), so napoleon is kept away
# from attributes, properties and module data, and still handles functions and classes.

_PLAIN_WHATS = frozenset({"attribute", "property", "data"})


def setup(app):  # type: ignore[no-untyped-def]
    from sphinx.ext.napoleon import _process_docstring

    for listener in list(app.events.listeners["autodoc-process-docstring"]):
        if listener.handler is _process_docstring:
            app.disconnect(listener.id)

            def process(app, what, name, obj, options, lines):  # type: ignore[no-untyped-def]
                if what not in _PLAIN_WHATS:
                    _process_docstring(app, what, name, obj, options, lines)

            app.connect("autodoc-process-docstring", process, priority=listener.priority)
