"""One network hop for the benchmarks: a DSN whose connections pass through
benchmarks/latency_proxy.c, which delays every byte by DELAY microseconds each way.

    async with latency_hop(dsn, delay_us=250) as hop_dsn: ...

The kernel here has no netem (`tc qdisc ... netem` fails: "Specified qdisc kind is
unknown"), so the delay is a proxy's: compiled with the machine's C compiler on first use,
one process, one thread, epoll and a timerfd. `python benchmarks/latency.py DSN` prints
the round trip of `SELECT 1` with and without the hop.
"""

from __future__ import annotations

import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from psycopg.conninfo import conninfo_to_dict, make_conninfo

SOURCE = Path(__file__).with_name("latency_proxy.c")


def proxy_binary() -> Path:
    """The compiled proxy, built once per version of its source."""
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:12]
    binary = Path(tempfile.gettempdir()) / f"triobus-latency-proxy-{digest}"
    if not binary.exists():
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise RuntimeError("the latency proxy needs a C compiler (cc or gcc) on PATH")
        partial = binary.with_suffix(".partial")
        subprocess.run([compiler, "-O2", "-o", str(partial), str(SOURCE)], check=True)
        partial.rename(binary)
    return binary


@asynccontextmanager
async def latency_hop(dsn: str, *, delay_us: int = 250) -> AsyncIterator[str]:
    """`dsn`, reached through the latency proxy on a free loopback port."""
    params = conninfo_to_dict(dsn)
    host = str(params.get("host") or "127.0.0.1")  # or a Unix socket directory
    port = str(params.get("port") or 5432)
    process = await trio.lowlevel.open_process(
        [str(proxy_binary()), "0", host, port, str(delay_us)], stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = b""
        with trio.fail_after(10):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                if not chunk:
                    raise RuntimeError(f"the latency proxy ended (exit {process.poll()})")
                line += chunk
        listening = int(line.decode().split()[1])
        yield make_conninfo(dsn, host="127.0.0.1", port=str(listening), sslmode="disable")
    finally:
        process.kill()
        await process.wait()


async def round_trip_ms(dsn: str, times: int = 200) -> float:
    from triobus.persistence.driver import connect

    conn = await connect(dsn)
    try:
        timings = []
        for _ in range(times):
            started = time.perf_counter()
            await conn.fetch_one("SELECT 1 AS one")
            timings.append((time.perf_counter() - started) * 1000)
        return statistics.median(timings)
    finally:
        await conn.close()


async def main(dsn: str) -> None:
    direct = await round_trip_ms(dsn)
    async with latency_hop(dsn) as hop:
        through = await round_trip_ms(hop)
    print(f"SELECT 1, median of 200 round trips: {direct:.3f} ms direct, {through:.3f} ms hop")


if __name__ == "__main__":
    trio.run(main, sys.argv[1])
