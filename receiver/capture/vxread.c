/* vxread: the stateless half of reading a capture file, on a thread of its own without the GIL.
 *
 * `vxmirror read` is a pipeline: finding the records, decoding them and keying them depend on
 * each batch alone (Engine.prepare); the flow table and the application parsers keep state
 * (Engine.process, Python). This thread (started from Python, running vx_read_run here) does
 * the first half for a whole classic pcap, or for a run of a pcapng's enhanced packet blocks
 * (receiver.native.reader says when): the record scan, the record columns, the common-shape
 * decode, and for batches the C decode took whole, the flow keys, their grouping and the
 * application parsers' screening. Each batch goes into one slot of a ring of slots; Python
 * takes the slots in order, finishes what this thread left (packets of other shapes, see
 * receiver.native.reader) and gives each slot back when done. When no slot is free the thread
 * waits: nothing is dropped.
 *
 * Every step is one of vxnative.c's functions, in the order Engine.prepare calls them, so the
 * results are the same as Python's. Producer/consumer as in vxrecv.c: the thread owns `head`,
 * Python owns `tail`; an eventfd wakes Python when it sleeps. Layout: receiver.native.reader.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "vxsync.h"

#define EXPORT __attribute__((visibility("default")))

/* vxnative.c */
int64_t vx_pcap_scan_lanes(const uint8_t *buf, int64_t end, int64_t pos, int64_t stop, int big_endian,
                           int64_t max_len, int64_t frac_lim, int64_t lanes, int64_t *offs, int64_t *scratch,
                           int64_t *state);
int64_t vx_pcapng_epbs(const uint8_t *buf, int64_t end, int64_t pos, int big_endian, int64_t n_ifaces,
                       int64_t max_out, int64_t *start, uint32_t *caplen, uint32_t *wirelen, int64_t *iface,
                       uint64_t *units, int64_t *next);
void vx_pcap_columns(const uint8_t *buf, const int64_t *offs, int64_t n, int big_endian, int nanos, int64_t *start,
                     uint32_t *caplen, uint32_t *wirelen, double *ts);
int64_t vx_decode_common(const uint8_t *buf, int64_t buflen, const int64_t *start, const uint32_t *caplen,
                         int64_t n, int layer, const int64_t *vx_ports, int64_t n_vx, const int64_t *gn_ports,
                         int64_t n_gn, int64_t max_depth, uint8_t *handled, void **cols);
void vx_flow_keys(const void **in, void **out, int64_t n);
int64_t vx_group(const uint64_t *h, int64_t n, int64_t *inv, int64_t *first, int64_t *scratch, int64_t scratch_size);
void vx_same_key(const void **cols, int64_t n_cols, int64_t n, const int64_t *first, const int64_t *inv,
                 uint8_t *same);
void vx_app_hints(const uint8_t *buf, int64_t buflen, const int64_t *proto, const int64_t *sport,
                  const int64_t *dport, const int64_t *pay_off, const int64_t *pay_cap, int64_t n,
                  const uint8_t *dns_port, const uint8_t *udp_port, const uint8_t *tcp_port, const uint8_t *start,
                  const uint8_t *http_first, const int64_t *words, int64_t n_words, uint8_t *later, uint8_t *maybe);

/* a slot's columns, in this order (= READ_COLUMNS in receiver/capture/reader.py) */
enum {
    C_START, C_CAPLEN, C_WIRELEN, C_TS,
    C_DECODED,                          /* the 23 DECODE_COLUMNS of receiver.native, from here */
    C_HANDLED = C_DECODED + 23,
    C_KEYS,                             /* the 9 FLOW_KEY_OUTPUTS, from here */
    C_INV = C_KEYS + 9, C_FIRST, C_SAME, C_LATER, C_MAYBE,
    N_COLS
};
enum { D_VNI = 1, D_INNER_START = 2, D_IPVER = 5, D_SRC_HI = 6, D_SRC_LO = 7, D_DST_HI = 8,
       D_DST_LO = 9, D_PROTO = 10, D_SPORT = 11, D_DPORT = 12, D_PAY_OFF = 15, D_PAY_CAP = 17, D_FRAG = 19 };
enum { K_PROTO = 0, K_A_HI, K_A_LO, K_A_PORT, K_B_HI, K_B_LO, K_B_PORT, K_DIRECTION, K_HASH };
enum { F_PREPARED = 1, F_FRAGMENTS = 4 }; /* slot flags */
enum { SCAN_OK = 0 };

