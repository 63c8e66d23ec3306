/* send_ref: the load generator of the live benchmark.
 * Sends VXLAN datagrams over UDP with sendmmsg and UDP GSO (UDP_SEGMENT: one send carries up to
 * 64 datagrams of one size, fewer when 64 of them exceed the 64 KiB a send can carry), paced to a target rate by a token bucket.
 *
 *   send_ref --to HOST:PORT --rate PPS --seconds T [--size BYTES] [--flows N] [--gso 64]
 *            [--file PAYLOADS] [--vni N] [--churn N [--churn-port P]]
 *
 * --size: bytes of each UDP payload (VXLAN header + inner Ethernet/IPv4/UDP + padding), >= 50.
 * Without --file, datagrams are synthesized: VXLAN (I flag, --vni), then an inner frame whose
 * IPv4/UDP 5-tuple cycles over --flows flows. --file replays prebuilt payloads instead
 * ([u16 little-endian length][bytes] records, as receiver.traffic's write_datagrams writes),
 * without GSO (their sizes differ), cycling through the file.
 * --churn N: a new inner flow every N datagrams, never one seen before (the flow number F of the
 * j-th datagram is j / N: client 10.64.0.0/10 + F, source port from F's high bits, server
 * 10.0.0.53 port --churn-port, default 53). Within a flow the datagrams alternate client -> server
 * and back. To port 53 each is a valid DNS message that fills the datagram: a query or response
 * for "f<F in hex>.churn.example" (id F), padded with an EDNS padding option (RFC 7830) to --size
 * (>= 104 bytes; smaller datagrams carry opaque UDP to port 8125 instead); to another port,
 * opaque bytes (what a statsd or syslog flow looks like to a receiver without its parser). IPv4
 * header checksums are correct, UDP checksums 0. Datagrams are patched in place before each
 * send, with GSO as without --churn.
 * --rate 0 sends as fast as possible. Prints one JSON line at the end:
 * {"sent":N,"bytes":B,"seconds":S,"rate":R} (with --churn also "flows": flows begun).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#define MSGS 8

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void put16(uint8_t *p, unsigned v) { p[0] = v >> 8; p[1] = v; }
static void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

static void synth(uint8_t *d, int size, unsigned flow, unsigned vni) {
    memset(d, 0, size);
    d[0] = 0x08;
    d[4] = vni >> 16; d[5] = vni >> 8; d[6] = vni;
    uint8_t *e = d + 8;
    memcpy(e, "\x06\xaa\xbb\xcc\xdd\x01\x02\x00\x00\x00\x00\x01", 12);
    put16(e + 12, 0x0800);
    uint8_t *ip = e + 14;
    int iplen = size - 8 - 14;
    ip[0] = 0x45; put16(ip + 2, iplen); ip[8] = 64; ip[9] = 17;
    int dir = flow & 1; unsigned f = flow >> 1;
    uint32_t a = 0x0a010000u | (f & 0xffff), b = 0x0a020001u;
    put32(ip + 12, dir ? b : a); put32(ip + 16, dir ? a : b);
    uint32_t s = 0;
    for (int i = 0; i < 20; i += 2) s += (ip[i] << 8) | ip[i + 1];
    s = (s & 0xffff) + (s >> 16); s = (s & 0xffff) + (s >> 16);
    put16(ip + 10, ~s & 0xffff);
    uint8_t *u = ip + 20;
    unsigned cp = 32768 + (f * 7) % 28000;
    put16(u, dir ? 53 : cp); put16(u + 2, dir ? cp : 53); put16(u + 4, iplen - 20);
    for (int i = 8; i < iplen - 20; i++) u[i] = (uint8_t)(i * 31 + flow);
}

/* --churn: the j-th datagram of the stream, in place (the frame's constant parts set by synth) */
#define CHURN_DNS_MIN 104 /* 8 VXLAN + 42 Ethernet/IPv4/UDP + 39 DNS question + 15 EDNS padding */
static void churn(uint8_t *d, int size, unsigned long long j, unsigned n, unsigned port) {
    unsigned long long f = j / n;
    int dir = (int)(j % n) & 1;
    uint8_t *e = d + 8, *ip = e + 14, *u = ip + 20, *m = u + 8;
    uint32_t client = 0x0a400000u | (uint32_t)(f & 0x3fffff), server = 0x0a000035u;
    unsigned cport = 1024 + (unsigned)((f >> 22) % 60000);
    unsigned sport = port == 53 && size < CHURN_DNS_MIN ? 8125 : port;
    memcpy(e, dir ? "\x02\x00\x00\x00\x00\x01" : "\x06\xaa\xbb\xcc\xdd\x01", 6);
    memcpy(e + 6, dir ? "\x06\xaa\xbb\xcc\xdd\x01" : "\x02\x00\x00\x00\x00\x01", 6);
    put16(ip + 4, (unsigned)(j & 0xffff));
    ip[8] = dir ? 61 : 64;
    put32(ip + 12, dir ? server : client); put32(ip + 16, dir ? client : server);
    ip[10] = ip[11] = 0;
    uint32_t s = 0;
    for (int i = 0; i < 20; i += 2) s += (ip[i] << 8) | ip[i + 1];
    s = (s & 0xffff) + (s >> 16); s = (s & 0xffff) + (s >> 16);
    put16(ip + 10, ~s & 0xffff);
    put16(u, dir ? sport : cport); put16(u + 2, dir ? cport : sport);
    if (sport != 53) return;
    int len = size - 50; /* the DNS message */
    memset(m, 0, len);
    put16(m, (unsigned)(f & 0xffff)); put16(m + 2, dir ? 0x8180 : 0x0100);
    put16(m + 4, 1); put16(m + 10, 1); /* one question, one additional record (OPT) */
    uint8_t *q = m + 12;
    char label[8];
    snprintf(label, sizeof label, "f%06x", (unsigned)(f & 0xffffff));
    q[0] = 7; memcpy(q + 1, label, 7); q[8] = 5; memcpy(q + 9, "churn", 5);
    q[14] = 7; memcpy(q + 15, "example", 7); q[22] = 0;
    put16(q + 23, 1); put16(q + 25, 1); /* A, IN */
    uint8_t *opt = q + 27; /* root name, OPT, 1232-byte payload, no flags, one padding option */
    put16(opt + 1, 41); put16(opt + 3, 1232);
    int pad = len - 12 - 27 - 11 - 4;
    put16(opt + 9, 4 + pad); put16(opt + 11, 12); put16(opt + 13, pad);
}

