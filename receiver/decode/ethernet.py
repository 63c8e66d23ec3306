"""Ethernet II, 802.1Q / 802.1ad (QinQ) tags, and Linux cooked capture headers (SLL, SLL2)."""

from ..packets import Layer
from .header import Header

ETH = Header("ethernet", ("dst", "6s"), ("src", "6s"), ("type", "H"))
VLAN = Header("vlan", ("tci", "H"), ("type", "H"))
SLL = Header("sll", ("pkttype", "H"), ("hatype", "H"), ("halen", "H"), ("addr", "8s"), ("proto", "H"))
# v2 (what `tcpdump -i any` writes since 4.99): the protocol first, then the interface index
SLL2 = Header(
    "sll2", ("proto", "H"), ("reserved", "H"), ("ifindex", "I"), ("hatype", "H"), ("pkttype", "B"),
    ("halen", "B"), ("addr", "8s"),
)
# the batch layers that start with a cooked header (whose protocol field is an ethertype)
COOKED_LAYERS = {Layer.LINUX_SLL: SLL, Layer.LINUX_SLL2: SLL2}

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_TEB = 0x6558  # transparent Ethernet bridging (GENEVE's Ethernet payload type)
VLAN_TYPES = (0x8100, 0x88A8, 0x9100)
MAX_VLAN_TAGS = 2
