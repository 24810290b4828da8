"""The scripted handler (tests/handlers/scripted_handler.py) with one more
command, for packets that must reach condure back to back, as one batch:

- ``{"cmd": "send_many", "frames": ["hex", ...]}``: publish every frame
  (each ``address + " T..."``, as ``send_raw`` does) at once, without a
  round trip to the test in between.

Run as ``python -m tests.handlers.burst_handler`` with the scripted
handler's arguments.
"""

from __future__ import annotations

import sys

from tests.handlers import scripted_handler


class BurstHandler(scripted_handler.Handler):
    def handle(self, cmd: dict) -> dict | None:
        if cmd.get("cmd") == "send_many":
            frames = [bytes.fromhex(f) for f in cmd["frames"]]
            for frame in frames:
                self.xpub.send(frame)
            return {"ok": True, "sent": len(frames)}
        return super().handle(cmd)


def main(argv: list[str]) -> int:
    return scripted_handler.main(argv, BurstHandler)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
