"""smtptrio: a Trio-based, structured-concurrency SMTP server framework.

Handlers written for aiosmtpd run unchanged; see the docs' "Migrating from aiosmtpd".
"""

import logging as _logging

from smtptrio.__about__ import __version__ as __version__
from smtptrio.protocol.proxy import ProxyData as ProxyData
from smtptrio.protocol.replies import Reply as Reply
from smtptrio.server.hooks import HookTimeout as HookTimeout
from smtptrio.server.hooks import auth_mechanism as auth_mechanism
from smtptrio.server.options import OptionError as OptionError
from smtptrio.server.options import Options as Options
from smtptrio.server.serve import RunningServer as RunningServer
from smtptrio.server.serve import serve as serve
from smtptrio.server.serve import serve_listeners as serve_listeners
from smtptrio.server.session import MISSING as MISSING
from smtptrio.server.session import AuthResult as AuthResult
from smtptrio.server.session import Envelope as Envelope
from smtptrio.server.session import LoginPassword as LoginPassword
from smtptrio.server.session import Session as Session
from smtptrio.server.smtp import SMTP as SMTP
from smtptrio.server.smtp import syntax as syntax

__all__ = [
    "MISSING",
    "SMTP",
    "AuthResult",
    "Envelope",
    "HookTimeout",
    "LoginPassword",
    "OptionError",
    "Options",
    "ProxyData",
    "Reply",
    "RunningServer",
    "Session",
    "__version__",
    "auth_mechanism",
    "serve",
    "serve_listeners",
    "syntax",
]

# A library logs but never decides where logs go: without this, Python's last-resort handler
# would print our warnings (refused commands, timeouts) to stderr of every embedding program.
_logging.getLogger("smtptrio").addHandler(_logging.NullHandler())


def __getattr__(name: str) -> object:
    # The Controller pulls in anyio's thread portal: import it only when asked for.
    if name in ("Controller", "UnixSocketController"):
        from smtptrio import controller

        return getattr(controller, name)
    raise AttributeError(f"module 'smtptrio' has no attribute {name!r}")
