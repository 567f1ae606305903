"""Fail in seconds, with one line, when a service the run needs (a Ray cluster, an MLflow server) is not there.

Ray's and MLflow's own clients retry for minutes (Ray's GCS client forever) before reporting an unreachable
address, so dplbench first opens a plain TCP connection with a short timeout.
"""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from dplbench.errors import ConfigError

PROBE_TIMEOUT_S = 3.0


def split_host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``scheme://host:port/...`` -> (host, port); ConfigError when malformed."""
    text = address if "://" in address else f"tcp://{address}"
    try:
        parts = urlsplit(text)
        port = parts.port if parts.port is not None else default_port
    except ValueError:
        port = None
        parts = None
    if parts is None or not parts.hostname or port is None:
        raise ConfigError(f"cannot read a host and port from {address!r} (expected host:port)")
    return parts.hostname, port


def tcp_unreachable(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to ``host:port`` opens within ``timeout`` seconds, else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.timeout:
        return f"no answer within {timeout:g}s"
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror or exc})"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # + an empty SETTINGS frame


def http2_silent(host: str, port: int, timeout: float) -> str | None:
    """None when ``host:port`` answers the HTTP/2 client preface with a SETTINGS frame (as every gRPC server,
    Ray's GCS and Ray Client server among them, does), else the reason."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(HTTP2_PREFACE)
            header = b""
            while len(header) < 9:
                chunk = conn.recv(9 - len(header))
                if not chunk:
                    break
                header += chunk
    except socket.timeout:
        return f"no gRPC answer within {timeout:g}s"
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    if len(header) == 9 and header[3] == 4:
        return None
    return "it accepts TCP connections but does not speak gRPC (not a Ray cluster port?)"
