"""Where /metrics is served: listen addresses written as the exporter-toolkit writes them.

`--web.listen-address` (the setting web_listen_address) takes `host:port`, `[ipv6]:port` or `:port`
(every address), as node_exporter's does, and may be given several times. Without it, listen_address
(a host, no port) and listen_port say where, as they always have.

The same functions decide what check-config accepts and what the exporter binds at start, so that
the two agree: a host name is resolved, and the address must be one of this machine's (a socket is
bound to it on a port the system picks). Whether the port itself is free is not checked beforehand:
the exporter that check-config is run beside may be the one holding it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
EVERY_IPV4 = "0.0.0.0"
EVERY_IPV6 = "::"  # dual-stack: IPv4 connections too, unless the system sets bindv6only


@dataclass(frozen=True)
class ListenAddress:
    """One address to serve on; host "" means every address of the machine."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def check_host(host: str) -> str:
    """The host as given, if it is an IP address or a host name; ValueError otherwise."""
    if host == "" or _is_ip(host) or _HOST_NAME.match(host):
        return host
    if host.startswith("[") and host.endswith("]"):
        raise ValueError(f"{host!r}: brackets belong only around an IPv6 address followed by a port")
    if re.match(r"^[^:]+:\d+$", host) or re.match(r"^\[.*\]:\d+$", host):
        raise ValueError(
            f"{host!r} has a port: give the host alone and the port in listen_port, "
            f"or use web_listen_address (--web.listen-address={host})"
        )
    raise ValueError(f"{host!r} is neither an IP address nor a host name")


def parse_listen_address(text: str) -> ListenAddress:
    """`host:port`, `[ipv6]:port` or `:port` as a ListenAddress; ValueError with what is wrong.

    >>> parse_listen_address("[::1]:9842")
    ListenAddress(host='::1', port=9842)
    """
    text = text.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"{text!r}: expected [IPv6 address]:port")
        if not _is_ip(host) or ":" not in host:
            raise ValueError(f"{text!r}: {host!r} in brackets is not an IPv6 address")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ValueError(f"{text!r} has no port: write host:port, [IPv6]:port or :port")
        if ":" in host:
            raise ValueError(f"{text!r}: put an IPv6 address in brackets, as in [::1]:9842")
        check_host(host)
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: the port must be a number from 1 to 65535")
    return ListenAddress(host, int(port_text))


def bind_address(address: ListenAddress) -> tuple[str, int]:
    """The IP and port to bind for an address; OSError when the host does not resolve.

    Every address is IPv6's "::" (which takes IPv4 connections too) where the machine has IPv6,
    else 0.0.0.0; a host name becomes the first address it resolves to.
    """
    if address.host == "":
        return (EVERY_IPV6 if _bindable(EVERY_IPV6) else EVERY_IPV4), address.port
    if _is_ip(address.host):
        return address.host, address.port
    infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return str(infos[0][4][0]), address.port


def listen_problem(address: ListenAddress) -> str | None:
    """Why the exporter could not listen on this address (the port aside), or None."""
    try:
        host, _ = bind_address(address)
    except OSError as exc:  # socket.gaierror: the name does not resolve
        return f"{address}: cannot resolve {address.host!r} ({exc.strerror or exc})"
    try:
        _try_bind(host)
    except OSError as exc:
        return f"{address}: {host} is not an address of this machine ({exc.strerror or exc})"
    return None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _bindable(host: str) -> bool:
    try:
        _try_bind(host)
    except OSError:
        return False
    return True


def _try_bind(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
