"""``python -m smtptrio``: the same as the ``smtptrio`` command."""

import sys

from smtptrio.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
