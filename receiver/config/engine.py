"""Settings of the decode engine and the flow table (the ``[engine]`` config table)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .schema import opt


@dataclass
class EngineConfig:
    vxlan_ports: list[int] = opt([4789], "UDP destination ports decapsulated as VXLAN")
    geneve_ports: list[int] = opt([6081], "UDP destination ports decapsulated as GENEVE")
    max_tunnel_depth: int = opt(4, "deepest tunnel nesting decapsulated; deeper is dropped", 1, 16)
    excerpt_bytes: int = opt(128, "payload bytes kept per direction (0 disables excerpts)", 0, 4096)
    app_metadata: bool = opt(True, "parse HTTP, DNS, TLS and QUIC metadata from the first packets")
    app_max_items: int = opt(8, "HTTP requests / DNS queries kept per flow record", 0, 1000)
    redact: bool = opt(True, "mask credentials (HTTP auth headers and cookies, secret URI parameters, URL passwords, "
                             "FTP/POP3/IMAP/SMTP/Redis logins) in excerpts and app metadata: docs/privacy.md")
    redact_headers: list[str] = opt([], "more HTTP header names whose values are masked (beside the built-in list)")
    redact_params: list[str] = opt([], "more URI query / form parameter names whose values are masked")
    tcp_idle_timeout: float = opt(300.0, "seconds without packets before a TCP flow ends", 0.1)
    udp_idle_timeout: float = opt(60.0, "seconds without packets before a UDP flow ends", 0.1)
    other_idle_timeout: float = opt(60.0, "idle timeout of ICMP and other IP protocols, seconds", 0.1)
    active_timeout: float = opt(300.0, "long flows emit an interim record this often, seconds", 1.0)
    tcp_close_linger: float = opt(2.0, "seconds a TCP flow stays after FIN both ways or RST", 0.0)
    max_flows: int = opt(1_000_000, "flow table size cap; the oldest flows are evicted past it", 16)
    expire_interval: float = opt(1.0, "timeouts are checked at every multiple of this much packet time, seconds", 0.01)

    def validate(self) -> tuple[str, str] | None:
        """A problem with the names to mask: (key, message), or None."""
        for key, names, pattern in (("redact_headers", self.redact_headers, _HEADER_NAME),
                                    ("redact_params", self.redact_params, _PARAM_NAME)):  # fmt: skip
            for i, name in enumerate(names):
                if not pattern.fullmatch(name):
                    return f"{key}[{i}]", f"not a {key[7:-1]} name: {name!r}"
        return None


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP token (RFC 9110 section 5.6.2)
_PARAM_NAME = re.compile(r"(?:(?![=&;#?:\"'<>])[!-~])+")  # printable ASCII but delimiters (and ":")
