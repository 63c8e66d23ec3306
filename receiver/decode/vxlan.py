"""VXLAN (RFC 7348): an 8-byte header before an Ethernet frame, on UDP 4789."""

from .header import Header

VXLAN = Header("vxlan", ("flags", "B"), ("reserved1", "3s"), ("vni", "3s"), ("reserved2", "B"))
FLAG_I = 0x08  # the VNI is valid; must be set