int main(int argc, char **argv) {
    char host[256] = "127.0.0.1";
    int port = 4789, size = 512, gso = 64, flows = 4096;
    unsigned vni = 101, every = 0, churn_port = 53;
    double rate = 0, seconds = 3;
    const char *file = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--to") && i + 1 < argc) {
            char *c = strrchr(argv[++i], ':');
            if (!c) { fprintf(stderr, "send_ref: --to HOST:PORT\n"); return 2; }
            snprintf(host, sizeof host, "%.*s", (int)(c - argv[i]), argv[i]);
            port = atoi(c + 1);
        } else if (!strcmp(argv[i], "--rate") && i + 1 < argc) rate = atof(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
        else if (!strcmp(argv[i], "--size") && i + 1 < argc) size = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--flows") && i + 1 < argc) flows = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gso") && i + 1 < argc) gso = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--vni") && i + 1 < argc) vni = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--file") && i + 1 < argc) file = argv[++i];
        else if (!strcmp(argv[i], "--churn") && i + 1 < argc) every = (unsigned)atoi(argv[++i]);
        else if (!strcmp(argv[i], "--churn-port") && i + 1 < argc) churn_port = (unsigned)atoi(argv[++i]);
        else { fprintf(stderr, "send_ref: unknown argument %s\n", argv[i]); return 2; }
    }
    if (!file && gso > 1 && gso * size > 65000) gso = 65000 / size; /* a GSO send carries at most 64 KiB */
    if (gso < 1) gso = 1;
    if (size < 50 || size > 9000 || gso > 64 || flows < 1 || (every && file)) {
        fprintf(stderr, "send_ref: need 50 <= size <= 9000, 1 <= gso <= 64, flows >= 1, not --churn with --file\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int sndbuf = 8 << 20;
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &to.sin_addr) != 1) { fprintf(stderr, "send_ref: bad host %s\n", host); return 2; }
    if (connect(fd, (struct sockaddr *)&to, sizeof to) < 0) { perror("connect"); return 1; }

    /* payloads: either synthesized (fixed size, GSO) or from the file (one datagram per message) */
    uint8_t *buf; size_t nbuf = 0; size_t *offs = NULL, *lens = NULL; size_t nrec = 0;
    int per_msg;
    if (file) {
        FILE *f = fopen(file, "rb");
        if (!f) { perror(file); return 1; }
        fseek(f, 0, SEEK_END); nbuf = ftell(f); fseek(f, 0, SEEK_SET);
        buf = malloc(nbuf);
        if (fread(buf, 1, nbuf, f) != nbuf) { fprintf(stderr, "send_ref: short read\n"); return 1; }
        fclose(f);
        size_t cap = 1024; offs = malloc(cap * sizeof *offs); lens = malloc(cap * sizeof *lens);
        for (size_t o = 0; o + 2 <= nbuf;) {
            size_t l = buf[o] | (buf[o + 1] << 8);
            if (o + 2 + l > nbuf) break;
            if (nrec == cap) { cap *= 2; offs = realloc(offs, cap * sizeof *offs); lens = realloc(lens, cap * sizeof *lens); }
            offs[nrec] = o + 2; lens[nrec] = l; nrec++; o += 2 + l;
        }
        if (!nrec) { fprintf(stderr, "send_ref: no records in %s\n", file); return 1; }
        gso = 1;
        per_msg = 1;
    } else {
        int ring = every ? MSGS * gso : flows * 2 < 65536 ? flows * 2 : 65536; /* churn: one round of sends */
        ring = (ring + gso - 1) / gso * gso;
        nbuf = (size_t)ring * size;
        buf = malloc(nbuf);
        for (int i = 0; i < ring; i++) synth(buf + (size_t)i * size, size, (unsigned)(i % (flows * 2)), vni);
        nrec = ring;
        per_msg = gso;
    }
    int nmsg = file ? 256 : MSGS;
    struct mmsghdr *msgs = calloc(nmsg, sizeof *msgs);
    struct iovec *iov = calloc(nmsg, sizeof *iov);
    char (*ctl)[CMSG_SPACE(sizeof(uint16_t))] = calloc(nmsg, sizeof *ctl);
    for (int i = 0; i < nmsg; i++) {
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        if (!file && gso > 1) {
            msgs[i].msg_hdr.msg_control = ctl[i];
            msgs[i].msg_hdr.msg_controllen = sizeof ctl[i];
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr);
            cm->cmsg_level = SOL_UDP; cm->cmsg_type = UDP_SEGMENT; cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
            *(uint16_t *)CMSG_DATA(cm) = (uint16_t)size;
        }
    }
    unsigned long long sent = 0, bytes = 0;
    size_t pos = 0;
    double t0 = now(), end = t0 + seconds, t = t0;
    while ((t = now()) < end) {
        int want = nmsg;
        if (rate > 0) {
            double allowed = (t - t0) * rate - (double)sent;
            if (allowed < per_msg) {
                double wait = (per_msg - allowed) / rate;
                if (wait > 0.0002) { struct timespec ts = {0, (long)(wait * 0.5e9)}; nanosleep(&ts, NULL); }
                continue;
            }
            want = (int)(allowed / per_msg);
            if (want > nmsg) want = nmsg;
        }
        if (every) /* the datagrams of this round, numbered from what was sent (a short send resends) */
            for (int i = 0; i < want * per_msg; i++) churn(buf + (size_t)i * size, size, sent + i, every, churn_port);
        for (int i = 0; i < want; i++) {
            if (every) {
                iov[i].iov_base = buf + (size_t)i * per_msg * size; iov[i].iov_len = (size_t)per_msg * size;
            } else if (file) {
                iov[i].iov_base = buf + offs[pos]; iov[i].iov_len = lens[pos];
                pos = (pos + 1) % nrec;
            } else {
                iov[i].iov_base = buf + pos * size; iov[i].iov_len = (size_t)per_msg * size;
                pos = (pos + per_msg) % nrec;
            }
        }
        int r = sendmmsg(fd, msgs, want, 0);
        if (r < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ENOBUFS || errno == ECONNREFUSED) continue;
            perror("sendmmsg");
            return 1;
        }
        for (int i = 0; i < r; i++) { sent += file ? 1 : per_msg; bytes += iov[i].iov_len; }
    }
    double el = now() - t0;
    if (every)
        printf("{\"sent\":%llu,\"bytes\":%llu,\"seconds\":%.6f,\"rate\":%.1f,\"flows\":%llu}\n", sent, bytes, el,
               sent / el, (sent + every - 1) / every);
    else
        printf("{\"sent\":%llu,\"bytes\":%llu,\"seconds\":%.6f,\"rate\":%.1f}\n", sent, bytes, el, sent / el);
    return 0;
}
