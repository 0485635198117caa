"""Reading what a child process prints, line by line: the tests' events over a pipe."""

from __future__ import annotations

import trio


async def read_line(process: trio.Process) -> str:
    """The next line `process` prints on its standard output (a pipe), stripped."""
    assert process.stdout is not None
    line = b""
    while not line.endswith(b"\n"):
        chunk = await process.stdout.receive_some(1)
        if not chunk:
            raise EOFError(f"the process ended before a whole line (exit {process.poll()})")
        line += chunk
    return line.decode().strip()
