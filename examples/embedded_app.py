"""A trio application that runs an SMTP server next to its other tasks.

The server is one task in the application's nursery: messages go through a memory channel to
a consumer task, and a Ctrl-C (or any task failing) shuts everything down together, which is
what structured concurrency buys over a server in a background thread.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import Any

import trio

import smtptrio


class ChannelHandler:
    """Hand each accepted message to the application through a trio memory channel."""

    def __init__(self, send_channel: trio.MemorySendChannel[tuple[str, list[str], bytes]]) -> None:
        self._send = send_channel

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        # The 250 goes out only after the application has taken the message (back-pressure).
        await self._send.send((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK: queued"


async def consume(receive: trio.MemoryReceiveChannel[tuple[str, list[str], bytes]]) -> None:
    async for mail_from, rcpt_tos, content in receive:
        print(f"got {len(content)} octets from {mail_from} for {', '.join(rcpt_tos)}", flush=True)


async def run(
    port: int = 8025,
    *,
    task_status: trio.TaskStatus[smtptrio.RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    send, receive = trio.open_memory_channel[tuple[str, list[str], bytes]](16)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(consume, receive)
        server = await nursery.start(
            partial(smtptrio.serve, ChannelHandler(send), host="127.0.0.1", port=port)
        )
        print(f"SMTP on 127.0.0.1:{server.port}", flush=True)
        task_status.started(server)


if __name__ == "__main__":
    trio.run(partial(run, int(sys.argv[1]) if len(sys.argv) > 1 else 8025))
