"""A handler written for aiosmtpd, running unchanged: only the imports differ.

The class below is what aiosmtpd's documentation teaches (a recipient filter plus a DATA
hook); with aiosmtpd it would be served by ``aiosmtpd.controller.Controller``, here by
``smtptrio.Controller`` with the same constructor, ``start()`` and ``stop()``.
"""

from __future__ import annotations

import sys
import time

from smtptrio import Controller  # was: from aiosmtpd.controller import Controller


class ExampleHandler:
    def __init__(self) -> None:
        self.received: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]
        if not address.endswith("@example.com"):
            return "550 not relaying to that domain"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]
        print(f"Message from {envelope.mail_from}")
        print(f"Message for {envelope.rcpt_tos}")
        self.received.append((envelope.mail_from, envelope.rcpt_tos, envelope.content))
        return "250 Message accepted for delivery"


def main(port: int = 8025) -> None:
    controller = Controller(ExampleHandler(), hostname="127.0.0.1", port=port)
    controller.start()
    print(f"listening on 127.0.0.1:{controller.port}; Ctrl-C to stop", flush=True)
    try:
        for _ in range(10**9):
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        controller.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8025)
