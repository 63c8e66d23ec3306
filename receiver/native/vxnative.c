/* vxnative: the few loops of vxmirror's data path that are sequential by nature.
 *
 * Plain C over caller-owned buffers (numpy arrays), no Python API: loaded with ctypes by
 * receiver/native/__init__.py, which also says what each function mirrors in the numpy code.
 * Every function here has a numpy twin that stays in use when this library is absent
 * (VXMIRROR_NATIVE=0, or no C compiler at install time); the tests compare the two.
 *
 * Header offsets come from vxoffsets.h, which is generated from the declarative headers in
 * receiver/decode/ and receiver/decode/ (python -m receiver.native.offsets).
 */
#include <stdint.h>
#include <string.h>

#include "vxoffsets.h"

#define EXPORT __attribute__((visibility("default")))

#define PREFETCH_AHEAD 16
#define VX_ABI 17 /* = receiver.native.ABI */

EXPORT int vx_abi(void) { return VX_ABI; }

static inline uint32_t rd32(const uint8_t *p, int big_endian) {
    if (big_endian) return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}
static inline int64_t be16(const uint8_t *p) { return ((int64_t)p[0] << 8) | p[1]; }
static inline int64_t be24(const uint8_t *p) { return ((int64_t)p[0] << 16) | ((int64_t)p[1] << 8) | p[2]; }
static inline uint64_t be32(const uint8_t *p) {
    return ((uint64_t)p[0] << 24) | ((uint64_t)p[1] << 16) | ((uint64_t)p[2] << 8) | p[3];
}
static inline uint64_t be64(const uint8_t *p) { return (be32(p) << 32) | be32(p + 4); }
static inline int is_vlan(int64_t etype) {
    return etype == VLAN_TYPE_0 || etype == VLAN_TYPE_1 || etype == VLAN_TYPE_2;
}

/* ---- classic pcap records ------------------------------------------------------------------
 * A record is a 16-byte header (ts_sec, ts_frac, incl_len, orig_len) and incl_len bytes of data.
 * SCAN_OK: the scan reached its stop or the end; SCAN_TRUNCATED: a record runs past the end of
 * the data (its header or its data); SCAN_BAD: incl_len above max_len, the chain cannot be
 * followed. Mirrors receiver/capture/pcap.py (scan_loop, scan_lanes, record_columns). */
enum { SCAN_OK = 0, SCAN_TRUNCATED = 1, SCAN_BAD = 2 };

/* ---- the common shapes of mirrored traffic ------------------------------------------------
 * Outside: a capture's link header / IPv4 without options, not a fragment / UDP to a VXLAN port /
 * VXLAN with the I flag (layers ETHERNET, LINUX_SLL, LINUX_SLL2 and RAW_IP, where the link
 * header is Ethernet without tags, a Linux cooked header whose protocol is IPv4, or none), or
 * the VXLAN header itself (layer VXLAN, the live listener).
 * Inside: Ethernet / IPv4 without options, not a fragment / TCP, or UDP not to a
 * tunnel port. A packet of exactly that shape gets its output row here and handled[i] = 1;
 * every other packet is left untouched for the numpy stages (receiver/decode/fast.py), whose
 * shortcuts _common_outer and _common_inner apply the same conditions. */

/* output columns, in this order (receiver.native.DECODE_COLUMNS) */
enum {
    C_STATUS, C_VNI, C_INNER_START, C_DEPTH, C_VXLAN_RESERVED, C_IPVER, C_SRC_HI, C_SRC_LO, C_DST_HI,
    C_DST_LO, C_PROTO, C_SPORT, C_DPORT, C_IPLEN, C_TCPFLAGS, C_PAY_OFF, C_PAY_LEN, C_PAY_CAP,
    C_TRUNCATED, C_FRAG, C_IPID, C_TCPSEQ, C_TCPACK, N_COLUMNS
};
#define COL(type, k) ((type *)cols[k])

static inline int in_ports(int64_t port, const int64_t *ports, int64_t n) {
    for (int64_t k = 0; k < n; k++)
        if (ports[k] == port) return 1;
    return 0;
}

/* A capture's link header: its length and where its ethertype sits (-1: none, raw IP); 0 for
 * layers that are not a capture's */
static int link_header(int layer, int64_t *len, int64_t *type_at) {
    switch (layer) {
    case LAYER_ETHERNET: *len = ETH_LEN; *type_at = ETH_TYPE; return 1;
    case LAYER_LINUX_SLL: *len = SLL_LEN; *type_at = SLL_PROTO; return 1;
    case LAYER_LINUX_SLL2: *len = SLL2_LEN; *type_at = SLL2_PROTO; return 1;
    case LAYER_RAW_IP: *len = 0; *type_at = -1; return 1; /* the version is checked with the IHL */
    default: return 0;
    }
}

