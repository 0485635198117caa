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
