"""Add an SMTP command by subclassing ``smtptrio.SMTP``, the way aiosmtpd users do.

``XCOUNT`` answers how many messages this session has delivered; it shows up in HELP.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import trio

import smtptrio


class CountingSMTP(smtptrio.SMTP):
    @smtptrio.syntax("XCOUNT")
    async def smtp_XCOUNT(self, arg: str | None) -> None:
        if arg:
            await self.push("501 5.5.4 Syntax: XCOUNT")
            return
        delivered = getattr(self.session, "delivered", 0)
        await self.push(f"250 2.0.0 {delivered} message(s) delivered in this session")


class Handler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        session.delivered = getattr(session, "delivered", 0) + 1
        return "250 OK"


async def run(
    port: int = 8025,
    *,
    task_status: trio.TaskStatus[smtptrio.RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    await smtptrio.serve(
        Handler(), host="127.0.0.1", port=port, smtp_class=CountingSMTP, task_status=task_status
    )


if __name__ == "__main__":
    trio.run(partial(run, int(sys.argv[1]) if len(sys.argv) > 1 else 8025))
