"""Addresses the console serves: HOST:PORT checked, and which hosts are loopback."""

from __future__ import annotations

import ipaddress

from triobus.persistence.errors import ValidationError


def check_bind(bind: str, *, no_auth: bool) -> tuple[str, int]:
    """HOST:PORT (`[::1]:8080` for IPv6). Without authentication, only a loopback host."""
    host, colon, port_text = bind.rpartition(":")
    host = host.strip("[]")
    digits = port_text.isascii() and port_text.isdecimal()
    if not colon or not host or not digits or not 0 <= int(port_text) <= 65535:
        raise ValidationError(f"bind must be HOST:PORT, such as 127.0.0.1:8080, not {bind!r}")
    if no_auth and not is_loopback(host):
        raise ValidationError(
            f"--no-auth serves only a loopback address (127.0.0.1, ::1, localhost), not"
            f" {host!r}: configure credentials to serve other hosts"
        )
    return host, int(port_text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
