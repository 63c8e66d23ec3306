/* vxrecords: flow records built and serialised in bulk (the C twin of receiver/flows/records.py).
 *
 * vx_encode_records writes, for a batch of ending flows, each FlowRecord as one JSON line,
 * byte for byte what orjson.dumps gives for the dict that records.build_records makes (the
 * Python builder stays as the oracle: tests/test_record_encode.py), straight from the flow
 * table's columns: addresses as text (inet_ntop), community_id (SHA-1, base64), counters,
 * conn_state and history, times (shortest round-trip floats, as orjson writes them), base64
 * excerpts. The parts only Python knows (application metadata, AWS labels, the sensor name)
 * come in as ready JSON fragments and are appended before the closing brace. Nothing here
 * makes a Python object: one call per batch of records (receiver/flows/encode.py wraps it).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

/* ---- SHA-1 (FIPS 180-4), for community_id; inputs are at most 40 bytes: one or two blocks ---- */
static inline uint32_t rol(uint32_t x, int n) { return (x << n) | (x >> (32 - n)); }

#define SHA1_ROUND(f, k)                                                      \
    do {                                                                      \
        uint32_t t = rol(a, 5) + (f) + e + (k) + w[i & 15];                   \
        e = d; d = c; c = rol(b, 30); b = a; a = t;                           \
    } while (0)
#define SHA1_W() (i >= 16 ? (w[i & 15] = rol(w[(i - 3) & 15] ^ w[(i - 8) & 15] ^ w[(i - 14) & 15] ^ w[i & 15], 1)) : 0)

static void sha1_block(uint32_t h[5], const uint8_t *p) {
    uint32_t w[16];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
    int i = 0;
    for (; i < 20; i++) { SHA1_W(); SHA1_ROUND((b & c) | (~b & d), 0x5A827999); }
    for (; i < 40; i++) { SHA1_W(); SHA1_ROUND(b ^ c ^ d, 0x6ED9EBA1); }
    for (; i < 60; i++) { SHA1_W(); SHA1_ROUND((b & c) | (b & d) | (c & d), 0x8F1BBCDC); }
    for (; i < 80; i++) { SHA1_W(); SHA1_ROUND(b ^ c ^ d, 0xCA62C1D6); }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
}

static void sha1(const uint8_t *msg, size_t len, uint8_t out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    uint8_t buf[128];
    size_t full = len & ~(size_t)63;
    for (size_t i = 0; i < full; i += 64) sha1_block(h, msg + i);
    size_t rest = len - full;
    memcpy(buf, msg + full, rest);
    buf[rest] = 0x80;
    size_t total = rest + 9 <= 64 ? 64 : 128;
    memset(buf + rest + 1, 0, total - rest - 1);
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) buf[total - 1 - i] = (uint8_t)(bits >> (8 * i));
    for (size_t i = 0; i < total; i += 64) sha1_block(h, buf + i);
    for (int i = 0; i < 5; i++) {
        out[4 * i] = (uint8_t)(h[i] >> 24); out[4 * i + 1] = (uint8_t)(h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(h[i] >> 8); out[4 * i + 3] = (uint8_t)h[i];
    }
}

/* ---- base64 (RFC 4648, with padding) ---- */
static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char B64_PAIRS[4096][2]; /* every 12 bits as their two characters */

__attribute__((constructor)) static void b64_init(void) {
    for (int v = 0; v < 4096; v++) { B64_PAIRS[v][0] = B64[v >> 6]; B64_PAIRS[v][1] = B64[v & 63]; }
}

static char *b64(char *o, const uint8_t *p, size_t n) {
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        memcpy(o, B64_PAIRS[v >> 12], 2);
        memcpy(o + 2, B64_PAIRS[v & 4095], 2);
        o += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        o[0] = B64[v >> 18]; o[1] = B64[(v >> 12) & 63]; o[2] = '='; o[3] = '=';
        o += 4;
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        o[0] = B64[v >> 18]; o[1] = B64[(v >> 12) & 63]; o[2] = B64[(v >> 6) & 63]; o[3] = '=';
        o += 4;
    }
    return o;
}