struct vx_read {
    /* set up by Python before the thread starts (all 8 bytes wide) */
    const uint8_t *buf;
    int64_t buflen, pos; /* pos: the first record header */
    int64_t big_endian, nanos, max_len, frac_lim, lanes, window;
    int64_t layer, max_depth, app;
    const int64_t *vx_ports;
    int64_t n_vx;
    const int64_t *gn_ports;
    int64_t n_gn;
    const uint8_t *dns_port, *udp_port, *tcp_port, *start_byte, *http_first;
    const int64_t *words;
    int64_t n_words;
    int64_t *offs, *scan_scratch;        /* the scan's work arrays, for one window */
    int64_t *group_scratch;
    int64_t group_scratch_size;          /* a power of two >= 2 * batch */
    int64_t batch, n_slots;
    void **cols;                         /* n_slots * N_COLS column pointers */
    const int64_t *col_size;             /* N_COLS item sizes */
    int64_t *slot_n, *slot_unhandled, *slot_groups, *slot_flags;
    int64_t *slot_next;                  /* per slot: where the records after its last one start */
    int64_t evfd;
    /* pcapng (format 1): the interfaces of the section, per interface (Interface in
     * receiver/capture/pcapng.py): timestamp units per second (0: too many to split on), seconds
     * per unit, if_tsoffset */
    int64_t format, n_ifaces;
    const uint64_t *if_per_second;
    const double *if_scale, *if_offset;
    int64_t *ng_iface;                   /* the walk's work arrays, `batch` long */
    uint64_t *ng_units;
    /* shared */
    int64_t head, tail, stop, waiting;
    /* results, written by the thread */
    int64_t status, end_pos, records, slot_waits, running, done;
};

static void wake(struct vx_read *r) { wake_consumer(&r->waiting, r->evfd); }

/* Python: slots ready (and, when `idle`, say that it goes to sleep on evfd first) */
EXPORT int64_t vx_read_ready(struct vx_read *r, int64_t idle) {
    set_waiting(&r->waiting, idle);
    return load_acq(&r->head) - r->tail;
}

/* Python: slots before number `upto` (counting from the first) are free again */
EXPORT void vx_read_release(struct vx_read *r, int64_t upto) {
    if (upto > r->tail) store_rel(&r->tail, upto);
}

/* Engine.prepare for the `n` records whose columns (start, caplen, wirelen, ts) slot `s` holds */
static void fill(struct vx_read *r, int64_t s, int64_t n) {
    void **c = r->cols + s * N_COLS;
    int64_t *start = c[C_START];
    uint32_t *caplen = c[C_CAPLEN];
    /* Decoded.empty: zeros, VNI and inner start -1 */
    for (int k = 0; k < 23; k++) memset(c[C_DECODED + k], 0, (size_t)(n * r->col_size[C_DECODED + k]));
    int64_t *vni = c[C_DECODED + D_VNI], *inner = c[C_DECODED + D_INNER_START];
    for (int64_t i = 0; i < n; i++) vni[i] = inner[i] = -1;
    int64_t handled = vx_decode_common(r->buf, r->buflen, start, caplen, n, (int)r->layer, r->vx_ports, r->n_vx,
                                       r->gn_ports, r->n_gn, r->max_depth, c[C_HANDLED], c + C_DECODED);
    r->slot_n[s] = n;
    r->slot_unhandled[s] = n - handled;
    r->slot_groups[s] = 0;
    r->slot_flags[s] = 0;
    if (handled < n) return; /* Python decodes the others, then prepares the batch itself */
    /* every packet the C decode takes has status OK: the keys are made unless fragments are there */
    const uint8_t *frag = c[C_DECODED + D_FRAG];
    int fragments = 0;
    for (int64_t i = 0; i < n; i++) fragments |= frag[i] != 0;
    int64_t flags = F_PREPARED | (fragments ? F_FRAGMENTS : 0);
    if (n && !fragments) { /* fragments take their ports in Engine.process: nothing more here */
        const void *in[9] = {vni, c[C_DECODED + D_IPVER], c[C_DECODED + D_PROTO], c[C_DECODED + D_SRC_HI],
                             c[C_DECODED + D_SRC_LO], c[C_DECODED + D_SPORT], c[C_DECODED + D_DST_HI],
                             c[C_DECODED + D_DST_LO], c[C_DECODED + D_DPORT]};
        vx_flow_keys(in, c + C_KEYS, n);
        r->slot_groups[s] = vx_group(c[C_KEYS + K_HASH], n, c[C_INV], c[C_FIRST], r->group_scratch,
                                     r->group_scratch_size);
        /* in _same_key's order: a_lo, b_lo, a_port, b_port, a_hi, b_hi, vni, proto */
        const void *key[8] = {c[C_KEYS + K_A_LO], c[C_KEYS + K_B_LO], c[C_KEYS + K_A_PORT],
                              c[C_KEYS + K_B_PORT], c[C_KEYS + K_A_HI], c[C_KEYS + K_B_HI], vni,
                              c[C_KEYS + K_PROTO]};
        vx_same_key(key, 8, n, c[C_FIRST], c[C_INV], c[C_SAME]);
        if (r->app)
            vx_app_hints(r->buf, r->buflen, c[C_DECODED + D_PROTO], c[C_DECODED + D_SPORT], c[C_DECODED + D_DPORT],
                         c[C_DECODED + D_PAY_OFF], c[C_DECODED + D_PAY_CAP], n, r->dns_port, r->udp_port,
                         r->tcp_port, r->start_byte, r->http_first, r->words, r->n_words, c[C_LATER], c[C_MAYBE]);
    }
    r->slot_flags[s] = flags;
}

