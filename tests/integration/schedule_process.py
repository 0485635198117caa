"""A runtime in its own OS process declaring an every-second schedule:
python schedule_process.py DSN

It declares the schedule "every-second" (domain "clock", command type "Tick", a catch-up
window of 60 s), prints "ready", and sends ticks until it is killed.
"""

from __future__ import annotations

import sys

import trio

from triobus.actors import open_runtime

NAME, DOMAIN, COMMAND_TYPE, CRON = "every-second", "clock", "Tick", "* * * * * *"


async def main(dsn: str) -> None:
    async with open_runtime(dsn, migrate=False, retention=None) as runtime:
        await runtime.schedule(NAME, DOMAIN, COMMAND_TYPE, CRON, catch_up=60)
        print("ready", flush=True)
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
