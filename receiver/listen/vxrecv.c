/* vxrecv: a receive thread per socket that keeps the kernel's socket buffer empty.
 *
 * The worker's Python thread spends milliseconds on each batch (decode, flows, forwarders);
 * a drain that waits for it lets the socket buffer overflow at high rates although the CPU
 * would keep up on average. This thread (started from Python, running here without the GIL)
 * does nothing but recvmmsg into a staging area and copy each datagram, densely packed, into a
 * byte ring with its length, arrival time and sender; the Python side takes whatever is there
 * as one PacketBatch and gives it back when done. When the ring is full the thread waits (the
 * kernel buffer then fills, and its drops are counted as before): nothing is dropped here.
 *
 * Producer/consumer: the thread owns head (records and bytes written), Python owns tail;
 * each is published with release stores and read with acquire loads. An eventfd tells the
 * Python event loop that records are waiting. Layout of struct vx_rx: receiver.native.recv.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "vxsync.h"

#define EXPORT __attribute__((visibility("default")))
#define CONTROL_LEN 64
#ifndef UDP_GRO
#define UDP_GRO 104
#endif

struct vx_rx {
    /* set up by Python before the thread starts */
    int64_t fd, evfd;
    int64_t vlen;       /* datagrams per recvmmsg */
    int64_t slot_size;  /* bytes kept per datagram (longer ones are truncated, and counted) */
    int64_t stage_size; /* bytes per staging slot: slot_size, or 65536 with UDP_GRO */
    uint8_t *control;   /* vlen * CONTROL_LEN: where the kernel says a message holds coalesced datagrams */
    uint8_t *data;      /* byte ring */
    int64_t data_size;
    int64_t *start;     /* per record: offset of the datagram in data */
    int64_t *end_abs;   /* per record: bytes written to the ring up to its end (what to release) */
    uint32_t *caplen, *wirelen;
    double *ts;
    uint8_t *addr;      /* per record: 16 bytes of sender address (IPv4 in the first 4) */
    int64_t rec_size;   /* records in the ring */
    uint8_t *staging;   /* vlen * slot_size */
    struct mmsghdr *msgs; /* vlen */
    struct iovec *iov;    /* vlen */
    uint8_t *names;       /* vlen * 32 */
    int64_t notify_records; /* wake Python once this many records wait (or the socket is empty) */
    /* shared */
    int64_t head_rec, head_byte;   /* written by the thread */
    int64_t tail_rec, tail_byte;   /* written by Python */
    int64_t stop;                  /* set by Python: STOP_NOW, or STOP_DRAINED (empty the socket first) */
    int64_t waiting;               /* Python sleeps on evfd (1) or is working (0) */
    /* counters, written by the thread */
    int64_t received, bytes, truncated, ring_full_waits, errors, last_errno, running;
};

enum { RUN = 0, STOP_NOW = 1, STOP_DRAINED = 2 };

static void wake(struct vx_rx *rx) { wake_consumer(&rx->waiting, rx->evfd); }

/* Python: records waiting (and, when `idle`, say that it goes to sleep on evfd first) */
EXPORT int64_t vx_rx_pending(struct vx_rx *rx, int64_t idle) {
    set_waiting(&rx->waiting, idle);
    return load_acq(&rx->head_rec) - rx->tail_rec;
}

/* Python: records before `rec` are done with; their bytes may be reused */
EXPORT void vx_rx_release(struct vx_rx *rx, int64_t rec) {
    if (rec <= rx->tail_rec) return;
    store_rel(&rx->tail_byte, rx->end_abs[(rec - 1) % rx->rec_size]);
    store_rel(&rx->tail_rec, rec);
}

/* room for one more datagram of n bytes: where it goes, or -1 (ring full) */
static int64_t place(struct vx_rx *rx, int64_t n) {
    int64_t tail_rec = load_acq(&rx->tail_rec), tail_byte = load_acq(&rx->tail_byte);
    if (rx->head_rec - tail_rec >= rx->rec_size) return -1;
    int64_t used = rx->head_byte - tail_byte; /* bytes between tail and head, in ring positions */
    int64_t pos = rx->head_byte % rx->data_size;
    if (pos + n > rx->data_size) { /* does not fit before the end: skip to the start */
        int64_t skip = rx->data_size - pos;
        if (used + skip + n > rx->data_size) return -1;
        rx->head_byte += skip;
        return 0;
    }
    if (used + n > rx->data_size) return -1;
    return pos;
}

/* the segment size of a message the kernel coalesced (UDP_GRO), or 0 */
static int64_t gro_size(struct msghdr *h) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(h); c; c = CMSG_NXTHDR(h, c)) {
        if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO) {
            int v;
            memcpy(&v, CMSG_DATA(c), sizeof v);
            return v > 0 ? v : 0;
        }
    }
    return 0;
}

