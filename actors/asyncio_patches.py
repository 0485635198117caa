"""trio-asyncio patches asyncio's loop lookups when it is imported, so that asyncio code
run by `asyncio=True` handlers finds the runtime's loop. A module imported before it that
bound those functions by name keeps the unpatched ones and fails with "no running event
loop": psycopg's asyncio waits do (`from asyncio import get_running_loop`). Importing
this module (triobus.actors does, first) imports trio-asyncio and re-binds them, so the
order in which an application imports psycopg and triobus does not matter.
"""

from __future__ import annotations

import asyncio
import sys

import trio_asyncio  # noqa: F401 - patches asyncio when imported

# Modules that bind asyncio's loop lookup by name, and the names they bind.
_BOUND_BY_NAME = {"psycopg.waiting": ("get_running_loop",)}


def rebind_loop_lookups() -> None:
    """Point names bound before trio-asyncio's patch at the patched functions."""
    for module_name, names in _BOUND_BY_NAME.items():
        module = sys.modules.get(module_name)
        for name in names:
            if module is not None and hasattr(module, name):
                setattr(module, name, getattr(asyncio, name))


rebind_loop_lookups()