/* ---- numbers as orjson writes them ---- */
static char *put_u64(char *o, uint64_t v) {
    char tmp[24];
    int k = 0;
    do { tmp[k++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (k) *o++ = tmp[--k];
    return o;
}

static char *put_i64(char *o, int64_t v) {
    if (v < 0) { *o++ = '-'; return put_u64(o, (uint64_t)0 - (uint64_t)v); }
    return put_u64(o, (uint64_t)v);
}

/* The shortest decimal digits that read back as x (x finite, > 0), as ryu finds them: the
 * digits (no trailing zeros) and the exponent of the last one (x = digits * 10^exp).
 * For 1e-7 <= x < 2^52 (every time and duration of a record), exactly with 128-bit integers:
 * x = M * 2^-s, and the doubles next to it bound the interval of decimals that read back as
 * x (its ends included when M is even: strtod rounds ties to the even mantissa). The fewest
 * decimals p for which a multiple of 10^-p lies in it give the shortest digits; of those
 * multiples, the one nearest x. Else the general search, one precision after the other. */
static int digits_of(uint64_t v, char digits[24], int *exp10, int p) {
    int strip = 0;
    while (v && v % 10 == 0) { v /= 10; strip++; }
    char tmp[24];
    int n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (int i = 0; i < n; i++) digits[i] = tmp[n - 1 - i];
    *exp10 = strip - p;
    return n;
}

static int shortest(double x, char digits[24], int *exp10) {
    /* the common case first: a time of microsecond resolution (pcap), or a duration (rounded
    to six decimals): those digits read back as x, and the gap to the next double is below a
    microsecond, the finest unit they can end in, so no shorter digits can */
    if (x >= 1e-6 && x < 4e9) {
        double m = nearbyint(x * 1e6);
        if (m >= 1 && m / 1e6 == x && nextafter(x, INFINITY) - x < 1e-6)
            return digits_of((uint64_t)m, digits, exp10, 6);
    }
    if (x >= 1e-7 && x < 4503599627370496.0) {
        int e;
        double f = frexp(x, &e);                      /* x = f * 2^e, 0.5 <= f < 1 */
        uint64_t m = (uint64_t)ldexp(f, 53);          /* x = m * 2^(e-53), exactly */
        int s = 53 - e;                               /* 1 <= s <= 77 here */
        int sh = s + 2;                               /* units of 2^(e-53-2): quarters of an ulp */
        unsigned __int128 hi4 = (unsigned __int128)m * 4 + 2;
        unsigned __int128 lo4 = (unsigned __int128)m * 4 - (m == (1ULL << 52) ? 1 : 2);
        unsigned __int128 x4 = (unsigned __int128)m * 4;
        int even = (m & 1) == 0;
        /* no multiple of 10^-p for p below p0 can be the answer unless it is also the only one of
         * 10^-p0 in the interval: 10^-p0 is at least ten gaps between doubles, so at most one
         * multiple of it lies within (and the digits are the same, its zeros stripped) */
        int p0 = (int)((double)s * 0.30102999566398114) - 1;
        if (p0 < 0) p0 = 0;
        unsigned __int128 pow10 = 1;
        for (int i = 0; i < p0; i++) pow10 *= 10;
        for (int p = p0; p <= 21; p++, pow10 *= 10) {
            unsigned __int128 a = lo4 * pow10, b = hi4 * pow10;
            unsigned __int128 kmin, kmax;
            if (even) { kmin = (a + (((unsigned __int128)1 << sh) - 1)) >> sh; kmax = b >> sh; }
            else { kmin = (a >> sh) + 1; kmax = (b - 1) >> sh; }
            if (kmin > kmax) continue;
            /* the multiple nearest x (ties to the even one, as ryu) */
            unsigned __int128 r = x4 * pow10, half = (unsigned __int128)1 << (sh - 1);
            unsigned __int128 k = r >> sh, rem = r & ((half << 1) - 1);
            if (rem > half || (rem == half && (k & 1))) k++;
            if (k < kmin) k = kmin;
            if (k > kmax) k = kmax;
            return digits_of((uint64_t)k, digits, exp10, p);
        }
    }
    char buf[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(buf, sizeof buf, "%.*e", p - 1, x);
        if (p == 17 || strtod(buf, NULL) == x) break;
    }
    /* buf: d.ddddde[+-]XX */
    int len = 0;
    char *t = buf;
    for (; *t && *t != 'e'; t++)
        if (*t != '.') digits[len++] = *t;
    int e10 = atoi(t + 1);
    while (len > 1 && digits[len - 1] == '0') len--;
    *exp10 = e10 - (len - 1);
    return len;
}

/* A float as orjson (ryu's format) writes it: 0.0; decimal notation while the decimal point
 * falls within -5 < point <= 16 (integers with ".0"); else d.ddde+X / de-X. */
static char *put_f64(char *o, double x) {
    if (!isfinite(x)) { memcpy(o, "null", 4); return o + 4; }
    if (x == 0) {
        if (signbit(x)) *o++ = '-';
        memcpy(o, "0.0", 3);
        return o + 3;
    }
    if (x < 0) { *o++ = '-'; x = -x; }
    char d[24];
    int k;
    int len = shortest(x, d, &k);
    int kk = k + len; /* position of the decimal point relative to the first digit */
    if (k >= 0 && kk <= 16) {
        memcpy(o, d, len); o += len;
        memset(o, '0', k); o += k;
        memcpy(o, ".0", 2); return o + 2;
    }
    if (kk > 0 && kk <= 16) {
        memcpy(o, d, kk); o += kk;
        *o++ = '.';
        memcpy(o, d + kk, len - kk); return o + (len - kk);
    }
    if (kk > -5 && kk <= 0) {
        *o++ = '0'; *o++ = '.';
        memset(o, '0', -kk); o += -kk;
        memcpy(o, d, len); return o + len;
    }
    *o++ = d[0];
    if (len > 1) { *o++ = '.'; memcpy(o, d + 1, len - 1); o += len - 1; }
    *o++ = 'e';
    int e = kk - 1;
    if (e < 0) { *o++ = '-'; e = -e; } else *o++ = '+';
    return put_u64(o, (uint64_t)e);
}

/* Python's round(x, 6): correctly rounded to six decimals (ties to even), as a double. */
static double round6(double x) {
    double y = x * 1e6;
    if (fabs(y) < 4e15) {
        double m = nearbyint(y);
        if (fabs(fabs(y - m) - 0.5) > 1e-3) return m / 1e6;
    }
    char buf[400];
    snprintf(buf, sizeof buf, "%.6f", x);
    return strtod(buf, NULL);
}

/* ---- Zeek's summaries (twins of receiver/flows/state.py) ---- */
enum { L_SYN, L_SYNACK, L_ACK, L_DATA, L_FIN, L_RST };
static const char LETTERS[] = "SHADFR";

static inline int has(unsigned hb, int letter, int endpoint) { return (hb >> (2 * letter + endpoint)) & 1; }

enum { E_RESET, E_CLOSED, E_INACTIVE, E_ESTABLISHED, E_SYN_SENT, E_SYN_ACK_SENT, E_PARTIAL };

static int tcp_endpoint(unsigned hb, int me, int peer, int pkts) {
    if (has(hb, L_RST, me)) return E_RESET;
    if (has(hb, L_FIN, me)) return E_CLOSED;
    if (!pkts) return E_INACTIVE;
    int syn = has(hb, L_SYN, me), synack = has(hb, L_SYNACK, me);
    int peer_syn = has(hb, L_SYN, peer), peer_synack = has(hb, L_SYNACK, peer);
    if ((syn && peer_synack) || (synack && peer_syn)) return E_ESTABLISHED;
    if (syn) return E_SYN_SENT;
    if (synack) return E_SYN_ACK_SENT;
    return E_PARTIAL;
}

static const char *conn_state(int proto, unsigned hb, int orig, int pkts_o, int pkts_r, int no_payload) {
    int resp = 1 - orig;
    if (proto == 6) {
        int o = tcp_endpoint(hb, orig, resp, pkts_o), r = tcp_endpoint(hb, resp, orig, pkts_r);
        int o_in = o == E_INACTIVE || o == E_PARTIAL, r_in = r == E_INACTIVE || r == E_PARTIAL;
        if (r == E_RESET) {
            if (o == E_SYN_SENT || o == E_SYN_ACK_SENT || (o == E_RESET && no_payload)) return "REJ";
            return o_in ? "RSTRH" : "RSTR";
        }
        if (o == E_RESET) {
            if (r_in) return has(hb, L_SYN, orig) && !has(hb, L_SYNACK, resp) ? "RSTOS0" : "OTH";
            return "RSTO";
        }
        if (r == E_CLOSED && o == E_CLOSED) return "SF";
        if (o == E_CLOSED) return r_in ? "SH" : "S2";
        if (r == E_CLOSED) return o_in ? "SHR" : "S3";
        if (o == E_SYN_SENT && r == E_INACTIVE) return "S0";
        if (o == E_ESTABLISHED && r == E_ESTABLISHED) return "S1";
        return "OTH";
    }
    if (proto == 17) {
        if (pkts_o) return pkts_r ? "SF" : "S0";
        return pkts_r ? "SHR" : "OTH";
    }
    return "OTH";
}

static char *history(char *o, uint64_t hist, int orig, int flipped) {
    if (flipped) *o++ = '^';
    while (hist) {
        int code = (int)(hist & 0xF) - 1;
        hist >>= 4;
        char letter = LETTERS[(code >> 1) % 6];
        *o++ = (code & 1) == orig ? letter : (char)(letter + ('a' - 'A'));
    }
    return o;
}

/* ---- community_id v1, seed 0 (twin of receiver/flows/community_id.py) ---- */
static int icmp_counterpart(int proto, int type) {
    static const int8_t V4[19] = {8, -1, -1, -1, -1, -1, -1, -1, 0, 10, 9, -1, -1, 14, 13, 16, 15, 18, 17};
    if (proto == 1) return type < 19 ? V4[type] : -1;
    switch (type) {
    case 128: return 129; case 129: return 128; case 130: return 131; case 131: return 130;
    case 133: return 134; case 134: return 133; case 135: return 136; case 136: return 135;
    case 139: return 140; case 140: return 139; case 144: return 145; case 145: return 144;
    default: return -1;
    }
}

static char *community_id(char *o, int proto, const uint8_t *sa, const uint8_t *da, int alen, int sport, int dport) {
    int has_ports = proto == 6 || proto == 17 || proto == 1 || proto == 58 || proto == 132;
    int one_way = 0;
    if (proto == 1 || proto == 58) {
        int other = icmp_counterpart(proto, sport);
        if (other < 0) one_way = 1; else dport = other;
    }
    if (!has_ports) sport = dport = 0;
    if (!one_way) {
        int c = memcmp(sa, da, alen);
        if (c > 0 || (c == 0 && sport > dport)) {
            const uint8_t *t = sa; sa = da; da = t;
            int p = sport; sport = dport; dport = p;
        }
    }
    uint8_t in[44];
    int n = 0;
    in[n++] = 0; in[n++] = 0;
    memcpy(in + n, sa, alen); n += alen;
    memcpy(in + n, da, alen); n += alen;
    in[n++] = (uint8_t)proto; in[n++] = 0;
    if (has_ports) {
        in[n++] = (uint8_t)(sport >> 8); in[n++] = (uint8_t)sport;
        in[n++] = (uint8_t)(dport >> 8); in[n++] = (uint8_t)dport;
    }
    uint8_t dig[20];
    sha1(in, (size_t)n, dig);
    *o++ = '1'; *o++ = ':';
    return b64(o, dig, 20);
}

/* ---- addresses ---- */
/* IPv4 dotted quad, as inet_ntop writes it (glibc formats it with sprintf: a third of the
 * cost of a record). */
static char *ipv4(char *o, const uint8_t *a) {
    for (int i = 0; i < 4; i++) {
        if (i) *o++ = '.';
        unsigned v = a[i];
        if (v >= 100) { *o++ = (char)('0' + v / 100); v %= 100; *o++ = (char)('0' + v / 10); }
        else if (v >= 10) *o++ = (char)('0' + v / 10);
        *o++ = (char)('0' + v % 10);
    }
    return o;
}

/* IPv6 text as glibc's inet_ntop writes it (RFC 5952: the longest run of two or more zero groups,
 * the first of equal ones, as "::"; lower-case hex without leading zeros; an IPv4 address in the
 * last 32 bits of ::a.b.c.d and ::ffff:a.b.c.d), without its sprintf per group. */
static char *ipv6(char *o, const uint8_t *a) {
    static const char HEX[] = "0123456789abcdef";
    unsigned w[8];
    for (int i = 0; i < 8; i++) w[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
    int best = -1, best_len = 0, cur = -1, cur_len = 0;
    for (int i = 0; i < 8; i++) {
        if (w[i] == 0) {
            if (cur < 0) { cur = i; cur_len = 1; } else cur_len++;
        } else if (cur >= 0) {
            if (best < 0 || cur_len > best_len) { best = cur; best_len = cur_len; }
            cur = -1;
        }
    }
    if (cur >= 0 && (best < 0 || cur_len > best_len)) { best = cur; best_len = cur_len; }
    if (best >= 0 && best_len < 2) best = -1;
    for (int i = 0; i < 8; i++) {
        if (best >= 0 && i >= best && i < best + best_len) {
            if (i == best) *o++ = ':';
            continue;
        }
        if (i) *o++ = ':';
        if (i == 6 && best == 0 && (best_len == 6 || (best_len == 5 && w[5] == 0xffff)))
            return ipv4(o, a + 12);
        int started = 0;
        for (int sh = 12; sh >= 0; sh -= 4) {
            unsigned nib = (w[i] >> sh) & 15;
            if (nib || started || sh == 0) { *o++ = HEX[nib]; started = 1; }
        }
    }
    if (best >= 0 && best + best_len == 8) *o++ = ':';
    return o;
}

/* ---- the records ---- */
#define LIT(o, s) (memcpy((o), (s), sizeof(s) - 1), (o) + sizeof(s) - 1)

static char *put_str(char *o, const char *s, size_t n) {
    *o++ = '"'; memcpy(o, s, n); o += n; *o++ = '"';
    return o;
}

/* The flow table's columns, in this order (dtypes as receiver/flows/table.py COLUMNS). */
enum {
    C_ORIG, C_KPROTO, C_A_HI, C_A_LO, C_B_HI, C_B_LO, C_A_PORT, C_B_PORT, C_KVNI, C_PKTS, C_IPBYTES,
    C_PAYBYTES, C_TFLAGS, C_SEG_START, C_T_LAST, C_HIST, C_HBITS, C_FLIPPED, C_TRUNC, C_FRAGS, C_SEGMENTS,
    C_EXC_LEN, C_EXC_ROW, N_COLS
};

/* Strings the caller passes: tables (text of entry i is text[off[i]:off[i+1]]). */
typedef struct {
    const char *text;
    const int64_t *off;
} strtab;

static inline char *put_tab(char *o, const strtab *t, int64_t i) {
    size_t n = (size_t)(t->off[i + 1] - t->off[i]);
    memcpy(o, t->text + t->off[i], n);
    return o + n;
}

/* Encode records of ``flows`` (n of them, table rows) into out (capacity cap bytes).
 * cols: N_COLS column pointers. transports, tflags: 256-entry tables (JSON-quoted strings for
 * transport; plain letters for tcp flags). reason: the end_reason, JSON-quoted. now: NaN for
 * none. exc: the excerpt pool rows (NULL: no excerpts), exc_size its row width.
 * app_text/app_off: per record its ``app`` object, JSON (empty for none);
 * redacted: per record the values masked in it (``,"redacted":N`` when N > 0; NULL: none);
 * aws_idx: per record an entry of the aws table (``,"aws":{...}``), -1 none; sensor: the
 * ``,"sensor":"..."`` suffix (may be empty). Outputs: ends (end of each line, newline
 * included), cid (30 bytes a record), vni (-1 none), ts_start, ts_end. Returns the bytes
 * written, or -1 when out is too small (nothing else is wrong with the call then). */
EXPORT int64_t vx_encode_records(
    const int64_t *flows, int64_t n, void *const *cols, const strtab *transports, const strtab *tflags,
    const char *reason, int64_t reason_len, double now, const uint8_t *exc, int64_t exc_size,
    const char *app_text, const int64_t *app_off, const int64_t *redacted, const int32_t *aws_idx, const strtab *aws,
    const char *sensor, int64_t sensor_len, char *out, int64_t cap, int64_t *ends, uint8_t *cid,
    int64_t *vni_out, double *ts_start_out, double *ts_end_out, void *const *pcap, const strtab *pcap_names,
    int64_t pcap_base, int64_t pcap_name_max) {
    const uint8_t *orig_c = cols[C_ORIG];
    const uint16_t *kproto = cols[C_KPROTO];
    const uint64_t *a_hi = cols[C_A_HI], *a_lo = cols[C_A_LO], *b_hi = cols[C_B_HI], *b_lo = cols[C_B_LO];
    const uint16_t *a_port = cols[C_A_PORT], *b_port = cols[C_B_PORT];
    const int32_t *kvni = cols[C_KVNI];
    const uint32_t *pkts = cols[C_PKTS];
    const uint64_t *ipbytes = cols[C_IPBYTES], *paybytes = cols[C_PAYBYTES];
    const uint8_t *tfl = cols[C_TFLAGS];
    const double *seg_start = cols[C_SEG_START], *t_last = cols[C_T_LAST];
    const uint64_t *hist = cols[C_HIST];
    const uint16_t *hbits = cols[C_HBITS];
    const uint8_t *flipped = cols[C_FLIPPED], *trunc = cols[C_TRUNC];
    const uint32_t *frags = cols[C_FRAGS];
    const uint16_t *segments = cols[C_SEGMENTS];
    const uint16_t *exc_len = cols[C_EXC_LEN];
    const uint32_t *exc_row = cols[C_EXC_ROW];
    char *o = out;
    const char *end = out + cap;
    int64_t b64_room = 2 * ((exc_size + 2) / 3) * 4;
    for (int64_t j = 0; j < n; j++) {
        int64_t f = flows[j];
        int64_t app_len = app_off[j + 1] - app_off[j];
        int64_t aws_len = aws_idx[j] >= 0 ? aws->off[aws_idx[j] + 1] - aws->off[aws_idx[j]] : 0;
        int64_t pcap_len = 0;
        if (pcap != NULL) {
            const int32_t *s0 = pcap[3], *s1 = pcap[4];
            pcap_len = 128 + (s0[f] > 0 ? (int64_t)(s1[f] - s0[f] + 1) * (pcap_name_max + 1) : 0);
        }
        if (end - o < 1024 + b64_room + 8 + app_len + 32 + aws_len + sensor_len + pcap_len) return -1;
        int orig = orig_c[f], resp = 1 - orig;
        int proto = kproto[f] & 0xFF, v6 = kproto[f] >= 256;
        /* both endpoints, the originator first: 16 big-endian bytes each (IPv4: the last 4) */
        uint64_t hi[2] = {a_hi[f], b_hi[f]}, lo[2] = {a_lo[f], b_lo[f]};
        int port[2] = {a_port[f], b_port[f]};
        uint8_t addr[2][16];
        for (int e = 0; e < 2; e++) {
            int w = e == 0 ? orig : resp;
            for (int i = 0; i < 8; i++) {
                addr[e][i] = (uint8_t)(hi[w] >> (56 - 8 * i));
                addr[e][8 + i] = (uint8_t)(lo[w] >> (56 - 8 * i));
            }
        }
        int sport = port[orig], dport = port[resp];
        const uint8_t *sraw = v6 ? addr[0] : addr[0] + 12, *draw = v6 ? addr[1] : addr[1] + 12;
        int alen = v6 ? 16 : 4;
        char src[64], dst[64];
        if (v6) {
            *ipv6(src, sraw) = 0;
            *ipv6(dst, draw) = 0;
        } else {
            *ipv4(src, sraw) = 0;
            *ipv4(dst, draw) = 0;
        }
        double ts0 = seg_start[f], ts1 = t_last[f];
        if (ts1 < ts0) ts1 = isnan(now) ? ts0 : (now > ts0 ? now : ts0);
        uint32_t p_in = pkts[2 * f + orig], p_out = pkts[2 * f + resp];
        uint64_t y_in = paybytes[2 * f + orig], y_out = paybytes[2 * f + resp];
        int64_t vni = kvni[f];

        o = LIT(o, "{\"vni\":");
        if (vni < 0) o = LIT(o, "null"); else o = put_i64(o, vni);
        o = LIT(o, ",\"transport\":"); o = put_tab(o, transports, proto);
        o = LIT(o, ",\"ip_proto\":"); o = put_u64(o, (uint64_t)proto);
        o = LIT(o, ",\"src_ip\":"); o = put_str(o, src, strlen(src));
        o = LIT(o, ",\"src_port\":"); o = put_u64(o, (uint64_t)sport);
        o = LIT(o, ",\"dest_ip\":"); o = put_str(o, dst, strlen(dst));
        o = LIT(o, ",\"dest_port\":"); o = put_u64(o, (uint64_t)dport);
        o = LIT(o, ",\"packets_in\":"); o = put_u64(o, p_in);
        o = LIT(o, ",\"bytes_in\":"); o = put_u64(o, ipbytes[2 * f + orig]);
        o = LIT(o, ",\"packets_out\":"); o = put_u64(o, p_out);
        o = LIT(o, ",\"bytes_out\":"); o = put_u64(o, ipbytes[2 * f + resp]);
        o = LIT(o, ",\"payload_bytes_in\":"); o = put_u64(o, y_in);
        o = LIT(o, ",\"payload_bytes_out\":"); o = put_u64(o, y_out);
        o = LIT(o, ",\"ts_start\":"); o = put_f64(o, ts0);
        o = LIT(o, ",\"ts_end\":"); o = put_f64(o, ts1);
        o = LIT(o, ",\"duration\":"); o = put_f64(o, round6(ts1 - ts0));
        o = LIT(o, ",\"community_id\":\"");
        char *c0 = o;
        o = community_id(o, proto, sraw, draw, alen, sport, dport);
        memcpy(cid + 30 * j, c0, 30);
        *o++ = '"';
        const char *cs = conn_state(proto, hbits[f], orig, p_in > 0, p_out > 0, y_in == 0 && y_out == 0);
        o = LIT(o, ",\"conn_state\":"); o = put_str(o, cs, strlen(cs));
        o = LIT(o, ",\"history\":\""); o = history(o, hist[f], orig, flipped[f] != 0); *o++ = '"';
        o = LIT(o, ",\"tcp_flags_in\":\"");
        if (proto == 6) o = put_tab(o, tflags, tfl[2 * f + orig]);
        o = LIT(o, "\",\"tcp_flags_out\":\"");
        if (proto == 6) o = put_tab(o, tflags, tfl[2 * f + resp]);
        o = LIT(o, "\",\"end_reason\":"); memcpy(o, reason, (size_t)reason_len); o += reason_len;
        o = LIT(o, ",\"truncated\":");
        if (trunc[f]) o = LIT(o, "true"); else o = LIT(o, "false");
        o = LIT(o, ",\"fragments\":"); o = put_u64(o, frags[f]);
        if (segments[f]) {
            o = LIT(o, ",\"segment\":"); o = put_u64(o, segments[f]);
        } else if (exc != NULL) {
            for (int e = 0; e < 2; e++) {
                int w = e == 0 ? orig : resp;
                int64_t len = exc_len[2 * f + w];
                if (len > exc_size) len = exc_size;
                if (!len || !exc_row[2 * f + w]) continue;
                o = e == 0 ? LIT(o, ",\"excerpt_in\":\"") : LIT(o, ",\"excerpt_out\":\"");
                o = b64(o, exc + (int64_t)(exc_row[2 * f + w] - 1) * exc_size, (size_t)len);
                *o++ = '"';
            }
        }
        if (app_len) {
            o = LIT(o, ",\"app\":");
            memcpy(o, app_text + app_off[j], (size_t)app_len); o += app_len;
        }
        if (redacted != NULL && redacted[j] > 0) {
            o = LIT(o, ",\"redacted\":"); o = put_u64(o, (uint64_t)redacted[j]);
        }
        if (pcap != NULL) { /* the frames of this record in the pcap files (receiver/pcapkeep) */
            const uint32_t *kept = pcap[0], *skip = pcap[1], *drop = pcap[2];
            const int32_t *s0 = pcap[3], *s1 = pcap[4];
            o = LIT(o, ",\"pcap\":{\"packets\":"); o = put_u64(o, kept[f]);
            o = LIT(o, ",\"skipped\":"); o = put_u64(o, skip[f]);
            o = LIT(o, ",\"dropped\":"); o = put_u64(o, drop[f]);
            o = LIT(o, ",\"files\":[");
            if (s0[f] > 0)
                for (int64_t q = s0[f]; q <= s1[f]; q++) {
                    if (q > s0[f]) *o++ = ',';
                    o = put_tab(o, pcap_names, q - pcap_base);
                }
            o = LIT(o, "]}");
        }
        if (aws_len) o = put_tab(o, aws, aws_idx[j]);
        memcpy(o, sensor, (size_t)sensor_len); o += sensor_len;
        *o++ = '}'; *o++ = '\n';
        ends[j] = o - out;
        vni_out[j] = vni;
        ts_start_out[j] = ts0;
        ts_end_out[j] = ts1;
    }
    return o - out;
}

/* ---- the credential screen (receiver/redact/screen.py) ---- */
static uint8_t FOLD[256]; /* ASCII letters to lower case, every other byte as it is */

__attribute__((constructor)) static void fold_init(void) {
    for (int c = 0; c < 256; c++) FOLD[c] = (uint8_t)((unsigned)(c - 'A') < 26u ? c + 32 : c);
}

/* An excerpt that starts with a TLS record header (change_cipher_spec, alert, handshake or
 * application_data; version 3.x): encrypted or a hello, never a credential in clear. */
static inline int tls_record(const uint8_t *p, int64_t len) {
    return len >= 3 && p[0] >= 0x14 && p[0] <= 0x17 && p[1] == 3 && p[2] <= 4;
}

/* Which excerpts may hold a credential, and which markers say so, before any of them is looked
 * at in Python: out[i] has bit m set (bit 63: any marker from the 64th on) when excerpt i (row
 * rows[i] of exc, its first lens[i] bytes) contains marker m (lower case, at least 2 bytes,
 * sorted; compared with ASCII letters folded); 0 for an excerpt that starts with a TLS record
 * header. pairs: 65536 bits, set for the first two bytes of each marker (most positions go no
 * further); first: per byte pair, 1 + the first marker that starts with it (0: none). Returns
 * how many excerpts have some marker. */
EXPORT int64_t vx_redact_screen(const uint8_t *exc, int64_t exc_size, const int64_t *rows, const int64_t *lens,
                                int64_t n, const strtab *markers, int64_t n_markers, const uint8_t *pairs,
                                const uint16_t *first, uint64_t *out) {
    int64_t flagged = 0;
    for (int64_t i = 0; i < n; i++) {
        const uint8_t *p = exc + rows[i] * exc_size;
        int64_t len = lens[i] < exc_size ? lens[i] : exc_size;
        uint64_t found = 0;
        if (tls_record(p, len)) len = 0;
        uint8_t c1 = len > 0 ? FOLD[p[0]] : 0;
        for (int64_t k = 0; k + 1 < len; k++) {
            uint8_t c0 = c1;
            c1 = FOLD[p[k + 1]];
            unsigned pair = (unsigned)c0 << 8 | c1;
            if (!((pairs[pair >> 3] >> (pair & 7)) & 1)) continue;
            for (int64_t m = first[pair] - 1; m >= 0 && m < n_markers; m++) {
                const uint8_t *s = (const uint8_t *)markers->text + markers->off[m];
                int64_t ml = markers->off[m + 1] - markers->off[m];
                if (s[0] != c0 || s[1] != c1) break; /* (the markers of this pair are consecutive) */
                if (ml > len - k) continue;
                int64_t q = 2;
                while (q < ml && s[q] == FOLD[p[k + q]]) q++;
                if (q == ml) found |= (uint64_t)1 << (m < 63 ? m : 63);
            }
        }
        out[i] = found;
        flagged += found != 0;
    }
    return flagged;
}

/* For tests: the float formatter and round6 alone (n values into out; ends as above). */
EXPORT int64_t vx_format_floats(const double *x, int64_t n, int round, char *out, int64_t *ends) {
    char *o = out;
    for (int64_t i = 0; i < n; i++) {
        o = put_f64(o, round ? round6(x[i]) : x[i]);
        ends[i] = o - out;
    }
    return o - out;
}