/* a free slot (waiting while Python holds them all), or -1 when told to stop */
static int64_t free_slot(struct vx_read *r) {
    if (load_acq(&r->stop)) return -1;
    long nap_ns = 20000; /* doubling up to 1 ms: a consumer that pauses long costs next to no CPU */
    while (r->head - load_acq(&r->tail) >= r->n_slots) {
        r->slot_waits++;
        wake(r);
        struct timespec nap = {0, nap_ns};
        nanosleep(&nap, NULL);
        if (nap_ns < 1000000) nap_ns *= 2;
        if (load_acq(&r->stop)) return -1;
    }
    return r->head % r->n_slots;
}

/* The record columns of up to `max` enhanced packet blocks from `pos`, into slot `s`: the walk of
 * vx_pcapng_epbs, which stops where Python's walk (receiver/capture/pcapng.py) has something to
 * do: another block, a block not well formed, an interface not declared. Times as
 * Interface.seconds: whole seconds plus the fraction times the resolution, in that order (no
 * contraction: setup.py). Returns the count; *next = where it stopped. */
static int64_t pcapng_columns(struct vx_read *r, int64_t s, int64_t pos, int64_t max, int64_t *next) {
    void **c = r->cols + s * N_COLS;
    int64_t *iface = r->ng_iface;
    uint64_t *units = r->ng_units;
    int64_t n = vx_pcapng_epbs(r->buf, r->buflen, pos, (int)r->big_endian, r->n_ifaces, max, c[C_START], c[C_CAPLEN],
                               c[C_WIRELEN], iface, units, next);
    double *ts = c[C_TS];
    for (int64_t i = 0; i < n; i++) {
        uint64_t u = units[i], per_second = r->if_per_second[iface[i]];
        double offset = r->if_offset[iface[i]], scale = r->if_scale[iface[i]];
        ts[i] = per_second ? (offset + (double)(u / per_second)) + (double)(u % per_second) * scale
                           : offset + (double)u * scale;
    }
    return n;
}

/* format 1: batches of enhanced packet blocks until the walk stops */
static void run_pcapng(struct vx_read *r) {
    int64_t pos = r->pos;
    while (!load_acq(&r->stop)) {
        int64_t s = free_slot(r);
        if (s < 0) break;
        int64_t next, m = pcapng_columns(r, s, pos, r->batch, &next);
        if (!m) break;
        fill(r, s, m);
        r->slot_next[s] = pos = next;
        r->records += m;
        store_rel(&r->head, r->head + 1);
        wake(r);
    }
    r->end_pos = pos;
}

EXPORT int64_t vx_read_run(struct vx_read *r) {
    store_rel(&r->running, 1);
    int64_t pos = r->pos, state[2] = {0, SCAN_OK};
    r->status = SCAN_OK;
    if (r->format == 1) {
        run_pcapng(r);
        store_rel(&r->done, 1);
        wake(r);
        store_rel(&r->running, 0);
        return 0;
    }
    while (pos < r->buflen && !load_acq(&r->stop)) {
        int64_t stop_at = pos + r->window < r->buflen ? pos + r->window : r->buflen;
        int64_t n = vx_pcap_scan_lanes(r->buf, r->buflen, pos, stop_at, (int)r->big_endian, r->max_len, r->frac_lim,
                                       r->lanes, r->offs, r->scan_scratch, state);
        for (int64_t i = 0; i < n; i += r->batch) {
            int64_t s = free_slot(r);
            if (s < 0) goto out;
            int64_t m = n - i < r->batch ? n - i : r->batch;
            void **c = r->cols + s * N_COLS;
            vx_pcap_columns(r->buf, r->offs + i, m, (int)r->big_endian, (int)r->nanos, c[C_START], c[C_CAPLEN],
                            c[C_WIRELEN], c[C_TS]);
            fill(r, s, m);
            r->slot_next[s] = ((int64_t *)c[C_START])[m - 1] + ((uint32_t *)c[C_CAPLEN])[m - 1];
            r->records += m;
            store_rel(&r->head, r->head + 1);
            wake(r);
        }
        if (state[1] != SCAN_OK) {
            r->status = state[1];
            pos = state[0];
            break;
        }
        if (state[0] <= pos) break; /* cannot happen: a window holds at least one record */
        pos = state[0];
    }
out:
    r->end_pos = pos;
    store_rel(&r->done, 1);
    wake(r);
    store_rel(&r->running, 0);
    return 0;
}
