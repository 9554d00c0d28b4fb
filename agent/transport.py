"""The one place that makes gRPC servers' ports and channels, for agent and controller,
and the data port's TLS contexts (dataport.py).

Today: plaintext, and a non-loopback listen address needs an explicit `--insecure` because
anyone on the network could push shards or read activations. Mutual TLS (join token ->
fleet CA -> per-device certificate) switches on here without touching any call site.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl

import grpc

# Activations of big models exceed gRPC's 4 MB default; tensors above CHUNK_BYTES are
# chunked anyway (pipeline.py), so this only bounds one message.
MAX_MESSAGE_BYTES = 64 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
]
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]


class InsecureListen(ValueError):
    """A non-loopback address without --insecure."""


def is_loopback(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except OSError:
            return False


def check_address(address: str) -> str:
    """`address` if it reads as HOST:PORT (IPv6 hosts in brackets), else ValueError."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if (not sep or not host or len(address) > 300 or not port.isdigit()
            or not 0 < int(port) < 65536 or any(c.isspace() or c in "/@" for c in host)):
        raise ValueError(f"address {address[:80]!r} is not HOST:PORT")
    return address


def add_port(server: grpc.aio.Server, address: str, *, insecure: bool) -> int:
    """Bind `address` (port 0 picks a free one) and return the port."""
    if not is_loopback(address) and not insecure:
        raise InsecureListen(
            f"refusing to listen on {address} without TLS: anyone on that network could "
            f"push shards and read activations. Mutual TLS is not there yet; pass --insecure "
            f"(or insecure = true in the config) on a network you trust, or listen on "
            f"127.0.0.1")
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}: address in use or not on this host")
    return port


def server(**kwargs: object) -> grpc.aio.Server:
    return grpc.aio.server(options=SERVER_OPTIONS, **kwargs)  # type: ignore[arg-type]


def channel(address: str) -> grpc.aio.Channel:
    """An asyncio channel to an agent or controller."""
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def sync_channel(address: str) -> grpc.Channel:
    """A blocking channel (the CLI and the Python client)."""
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)


def data_port_server_ssl() -> ssl.SSLContext | None:
    """TLS for the data port's listener: None (plaintext) until mutual TLS lands; the
    data port listens on the --listen host, so the --insecure rule above covers it too."""
    return None


def data_port_client_ssl() -> ssl.SSLContext | None:
    """TLS for dialing another agent's data port (see data_port_server_ssl)."""
    return None
