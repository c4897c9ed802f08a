"""Store every message in a Maildir; each file is fsynced before the client gets 250.

Run it with ``python examples/maildir_server.py ./mail [PORT]``, then read the messages with
``mailbox.Maildir("./mail")`` or any mail client that reads Maildirs.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

import smtptrio
from smtptrio.handlers import Mailbox


async def run(
    maildir: str,
    port: int = 8025,
    *,
    task_status: trio.TaskStatus[smtptrio.RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    await smtptrio.serve(Mailbox(maildir), host="127.0.0.1", port=port, task_status=task_status)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: maildir_server.py MAILDIR [PORT]")
    trio.run(partial(run, sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8025))
