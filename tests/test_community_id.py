"""Community ID v1 against the spec's published baselines (corelight/community-id-spec)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from receiver.flows.community_id import community_id_v1

DATA = Path(__file__).parent / "data" / "community_id"


def _rows(name: str) -> list[dict[str, object]]:
    return list(json.loads((DATA / name).read_text()))


@pytest.mark.parametrize(("name", "seed"), [("baseline_deflt.json", 0), ("baseline_seed1.json", 1)])
def test_spec_json_baselines(name: str, seed: int) -> None:
    rows = _rows(name)
    assert len(rows) == 23
    for r in rows:
        got = community_id_v1(
            int(r["proto"]),  # type: ignore[call-overload]
            str(r["saddr"]),
            str(r["daddr"]),
            int(r["sport"] or 0),  # type: ignore[call-overload]
            int(r["dport"] or 0),  # type: ignore[call-overload]
            seed=seed,
        )
        assert got == r["communityid"], r


# Rows of the spec's baseline/README.md tables: (proto, saddr, daddr, sport, dport, default, seed=1, hex)
V6A = "fe80:0001:0203:0405:0607:0809:0A0B:0C0D"
V6B = "fe80:1011:1213:1415:1617:1819:1A1B:1C1D"
TABLE = [
    (6, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:wCb3OG7yAFWelaUydu0D+125CLM=", "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk=",
     "c026f7386ef200559e95a53276ed03fb5db908b3"),
    (6, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:wCb3OG7yAFWelaUydu0D+125CLM=", "1:HhA1B+6CoLbiKPEs5nhNYN4XWfk=",
     "c026f7386ef200559e95a53276ed03fb5db908b3"),
    (17, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=", "1:OShq+iKDAMVouh/4bMxB9Sz4amw=",
     "d0cbbd227431eb3e1988264cffb1d78b658c84e8"),
    (17, "5.6.7.8", "1.2.3.4", 3344, 1122, "1:0Mu9InQx6z4ZiCZM/7HXi2WMhOg=", "1:OShq+iKDAMVouh/4bMxB9Sz4amw=",
     "d0cbbd227431eb3e1988264cffb1d78b658c84e8"),
    (132, "1.2.3.4", "5.6.7.8", 1122, 3344, "1:EKt4MsxuyaE6mL+hmrEkQ9csDD8=", "1:uitchpn5MMGAQKBJh7bIr/bAr7s=",
     "10ab7832cc6ec9a13a98bfa19ab12443d72c0c3f"),
    (1, "1.2.3.4", "5.6.7.8", 8, 0, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=", "1:9pr4ZGTICiuZoIh90RRYE2RyXpU=",
     "72ba1d4472f6144b078dbbf752446b7dbb386d9d"),
    (1, "5.6.7.8", "1.2.3.4", 0, 0, "1:crodRHL2FEsHjbv3UkRrfbs4bZ0=", "1:9pr4ZGTICiuZoIh90RRYE2RyXpU=",
     "72ba1d4472f6144b078dbbf752446b7dbb386d9d"),
    (1, "1.2.3.4", "5.6.7.8", 11, 0, "1:f/YiSyWqczrTgfUCZlBUnvHRcPk=", "1:1DD7cWGC/Yg91YGsQeni8du3pIA=",
     "7ff6224b25aa733ad381f5026650549ef1d170f9"),
    (58, V6A, V6B, 128, 0, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo=", "1:IO27GQzPuCtNnwFvjWALMHu5tJE=",
     "d1b7fb872309530b777cc103ef3f0b21f46905ea"),
    (58, V6B, V6A, 129, 0, "1:0bf7hyMJUwt3fMED7z8LIfRpBeo=", "1:IO27GQzPuCtNnwFvjWALMHu5tJE=",
     "d1b7fb872309530b777cc103ef3f0b21f46905ea"),
    (58, V6A, V6B, 146, 0, "1:fYC8+pz24E+EhANP1EZhpX0Dw10=", "1:Cv4IKJe56BNkF0MBW2YxQ3Nwc3s=",
     "7d80bcfa9cf6e04f8484034fd44661a57d03c35d"),
    (46, "1.2.3.4", "5.6.7.8", 0, 0, "1:ikv3kmf89luf73WPz1jOs49S768=", "1:/buhqeOmaRCopOZFy9HnoJd5XW8=",
     "8a4bf79267fcf65b9fef758fcf58ceb38f52efaf"),
    (46, "5.6.7.8", "1.2.3.4", 0, 0, "1:ikv3kmf89luf73WPz1jOs49S768=", "1:/buhqeOmaRCopOZFy9HnoJd5XW8=",
     "8a4bf79267fcf65b9fef758fcf58ceb38f52efaf"),
    (46, V6A, V6B, 0, 0, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0=", "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM=",
     "c10ff69b0ae75cfe259897077462f978f8d1f9ed"),
    (46, V6B, V6A, 0, 0, "1:wQ/2mwrnXP4lmJcHdGL5ePjR+e0=", "1:j6EyyfBzL4vWKHFXgUqb5Az3OxM=",
     "c10ff69b0ae75cfe259897077462f978f8d1f9ed"),
]  # fmt: skip


@pytest.mark.parametrize("row", TABLE, ids=lambda r: f"{r[0]}-{r[1]}-{r[3]}")
def test_spec_readme_tables(row: tuple[int, str, str, int, int, str, str, str]) -> None:
    proto, sa, da, sp, dp, deflt, seed1, hexd = row
    assert community_id_v1(proto, sa, da, sp, dp) == deflt
    assert community_id_v1(proto, sa, da, sp, dp, seed=1) == seed1
    assert community_id_v1(proto, sa, da, sp, dp, b64=False) == "1:" + hexd


def test_packed_addresses_and_zeek_icmp_convention_agree() -> None:
    import ipaddress

    a, b = ipaddress.ip_address("10.0.0.1").packed, ipaddress.ip_address("10.0.0.2").packed
    assert community_id_v1(6, a, b, 1234, 80) == community_id_v1(6, "10.0.0.1", "10.0.0.2", 1234, 80)
    # Zeek logs an echo request flow as (type 8, counterpart 0): the same ID as (type 8, code 0)
    assert community_id_v1(1, a, b, 8, 0) == community_id_v1(1, b, a, 0, 8)
    # one-way types keep their direction
    assert community_id_v1(1, a, b, 3, 1) != community_id_v1(1, b, a, 3, 1)
    # port-less protocols ignore ports
    assert community_id_v1(47, a, b, 5, 6) == community_id_v1(47, b, a)


def test_bad_addresses_rejected() -> None:
    with pytest.raises(ValueError):
        community_id_v1(6, b"\x01\x02\x03", b"\x01\x02\x03\x04", 1, 2)
    with pytest.raises(ValueError):
        community_id_v1(6, "1.2.3.4", "::1", 1, 2)