EXPORT int64_t vx_decode_common(const uint8_t *buf, int64_t buflen, const int64_t *start,
                                const uint32_t *caplen, int64_t n, int layer, const int64_t *vx_ports,
                                int64_t n_vx, const int64_t *gn_ports, int64_t n_gn, int64_t max_depth,
                                uint8_t *handled, void **cols) {
    const uint64_t v4_mapped = 0xFFFF00000000ULL;
    int64_t done = 0, link_len = 0, type_at = -1;
    if (max_depth < 1 || (layer != LAYER_VXLAN && !link_header(layer, &link_len, &type_at))) {
        memset(handled, 0, (size_t)n);
        return 0;
    }
    const int64_t outer_len = link_len + IPV4_LEN + UDP_LEN + VXLAN_LEN; /* OUTER_LEN for Ethernet */
    for (int64_t i = 0; i < n; i++) {
        handled[i] = 0;
        if (i + PREFETCH_AHEAD < n) { /* packets are cache misses: ask for later ones early */
            int64_t q = start[i + PREFETCH_AHEAD];
            if (q >= 0 && q + 128 <= buflen) {
                __builtin_prefetch(buf + q);
                __builtin_prefetch(buf + q + 64);
                __builtin_prefetch(buf + q + 127);
            }
        }
        int64_t p = start[i];
        int64_t e = p + (int64_t)caplen[i];
        if (p < 0 || e > buflen) continue;
        const uint8_t *vx;
        if (layer != LAYER_VXLAN) {
            if (p + outer_len > e) continue;
            const uint8_t *h = buf + p;
            const uint8_t *ip = h + link_len;
            int64_t total = be16(ip + V4_LEN);
            if (type_at >= 0 && be16(h + type_at) != ETH_IPV4) continue;
            if (ip[V4_VHL] != IPV4_NO_OPTIONS || ip[V4_PROTO] != PROTO_UDP) continue;
            if ((ip[V4_FRAG] & 0x3F) != 0 || ip[V4_FRAG + 1] != 0) continue;
            if (link_len + total < outer_len) continue;
            if (!in_ports(be16(ip + IPV4_LEN + UDP_DPORT), vx_ports, n_vx)) continue;
            vx = ip + IPV4_LEN + UDP_LEN;
            if (e > p + link_len + total) e = p + link_len + total;
            p += outer_len;
        } else {
            if (p + VXLAN_LEN > e) continue;
            vx = buf + p;
            p += VXLAN_LEN;
        }
        if (!(vx[VX_FLAGS] & VXLAN_FLAG_I)) continue;

        /* inside: Ethernet, up to MAX_VLAN_TAGS tags, IPv4 without options or IPv6 without
         * extension headers, not a fragment, TCP or UDP (not to a tunnel port) */
        if (p + ETH_LEN > e) continue;
        int64_t etype = be16(buf + p + ETH_TYPE), l3 = p + ETH_LEN;
        int cut = 0;
        for (int tag = 0; tag < MAX_VLAN_TAGS && is_vlan(etype); tag++) {
            if (l3 + VLAN_LEN > e) {
                cut = 1;
                break;
            }
            etype = be16(buf + l3 + VLAN_TYPE_OFF);
            l3 += VLAN_LEN;
        }
        if (cut) continue;
        const uint8_t *ip = buf + l3;
        int proto, ipver;
        int64_t ip_end, l4;
        if (etype == ETH_IPV4) {
            if (l3 + IPV4_LEN > e || ip[V4_VHL] != IPV4_NO_OPTIONS) continue;
            if ((ip[V4_FRAG] & 0x3F) != 0 || ip[V4_FRAG + 1] != 0) continue;
            ipver = 4;
            proto = ip[V4_PROTO];
            ip_end = l3 + be16(ip + V4_LEN);
            l4 = l3 + IPV4_LEN;
        } else if (etype == ETH_IPV6) {
            if (l3 + IPV6_LEN > e || (ip[0] >> 4) != 6) continue;
            ipver = 6;
            proto = ip[V6_NXT]; /* extension headers (and everything but TCP/UDP) are left to numpy */
            l4 = l3 + IPV6_LEN;
            ip_end = l4 + be16(ip + V6_PLEN);
        } else {
            continue;
        }
        int is_tcp = proto == PROTO_TCP;
        if (!is_tcp && proto != PROTO_UDP) continue;
        int64_t hdr = is_tcp ? TCP_LEN : UDP_LEN;
        if (l4 + hdr > ip_end || l4 + hdr > e) continue;
        const uint8_t *t = buf + l4;
        int64_t dport = be16(t + TCP_DPORT); /* UDP's ports sit where TCP's do */
        int64_t doff = UDP_LEN;
        if (is_tcp) {
            doff = (int64_t)(t[TCP_OFF] >> 4) * 4;
            if (doff < TCP_LEN) continue;
        } else if (in_ports(dport, vx_ports, n_vx) || in_ports(dport, gn_ports, n_gn)) {
            continue;
        }
        int64_t pay_off = l4 + doff;
        int64_t pay_len = ip_end - pay_off > 0 ? ip_end - pay_off : 0;
        int64_t cap = (e < ip_end ? e : ip_end) - pay_off;
        if (cap < 0) cap = 0;
        if (cap > pay_len) cap = pay_len;

        handled[i] = 1;
        done++;
        COL(uint8_t, C_STATUS)[i] = 0;
        COL(int64_t, C_VNI)[i] = be24(vx + VX_VNI);
        COL(int64_t, C_INNER_START)[i] = p;
        COL(int64_t, C_DEPTH)[i] = 1;
        COL(uint8_t, C_VXLAN_RESERVED)[i] =
            ((vx[VX_FLAGS] & (0xFF ^ VXLAN_FLAG_I)) | vx[VX_RES1] | vx[VX_RES1 + 1] | vx[VX_RES1 + 2] |
             vx[VX_RES2]) != 0;
        COL(uint8_t, C_IPVER)[i] = (uint8_t)ipver;
        if (ipver == 4) {
            COL(uint64_t, C_SRC_HI)[i] = 0;
            COL(uint64_t, C_SRC_LO)[i] = v4_mapped | be32(ip + V4_SRC);
            COL(uint64_t, C_DST_HI)[i] = 0;
            COL(uint64_t, C_DST_LO)[i] = v4_mapped | be32(ip + V4_DST);
            COL(int64_t, C_IPID)[i] = be16(ip + V4_ID);
        } else {
            COL(uint64_t, C_SRC_HI)[i] = be64(ip + V6_SRC);
            COL(uint64_t, C_SRC_LO)[i] = be64(ip + V6_SRC + 8);
            COL(uint64_t, C_DST_HI)[i] = be64(ip + V6_DST);
            COL(uint64_t, C_DST_LO)[i] = be64(ip + V6_DST + 8);
            COL(int64_t, C_IPID)[i] = 0;
        }
        COL(int64_t, C_PROTO)[i] = proto;
        COL(int64_t, C_SPORT)[i] = be16(t + TCP_SPORT);
        COL(int64_t, C_DPORT)[i] = dport;
        COL(int64_t, C_IPLEN)[i] = ip_end - l3;
        COL(int64_t, C_TCPFLAGS)[i] = is_tcp ? t[TCP_FLAGS] : 0;
        COL(int64_t, C_TCPSEQ)[i] = is_tcp ? be32(t + TCP_SEQ) : 0;
        COL(int64_t, C_TCPACK)[i] = is_tcp ? be32(t + TCP_ACK) : 0;
        COL(int64_t, C_PAY_OFF)[i] = pay_off;
        COL(int64_t, C_PAY_LEN)[i] = pay_len;
        COL(int64_t, C_PAY_CAP)[i] = cap;
        COL(uint8_t, C_TRUNCATED)[i] = e < ip_end;
        COL(uint8_t, C_FRAG)[i] = 0;
    }
    return done;
}

