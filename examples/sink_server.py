"""The smallest server: accept every message and throw it away (aiosmtpd's Sink).

Run it with ``python examples/sink_server.py [PORT]`` and send it mail on localhost.
"""

from __future__ import annotations

import sys
from functools import partial

import trio

import smtptrio
from smtptrio.handlers import Sink


async def run(
    port: int = 8025,
    *,
    task_status: trio.TaskStatus[smtptrio.RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    await smtptrio.serve(Sink(), host="127.0.0.1", port=port, task_status=task_status)


if __name__ == "__main__":
    trio.run(partial(run, int(sys.argv[1]) if len(sys.argv) > 1 else 8025))