/* one datagram into the ring (waits while the ring is full); 0 when stopping instead */
static int put(struct vx_rx *rx, const uint8_t *src, int64_t wire, const uint8_t *name, double t) {
    int64_t cap = wire < rx->slot_size ? wire : rx->slot_size;
    int64_t pos;
    while ((pos = place(rx, cap)) < 0) { /* ring full: Python is behind; wait for it */
        rx->ring_full_waits++;
        wake(rx);
        struct timespec nap = {0, 50000};
        nanosleep(&nap, NULL);
        if (load_acq(&rx->stop) == STOP_NOW) return 0;
    }
    memcpy(rx->data + pos, src, (size_t)cap);
    int64_t r = rx->head_rec % rx->rec_size;
    rx->start[r] = pos;
    rx->caplen[r] = (uint32_t)cap;
    rx->wirelen[r] = (uint32_t)wire;
    rx->ts[r] = t;
    uint8_t *a = rx->addr + 16 * r;
    sa_family_t fam;
    memcpy(&fam, name, sizeof fam);
    if (fam == AF_INET6) memcpy(a, name + 8, 16);           /* sin6_addr */
    else { memcpy(a, name + 4, 4); memset(a + 4, 0, 12); }  /* sin_addr */
    rx->truncated += cap < wire;
    rx->bytes += wire;
    rx->received++;
    rx->head_byte += cap;
    rx->end_abs[r] = rx->head_byte;
    store_rel(&rx->head_rec, rx->head_rec + 1);
    return 1;
}

EXPORT int64_t vx_rx_run(struct vx_rx *rx) {
    const int64_t vlen = rx->vlen, stage = rx->stage_size;
    store_rel(&rx->running, 1);
    for (int64_t k = 0; k < vlen; k++) {
        rx->iov[k].iov_base = rx->staging + k * stage;
        rx->iov[k].iov_len = (size_t)stage;
        memset(&rx->msgs[k], 0, sizeof rx->msgs[k]);
        rx->msgs[k].msg_hdr.msg_iov = &rx->iov[k];
        rx->msgs[k].msg_hdr.msg_iovlen = 1;
        rx->msgs[k].msg_hdr.msg_name = rx->names + 32 * k;
        rx->msgs[k].msg_hdr.msg_control = rx->control + CONTROL_LEN * k;
    }
    int64_t since_wake = 0, drain_until = -1;
    for (;;) {
        int64_t stop = load_acq(&rx->stop);
        if (stop == STOP_NOW) break;
        if (stop == STOP_DRAINED) {
            /* shutting down: what the socket holds now still goes to the ring (bounded, in case
             * senders keep sending: 16 rings' worth of records), then stop */
            if (drain_until < 0) drain_until = rx->head_rec + 16 * rx->rec_size;
            if (rx->head_rec >= drain_until) break;
        }
        for (int64_t k = 0; k < vlen; k++) {
            rx->msgs[k].msg_hdr.msg_namelen = 32;
            rx->msgs[k].msg_hdr.msg_controllen = CONTROL_LEN;
        }
        int got = recvmmsg((int)rx->fd, rx->msgs, (unsigned)vlen, MSG_DONTWAIT | MSG_TRUNC, NULL);
        if (got <= 0) {
            if (got < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                rx->errors++;
                rx->last_errno = errno;
            }
            if (since_wake) { /* the socket is empty: hand over what is there */
                wake(rx);
                since_wake = 0;
            }
            if (stop == STOP_DRAINED) break; /* the socket is empty */
            struct pollfd p = {.fd = (int)rx->fd, .events = POLLIN};
            poll(&p, 1, 50);
            continue;
        }
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        double t = (double)now.tv_sec + (double)now.tv_nsec * 1e-9;
        int stopping = 0;
        for (int k = 0; k < got && !stopping; k++) {
            const uint8_t *src = rx->staging + k * stage;
            const uint8_t *name = rx->names + 32 * k;
            int64_t len = rx->msgs[k].msg_len;
            int64_t seg = gro_size(&rx->msgs[k].msg_hdr);
            if (seg <= 0 || seg >= len) { /* one datagram */
                stopping = !put(rx, src, len, name, t);
                since_wake++;
                continue;
            }
            if (len > stage) len = stage; /* cannot happen: coalesced messages stay under 64 KiB */
            for (int64_t off = 0; off < len && !stopping; off += seg) { /* coalesced: split them again */
                int64_t n = len - off < seg ? len - off : seg;
                stopping = !put(rx, src + off, n, name, t);
                since_wake++;
            }
        }
        if (since_wake >= rx->notify_records || got < vlen) {
            wake(rx);
            since_wake = 0;
        }
    }
    wake(rx);
    store_rel(&rx->running, 0);
    return 0;
}
