"""GENEVE (RFC 8926): an 8-byte header plus options, on UDP 6081 (AWS Gateway Load Balancer)."""

from .header import Header

GENEVE = Header("geneve", ("ver_optlen", "B"), ("flags", "B"), ("proto", "H"), ("vni", "3s"), ("reserved", "B"))
VERSION = 0
