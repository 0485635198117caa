"""The NOTIFY vocabulary: channel names and payload formats, for the SQL and the listeners.

A notification is a hint to look at the database, never the data itself, and it is
delivered only after its transaction commits. Channel names and payload formats are
defined here once: the statements render them into their SQL, the notifier LISTENs on
them and the batch actor subscribes to the payload of its batch.
"""

from __future__ import annotations

import enum
from uuid import UUID


class Channel(enum.StrEnum):
    """A NOTIFY channel; the payload of each is given beside it."""

    COMMAND = "triobus_command"  # payload: the domain with new claimable commands
    REPLY = "triobus_reply"  # payload: the reply queue with a new reply
    BATCH = "triobus_batch"  # payload: batch_payload(domain, batch_id) of a completed batch


def batch_payload(domain: str, batch_id: UUID) -> str:
    """The payload of a batch completion: "domain:batch_id"."""
    return f"{domain}:{batch_id}"


def batch_payload_sql(domain: str, batch_id: str) -> str:
    """The SQL expression computing `batch_payload` from two column expressions."""
    return f"{domain} || ':' || {batch_id}"


def notify_sql(channel: Channel, payload: str) -> str:
    """The SQL call sending `payload` (an SQL expression) on `channel` (a constant)."""
    return f"pg_notify('{channel}', {payload})"