/* ---- page prefetch (receiver/capture/prefetch.py) --------------------------------------------------- */

/* Read one byte every `stride` bytes of [p, p + len): the page faults map the file's cached pages
 * into this process (the kernel maps a fault-around block per fault). Page faults on a file
 * mapping take only that mapping's lock, where madvise(MADV_POPULATE_READ) holds the whole
 * address space's lock for reading, which stalls every mmap and brk of the other threads. */
EXPORT uint64_t vx_touch(const uint8_t *p, int64_t len, int64_t stride) {
    uint64_t sum = 0;
    for (int64_t i = 0; i < len; i += stride) sum += *(const volatile uint8_t *)(p + i);
    return sum;
}

/* ---- flow keys (receiver/flows/keys.py) ---------------------------------------------------- */

static inline uint64_t mix64(uint64_t x) { /* splitmix64's finaliser, as keys.mix64 */
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* The flow key of each packet: endpoints in canonical order, the direction, the 64-bit hash.
 * in: vni i64, ipver u8, proto i64, src_hi u64, src_lo u64, sport i64, dst_hi u64, dst_lo u64,
 * dport i64 (Decoded columns); out: kproto i64 (proto + 256 for IPv6), a_hi u64, a_lo u64,
 * a_port i64, b_hi u64, b_lo u64, b_port i64, direction i64, hash u64. Mirrors make_keys. */
EXPORT void vx_flow_keys(const void **in, void **out, int64_t n) {
    const int64_t *vni = in[0], *proto = in[2], *sport = in[5], *dport = in[8];
    const uint8_t *ipver = in[1];
    const uint64_t *s_hi = in[3], *s_lo = in[4], *d_hi = in[6], *d_lo = in[7];
    int64_t *kproto = out[0], *a_port = out[3], *b_port = out[6], *direction = out[7];
    uint64_t *a_hi = out[1], *a_lo = out[2], *b_hi = out[4], *b_lo = out[5], *hash = out[8];
    const uint64_t M1 = 0x9E3779B97F4A7C15ULL, M2 = 0xBF58476D1CE4E5B9ULL, M3 = 0x94D049BB133111EBULL;
    for (int64_t i = 0; i < n; i++) {
        int swap = s_hi[i] > d_hi[i] ||
                   (s_hi[i] == d_hi[i] && (s_lo[i] > d_lo[i] || (s_lo[i] == d_lo[i] && sport[i] > dport[i])));
        uint64_t ahi = swap ? d_hi[i] : s_hi[i], alo = swap ? d_lo[i] : s_lo[i];
        uint64_t bhi = swap ? s_hi[i] : d_hi[i], blo = swap ? s_lo[i] : d_lo[i];
        int64_t ap = swap ? dport[i] : sport[i], bp = swap ? sport[i] : dport[i];
        int64_t kp = proto[i] + (ipver[i] == 6 ? 256 : 0);
        uint64_t ports = ((uint64_t)ap << 16) | (uint64_t)bp;
        uint64_t tag = (((uint64_t)vni[i] & 0xFFFFFFFFULL) << 16) | (uint64_t)kp;
        uint64_t h = alo * M1;
        h ^= mix64(blo + M2);
        h += (ahi ^ (bhi * M3)) * M2;
        h ^= (ports << 24) ^ (tag * M1);
        kproto[i] = kp;
        a_hi[i] = ahi, a_lo[i] = alo, a_port[i] = ap;
        b_hi[i] = bhi, b_lo[i] = blo, b_port[i] = bp;
        direction[i] = swap;
        hash[i] = mix64(h);
    }
}

/* ---- the application parsers' screening (receiver/engine.py) -------------------------------- */

static inline int port_in(const uint8_t *lut, int64_t port) { return port >= 0 && port < 65536 && lut[port]; }

/* Whether the payload at `o` (`cap` bytes) starts with a QUIC v1 or v2 Initial packet: a long header
 * with the fixed bit, version 1 with type bits 00 or version 2 (0x6b3343cf) with type bits 01 (the
 * first byte's top nibble 0xC or 0xD). Mirrors quic.is_initial (receiver/appmeta/quic.py). */
static inline int quic_initial(const uint8_t *buf, int64_t buflen, int64_t o, int64_t cap) {
    if (cap < 7 || o + 7 > buflen) return 0;
    uint32_t v;
    memcpy(&v, buf + o + 1, 4);
    v = __builtin_bswap32(v);
    int top = buf[o] & 0xF0;
    return ((v == 0x00000001u) & (top == 0xC0)) | ((v == 0x6B3343CFu) & (top == 0xD0));
}

/* For each packet with payload (pay_cap > 0): later[i], shown to the parsers after its direction's
 * first packets (a DNS port, or the payload starts with one of the `n_words` HTTP words), and
 * maybe[i], could start something they understand (TCP: an app port or a start byte; UDP: an app
 * port or a QUIC Initial). Packets without payload get 0. Tables (bool arrays): dns_port, udp_port, tcp_port
 * (65536 each), start (256), http_first (256). Mirrors _app_later and _app_maybe. */
EXPORT void vx_app_hints(const uint8_t *buf, int64_t buflen, const int64_t *proto, const int64_t *sport,
                         const int64_t *dport, const int64_t *pay_off, const int64_t *pay_cap, int64_t n,
                         const uint8_t *dns_port, const uint8_t *udp_port, const uint8_t *tcp_port,
                         const uint8_t *start, const uint8_t *http_first, const int64_t *words, int64_t n_words,
                         uint8_t *later, uint8_t *maybe) {
    for (int64_t i = 0; i < n; i++) {
        later[i] = maybe[i] = 0;
        if (i + PREFETCH_AHEAD < n && pay_off[i + PREFETCH_AHEAD] >= 0 && pay_off[i + PREFETCH_AHEAD] < buflen)
            __builtin_prefetch(buf + pay_off[i + PREFETCH_AHEAD]);
        int64_t o = pay_off[i];
        if (pay_cap[i] <= 0 || o < 0 || o >= buflen) continue;
        uint8_t b0 = buf[o];
        int l = port_in(dns_port, sport[i]) || port_in(dns_port, dport[i]);
        if (!l && http_first[b0] && pay_cap[i] >= 4) {
            int64_t last = buflen - 1;
            int64_t w = ((int64_t)b0 << 24) | ((int64_t)buf[o + 1 < last ? o + 1 : last] << 16) |
                        ((int64_t)buf[o + 2 < last ? o + 2 : last] << 8) | buf[o + 3 < last ? o + 3 : last];
            for (int64_t k = 0; k < n_words; k++)
                if (words[k] == w) l = 1;
        }
        later[i] = (uint8_t)l;
        if (proto[i] == 6)
            maybe[i] = port_in(tcp_port, sport[i]) || port_in(tcp_port, dport[i]) || start[b0];
        else if (proto[i] == 17)
            maybe[i] = port_in(udp_port, sport[i]) || port_in(udp_port, dport[i]) ||
                       ((b0 & 0xE0) == 0xC0 && quic_initial(buf, buflen, o, pay_cap[i]));
    }
}

/* ---- the flow table (receiver/flows/table.py) ----------------------------------------------- */

/* Group equal 64-bit key hashes, in order of first appearance: inv[i] = group of element i,
 * first[g] = the first element of group g; returns the number of groups. `scratch` holds
 * `scratch_size` int64 (a power of two >= 2n), used as an open-addressing table.
 * Mirrors _group (which then orders the groups the same way). */
EXPORT int64_t vx_group(const uint64_t *h, int64_t n, int64_t *inv, int64_t *first, int64_t *scratch,
                        int64_t scratch_size) {
    const uint64_t mask = (uint64_t)scratch_size - 1;
    int64_t groups = 0;
    for (int64_t k = 0; k < scratch_size; k++) scratch[k] = -1;
    for (int64_t i = 0; i < n; i++) {
        uint64_t pos = (h[i] ^ (h[i] >> 29)) & mask;
        for (;;) {
            int64_t g = scratch[pos];
            if (g < 0) {
                scratch[pos] = groups;
                first[groups] = i;
                inv[i] = groups++;
                break;
            }
            if (h[first[g]] == h[i]) {
                inv[i] = g;
                break;
            }
            pos = (pos + 1) & mask;
        }
    }
    return groups;
}

/* Whether each element's key equals its group's first element's key, over the `n_cols` key
 * columns (8-byte each): same[i] = all(col[i] == col[first[inv[i]]]). Mirrors _same_key. */
EXPORT void vx_same_key(const void **cols, int64_t n_cols, int64_t n, const int64_t *first, const int64_t *inv,
                        uint8_t *same) {
    for (int64_t i = 0; i < n; i++) {
        int64_t r = first[inv[i]];
        uint8_t eq = 1;
        for (int64_t k = 0; k < n_cols && eq; k++) eq = ((const uint64_t *)cols[k])[i] == ((const uint64_t *)cols[k])[r];
        same[i] = eq;
    }
}

/* Flow index of each hash in the index `slots` (linear probing from h & mask; EMPTY ends a
 * probe, TOMBSTONE does not), or -1. Mirrors FlowTable._lookup. */
EXPORT void vx_lookup(const int32_t *slots, int64_t n_slots, const uint64_t *khash, const uint64_t *h,
                      int64_t n, int64_t *out) {
    const uint64_t mask = (uint64_t)n_slots - 1;
    for (int64_t i = 0; i < n; i++) {
        uint64_t pos = h[i] & mask;
        int64_t found = -1;
        for (int64_t probe = 0; probe < n_slots; probe++) {
            int32_t s = slots[pos];
            if (s == -1) break; /* EMPTY */
            if (s >= 0 && khash[s] == h[i]) {
                found = s;
                break;
            }
            pos = (pos + 1) & mask;
        }
        out[i] = found;
    }
}

/* Insert flows into the index at the first EMPTY or TOMBSTONE slot of their probe sequence;
 * slot_col[flow] = its slot. Returns the number of tombstones reused, or -1 if the index is
 * full (cannot happen at load factor <= 1/2). Mirrors FlowTable._insert. */
EXPORT int64_t vx_insert(int32_t *slots, int64_t n_slots, const int64_t *flows, const uint64_t *h, int64_t n,
                         int32_t *slot_col) {
    const uint64_t mask = (uint64_t)n_slots - 1;
    int64_t reused = 0;
    for (int64_t i = 0; i < n; i++) {
        uint64_t pos = h[i] & mask;
        int64_t probe = 0;
        while (slots[pos] >= 0) {
            if (++probe >= n_slots) return -1;
            pos = (pos + 1) & mask;
        }
        reused += slots[pos] == -2; /* TOMBSTONE */
        slots[pos] = (int32_t)flows[i];
        slot_col[flows[i]] = (int32_t)pos;
    }
    return reused;
}

/* Add packets to their flows, in packet order: counters per direction, TCP flags, last time,
 * truncation, fragments, Zeek history codes (each (letter, direction) once; 4-bit codes in
 * `hist`, which ones are present in `hbits`) placed in TCP's order (receiver/flows/history.py:
 * a code goes after the codes of a lower clock seq + ack, a SYN without ACK first when every code
 * came after it, a code seen again with a lower clock moves back), the originator and its flip
 * as in-order processing of that order gives them (in the flow's first record), and the TCP
 * close time of flows that now have FIN both ways or an RST. Mirrors FlowTable.account (with
 * _flip, _append_history and history.add_codes), column for column. */
enum { L_SYN, L_SYNACK, L_ACK, L_DATA, L_FIN, L_RST };
enum { TH_FIN = 0x01, TH_SYN = 0x02, TH_RST = 0x04, TH_ACK = 0x10 };
#define H_WINDOW (1u << 24) /* history.WINDOW */
#define ACK_FIRST ((1u << L_DATA) | (1u << L_FIN) | (1u << L_RST)) /* history.ACK_FIRST */

/* table columns, in this order (receiver.native.ACCOUNT_COLUMNS) */
enum {
    A_PKTS, A_IPBYTES, A_PAYBYTES, A_TFLAGS, A_T_LAST, A_TRUNC, A_FRAGS, A_HIST, A_HBITS, A_ORIG,
    A_FLIPPED, A_SEGMENTS, A_CLOSE_TS, A_HKEY, N_ACCOUNT
};
/* per-packet inputs, in this order (receiver.native.ACCOUNT_INPUTS) */
enum {
    P_FLOW, P_DIRECTION, P_TS, P_IPLEN, P_PAYLEN, P_TCPFLAGS, P_PROTO, P_TRUNCATED, P_FRAGMENT, P_SEQ, P_ACK,
    N_INPUTS
};

static inline int32_t diff32(uint32_t a, uint32_t b) { return (int32_t)(a - b); }
static inline int code_at(uint64_t hist, int i) { return (int)((hist >> (4 * i)) & 0xF) - 1; }

/* whether `code` of clock `key` goes before `prev` of clock `prev_key` (history.passes) */
static int passes(uint32_t prev_key, int prev, uint32_t key, int code) {
    int32_t diff = diff32(prev_key, key);
    if (diff == 0 && (code >> 1) == L_ACK) return (ACK_FIRST >> (prev >> 1)) & 1;
    return diff > 0 && (uint32_t)diff <= H_WINDOW;
}

struct hcols {
    uint64_t *hist;
    uint16_t *hbits, *segments;
    uint32_t *hkey; /* 12 a flow: per code its packet's clock (0: none); the SYN codes' slots: seq0 */
    uint8_t *orig, *flipped;
};

/* history.has_clock */
static inline int has_clock(const uint32_t *hkey, int code) { return (code >> 1) != L_SYN && hkey[code] != 0; }

/* history._syn_came_first: every code (all with a clock) came after the SYN of `seq` from `d` */
static int syn_came_first(const uint32_t *hkey, uint64_t hist, int d, uint32_t seq) {
    uint32_t after = seq + 1;
    int seen[2] = {0, 0};
    for (; hist; hist >>= 4) {
        int code = (int)(hist & 0xF) - 1, side = code & 1;
        if (seen[side]) continue;
        seen[side] = 1;
        uint32_t seq0 = hkey[2 * L_SYN + side];
        uint32_t v = side == d ? seq0 : hkey[code] - seq0; /* the first packet's ack: its clock - its seq */
        int32_t diff = diff32(v, after);
        if (diff < 0 || (uint32_t)diff > H_WINDOW) return 0;
    }
    return 1;
}

/* history._orient */
static void orient(const struct hcols *h, int64_t f, uint64_t hist, int first) {
    for (; hist; hist >>= 4) {
        int code = (int)(hist & 0xF) - 1;
        if ((code >> 1) == L_SYN) {
            if ((code & 1) != first) {
                h->orig[f] = (uint8_t)(code & 1);
                h->flipped[f] = 1;
                return;
            }
            break;
        }
    }
    h->orig[f] = (uint8_t)first;
    h->flipped[f] = 0;
}

/* history.add_codes: place the codes `work` of one packet (new ones, and seen ones it moves back) */
static void add_codes(const struct hcols *h, int64_t f, int d, unsigned work, int keyed, uint32_t seq,
                      uint32_t ack) {
    uint64_t hist = h->hist[f];
    unsigned hb = h->hbits[f];
    uint32_t *hkey = h->hkey + 12 * f;
    uint32_t key = seq + ack;
    keyed = keyed && key != 0;
    int n = __builtin_popcount(hb);
    for (int bit = 0; bit < 12; bit++) {
        if (!(work & (1u << bit))) continue;
        if (hb & (1u << bit)) { /* seen before: moved back (work holds it only when this packet is earlier) */
            int at = 0;
            while (code_at(hist, at) != bit) at++;
            hist = (hist & ((1ull << (4 * at)) - 1)) | ((hist >> (4 * (at + 1))) << (4 * at));
            hb &= ~(1u << bit);
            n--;
        }
        int letter = bit >> 1, pos = n;
        if (letter == L_SYN) {
            int clocked = 1;
            for (int i = 0; i < n; i++)
                if (!has_clock(hkey, code_at(hist, i))) clocked = 0;
            if (n && clocked && syn_came_first(hkey, hist, d, seq)) pos = 0;
        } else if (keyed) {
            while (pos) {
                int prev = code_at(hist, pos - 1);
                if (!has_clock(hkey, prev) || !passes(hkey[prev], prev, key, bit)) break;
                pos--;
            }
        }
        int first_of_side = 1;
        for (int i = 0; i < pos; i++)
            if ((code_at(hist, i) & 1) == d) first_of_side = 0;
        uint64_t low = pos ? hist & ((1ull << (4 * pos)) - 1) : 0;
        hist = low | ((uint64_t)(bit + 1) << (4 * pos)) | ((hist >> (4 * pos)) << (4 * (pos + 1)));
        if (keyed && letter != L_SYN) hkey[bit] = key;
        if (first_of_side) hkey[2 * L_SYN + d] = seq;
        int before = n;
        hb |= 1u << bit;
        n++;
        if (h->segments[f] == 0 && ((pos == 0 && before) || letter == L_SYN)) {
            int first = (pos == 0 && before) ? d : (h->flipped[f] ? 1 - h->orig[f] : h->orig[f]);
            orient(h, f, hist, first);
        }
    }
    h->hist[f] = hist;
    h->hbits[f] = (uint16_t)hb;
}

EXPORT void vx_account(void **cols, void **in, int64_t n) {
    uint32_t *pkts = cols[A_PKTS];
    uint64_t *ipbytes = cols[A_IPBYTES], *paybytes = cols[A_PAYBYTES];
    uint8_t *tflags = cols[A_TFLAGS], *trunc = cols[A_TRUNC];
    double *t_last = cols[A_T_LAST], *close_ts = cols[A_CLOSE_TS];
    uint32_t *frags = cols[A_FRAGS];
    struct hcols h = {cols[A_HIST], cols[A_HBITS], cols[A_SEGMENTS], cols[A_HKEY], cols[A_ORIG], cols[A_FLIPPED]};
    const int64_t *flow = in[P_FLOW], *direction = in[P_DIRECTION], *iplen = in[P_IPLEN];
    const int64_t *paylen = in[P_PAYLEN], *tcpflags = in[P_TCPFLAGS], *proto = in[P_PROTO];
    const int64_t *seqs = in[P_SEQ], *acks = in[P_ACK];
    const double *ts = in[P_TS];
    const uint8_t *truncated = in[P_TRUNCATED], *fragment = in[P_FRAGMENT];
    for (int64_t i = 0; i < n; i++) {
        int64_t f = flow[i];
        int d = (int)direction[i];
        int64_t k = 2 * f + d;
        int64_t fl = tcpflags[i];
        pkts[k] += 1;
        ipbytes[k] += (uint64_t)iplen[i];
        paybytes[k] += (uint64_t)paylen[i];
        tflags[k] |= (uint8_t)fl;
        if (ts[i] > t_last[f]) t_last[f] = ts[i];
        if (truncated[i]) trunc[f] = 1;
        if (fragment[i]) frags[f] += 1;

        unsigned letters = (paylen[i] > 0) << L_DATA;
        int keyed = 0;
        if (proto[i] == PROTO_TCP) {
            int syn = (fl & TH_SYN) != 0, ack = (fl & TH_ACK) != 0, fin = (fl & TH_FIN) != 0, rst = (fl & TH_RST) != 0;
            letters |= (syn && !ack) << L_SYN;
            letters |= (syn && ack) << L_SYNACK;
            letters |= (ack && !syn && !fin && !rst && paylen[i] == 0) << L_ACK;
            letters |= fin << L_FIN;
            letters |= rst << L_RST;
            keyed = ack;
        }
        unsigned codes = 0;
        for (int l = 0; l < 6; l++)
            if (letters & (1u << l)) codes |= 1u << (2 * l + d);
        unsigned have = h.hbits[f];
        unsigned fresh = codes & ~have;
        unsigned work = fresh;
        uint32_t seq = (uint32_t)seqs[i], ack = (uint32_t)acks[i], key = seq + ack;
        if (keyed && key && (codes & have)) { /* codes whose first packet came late: this one is earlier */
            const uint32_t *hkey = h.hkey + 12 * f;
            for (unsigned m = codes & have & ~3u; m; m &= m - 1) {
                int bit = __builtin_ctz(m);
                int32_t diff = diff32(hkey[bit], key);
                if (hkey[bit] && diff > 0 && (uint32_t)diff <= H_WINDOW) work |= 1u << bit;
            }
        }
        if (!work) continue;
        add_codes(&h, f, d, work, keyed, seq, ack);
        unsigned hb = h.hbits[f];
        /* TCP close: FIN from both endpoints, or any RST, at the packet that completes it (a new
           letter then): the flow's latest time so far, as if the packets came one a batch */
        if ((fresh & (15u << (2 * L_FIN))) && close_ts[f] == 0 &&
            (((hb >> (2 * L_FIN)) & 3) == 3 || ((hb >> (2 * L_RST)) & 3) != 0))
            close_ts[f] = t_last[f];
    }
}

/* ---- classic pcap records, several chains at once -------------------------------------------
 * Following one chain of record headers waits on memory at every record (each header is a
 * cache miss, and where the next one is depends on it). Here the window [pos, stop) is cut into
 * `lanes` parts; in each part after the first a plausible record start is guessed (the header and
 * the two after it look like pcap record headers), and all chains are walked in turn, so their
 * misses overlap. Then the lanes are checked in order: lane 0 starts at a known record, and each
 * lane's chain must arrive exactly at the next lane's guess. Where it does not, the true chain is
 * walked from there until it meets that lane's chain (chains that meet coincide from then on).
 * A wrong guess costs time, never correctness: the result is that of following one chain.
 *
 * Writes the record header offsets of the records starting before `stop` into offs (capacity
 * (stop - pos) / 16 + 1), returns their number; state[0] = the next record after them (or where
 * scanning stopped), state[1] = SCAN_OK, SCAN_TRUNCATED or SCAN_BAD.
 * `scratch` holds 2 * (stop - pos) / 16 + 64 int64. */
#define MAX_LANES 16
#define GUESS_SPAN 2048

static int plausible(const uint8_t *buf, int64_t end, int64_t p, int big_endian, int64_t max_len, int64_t frac_lim) {
    if (p + 16 > end) return 0;
    uint32_t frac = rd32(buf + p + 4, big_endian), incl = rd32(buf + p + 8, big_endian);
    uint32_t orig = rd32(buf + p + 12, big_endian);
    return incl <= orig && (int64_t)orig <= max_len && (int64_t)frac < frac_lim && p + 16 + (int64_t)incl <= end;
}

static int64_t guess_start(const uint8_t *buf, int64_t end, int64_t from, int64_t to, int big_endian,
                           int64_t max_len, int64_t frac_lim) {
    for (int64_t p = from; p < to; p++) {
        int64_t q = p;
        int hops = 0;
        while (hops < 3 && plausible(buf, end, q, big_endian, max_len, frac_lim)) {
            q += 16 + (int64_t)rd32(buf + q + 8, big_endian);
            hops++;
            if (q == end) hops = 3;
        }
        if (hops == 3) return p;
    }
    return -1;
}

/* the record at p: SCAN_OK with *next set, or why a chain stops there (SCAN_END: at the end) */
enum { SCAN_END = 3 };
static int record_at(const uint8_t *buf, int64_t end, int64_t p, int big_endian, int64_t max_len, int64_t *next) {
    if (p > end - 16) return p != end ? SCAN_TRUNCATED : SCAN_END;
    uint32_t incl = rd32(buf + p + 8, big_endian);
    if ((int64_t)incl > max_len) return SCAN_BAD;
    if (p + 16 + (int64_t)incl > end) return SCAN_TRUNCATED;
    *next = p + 16 + (int64_t)incl;
    return SCAN_OK;
}

EXPORT int64_t vx_pcap_scan_lanes(const uint8_t *buf, int64_t end, int64_t pos, int64_t stop, int big_endian,
                                  int64_t max_len, int64_t frac_lim, int64_t lanes, int64_t *offs, int64_t *scratch,
                                  int64_t *state) {
    if (lanes < 1) lanes = 1;
    if (lanes > MAX_LANES) lanes = MAX_LANES;
    int64_t span = (stop - pos) / lanes;
    if (span < 4 * GUESS_SPAN) lanes = 1;
    int64_t begin[MAX_LANES], cur[MAX_LANES], limit[MAX_LANES], count[MAX_LANES], base[MAX_LANES];
    int done[MAX_LANES], status[MAX_LANES];
    int64_t k_used = 0;
    for (int64_t k = 0; k < lanes; k++) {
        int64_t from = pos + k * span;
        int64_t g = k == 0 ? pos : guess_start(buf, end, from, from + GUESS_SPAN, big_endian, max_len, frac_lim);
        if (g < 0) continue;
        begin[k_used] = cur[k_used] = g;
        k_used++;
    }
    /* scratch: each lane's offsets, one region per lane sized by its part of the window */
    int64_t next_base = 0;
    for (int64_t k = 0; k < k_used; k++) {
        limit[k] = k + 1 < k_used ? begin[k + 1] : stop;
        base[k] = next_base;
        next_base += (limit[k] - begin[k]) / 16 + 2;
        count[k] = 0;
        done[k] = 0;
        status[k] = SCAN_OK;
    }
    /* walk all chains in turn, one record each */
    int64_t active = k_used;
    while (active) {
        for (int64_t k = 0; k < k_used; k++) {
            if (done[k]) continue;
            int64_t p = cur[k], next = 0;
            int st = SCAN_OK;
            if (p >= limit[k]) {
                done[k] = 1;
            } else if ((st = record_at(buf, end, p, big_endian, max_len, &next)) != SCAN_OK) {
                if (st == SCAN_END) st = SCAN_OK;
                done[k] = 1;
            } else {
                scratch[base[k] + count[k]++] = p;
                cur[k] = next;
                if (next + 16 <= end) __builtin_prefetch(buf + next + 8);
            }
            if (done[k]) {
                status[k] = st;
                active--;
            }
        }
    }
    /* check the lanes in order; repair where a guess was wrong */
    int64_t n = 0, expected = pos;
    int final = SCAN_OK;
    for (int64_t k = 0; k < k_used; k++) {
        const int64_t *lane = scratch + base[k];
        if (expected == begin[k]) {
            memcpy(offs + n, lane, (size_t)count[k] * sizeof *offs);
            n += count[k];
            expected = cur[k];
            if (status[k] != SCAN_OK) {
                final = status[k];
                break;
            }
            continue;
        }
        if (expected >= limit[k]) continue; /* the true chain jumps over this whole lane */
        /* walk the true chain until it lands on one of this lane's records, or leaves the lane */
        int64_t p = expected, j = 0, next = 0;
        int st = SCAN_OK;
        while (p < limit[k]) {
            while (j < count[k] && lane[j] < p) j++;
            if (j < count[k] && lane[j] == p) break;
            if ((st = record_at(buf, end, p, big_endian, max_len, &next)) != SCAN_OK) {
                if (st == SCAN_END) st = SCAN_OK;
                break;
            }
            offs[n++] = p;
            p = next;
        }
        if (st != SCAN_OK) {
            expected = p;
            final = st;
            break;
        }
        if (p < limit[k] && j < count[k] && lane[j] == p) { /* met: the rest of the lane is right */
            memcpy(offs + n, lane + j, (size_t)(count[k] - j) * sizeof *offs);
            n += count[k] - j;
            expected = cur[k];
            if (status[k] != SCAN_OK) {
                final = status[k];
                break;
            }
        } else {
            expected = p;
        }
    }
    state[0] = expected;
    state[1] = final;
    return n;
}

/* data offset, caplen, wirelen and time of the records whose headers are at offs[0..n) */
EXPORT void vx_pcap_columns(const uint8_t *buf, const int64_t *offs, int64_t n, int big_endian, int nanos,
                            int64_t *start, uint32_t *caplen, uint32_t *wirelen, double *ts) {
    const double frac = nanos ? 1e-9 : 1e-6;
    for (int64_t i = 0; i < n; i++) {
        if (i + PREFETCH_AHEAD < n) __builtin_prefetch(buf + offs[i + PREFETCH_AHEAD]);
        const uint8_t *h = buf + offs[i];
        start[i] = offs[i] + 16;
        caplen[i] = rd32(h + 8, big_endian);
        wirelen[i] = rd32(h + 12, big_endian);
        ts[i] = (double)rd32(h, big_endian) + (double)rd32(h + 4, big_endian) * frac;
    }
}

/* ---- pcapng (receiver/capture/pcapng.py walk) ---------------------------------------------------
 * The run of well-formed enhanced packet blocks from `pos`: type 6, both length fields equal, at
 * least the 20-byte header, an interface below `n_ifaces`, data inside the block. Stops at the
 * first other block (Python handles it, the same as before), at the end, or after `max_out`.
 * Per packet: data offset, caplen, wirelen, interface, timestamp in the interface's units.
 * Returns the count; next[0] = where it stopped. */
EXPORT int64_t vx_pcapng_epbs(const uint8_t *buf, int64_t end, int64_t pos, int big_endian, int64_t n_ifaces,
                              int64_t max_out, int64_t *start, uint32_t *caplen, uint32_t *wirelen, int64_t *iface,
                              uint64_t *units, int64_t *next) {
    int64_t n = 0;
    while (n < max_out && pos + 12 <= end) {
        const uint8_t *b = buf + pos;
        if (rd32(b, big_endian) != 6) break;
        int64_t blen = rd32(b + 4, big_endian);
        if (blen < 32 || blen % 4 || pos + blen > end || rd32(buf + pos + blen - 4, big_endian) != blen) break;
        int64_t iid = rd32(b + 8, big_endian), cap = rd32(b + 20, big_endian);
        if (iid >= n_ifaces || 28 + cap > blen - 4) break;
        start[n] = pos + 28;
        caplen[n] = (uint32_t)cap;
        wirelen[n] = rd32(b + 24, big_endian);
        iface[n] = iid;
        units[n] = ((uint64_t)rd32(b + 12, big_endian) << 32) | rd32(b + 16, big_endian);
        n++;
        pos += blen;
    }
    next[0] = pos;
    return n;
}

/* ---- byte ranges (forwarders/gather.py copy_ranges) ------------------------------------------
 * dst[d[i] : d[i] + n[i]] = src[s[i] : s[i] + n[i]] for every i (ranges checked by the caller). */
EXPORT void vx_copy_ranges(const uint8_t *src, const int64_t *s, uint8_t *dst, const int64_t *d, const int64_t *n,
                           int64_t count) {
    for (int64_t i = 0; i < count; i++) {
        if (i + PREFETCH_AHEAD < count) __builtin_prefetch(src + s[i + PREFETCH_AHEAD]);
        if (n[i] > 0) memcpy(dst + d[i], src + s[i], (size_t)n[i]);
    }
}
