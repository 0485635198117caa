"""What every `triobus` command shares: exit statuses, usage errors, one-line messages."""

from __future__ import annotations

import argparse
import signal
from typing import NoReturn

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT


class UsageError(Exception):
    """A mistake in how the command was called (exit status 2)."""


class Parser(argparse.ArgumentParser):
    """Reports a usage mistake in one line (no usage block); `--help` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def one_line(message: object) -> str:
    """A message on one line: libpq's messages carry a second, indented hint line."""
    return " ".join(str(message).split())


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration(text: str) -> float:
    """Seconds from "90", "45s", "30m", "12h" or "7d" (an argparse type)."""
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: a number of seconds, or with s, m, h or d"
        ) from None
    if not seconds >= 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration of zero or more")
    return seconds
