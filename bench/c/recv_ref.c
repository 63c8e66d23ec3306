/* recv_ref: the reference receiver of the live benchmark.
 * A minimal C UDP receiver: recvmmsg in batches of 256 into a preallocated block, counting
 * datagrams and bytes. Nothing is decoded: this is the ceiling a receiver can reach here.
 * With --gro the socket asks the kernel to coalesce datagrams (UDP_GRO, as vxmirror's receive
 * thread does with one worker) and counts the datagrams inside each coalesced message.
 *
 *   recv_ref --port P [--host 127.0.0.1] [--batch 256] [--rcvbuf BYTES] [--idle-ms 0] [--gro]
 *
 * Prints "ready <port>" once bound, then on SIGTERM/SIGINT (or after --idle-ms without a
 * datagram, once at least one arrived) one JSON line: {"datagrams":N,"bytes":B,"seconds":S}.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <netinet/udp.h>
#ifndef UDP_GRO
#define UDP_GRO 104
#endif
#define SLOT 65536 /* a coalesced message (--gro) is up to 64 KiB */
#define CONTROL 64
static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1";
    int port = 0, batch = 256, rcvbuf = 64 << 20, idle_ms = 0, gro = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--host") && i + 1 < argc) host = argv[++i];
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc) batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--rcvbuf") && i + 1 < argc) rcvbuf = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--idle-ms") && i + 1 < argc) idle_ms = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--gro")) gro = 1;
        else { fprintf(stderr, "recv_ref: unknown argument %s\n", argv[i]); return 2; }
    }
    if (batch < 1 || batch > 4096) { fprintf(stderr, "recv_ref: batch 1..4096\n"); return 2; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("socket"); return 1; }
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (gro && setsockopt(fd, IPPROTO_UDP, UDP_GRO, &gro, sizeof gro) < 0) { perror("UDP_GRO"); return 1; }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) { fprintf(stderr, "recv_ref: bad host\n"); return 2; }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) { perror("bind"); return 1; }
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    struct sigaction act = {.sa_handler = on_signal};
    sigaction(SIGTERM, &act, NULL);
    sigaction(SIGINT, &act, NULL);
    printf("ready %d\n", ntohs(sa.sin_port));
    fflush(stdout);

    char *block = malloc((size_t)batch * SLOT);
    struct iovec *iov = calloc(batch, sizeof *iov);
    struct mmsghdr *msgs = calloc(batch, sizeof *msgs);
    char *control = calloc(batch, CONTROL);
    for (int i = 0; i < batch; i++) {
        iov[i].iov_base = block + (size_t)i * SLOT;
        iov[i].iov_len = SLOT;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_control = control + (size_t)i * CONTROL;
    }
    unsigned long long n = 0, bytes = 0;
    double first = 0, last = 0;
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    while (!stop) {
        for (int i = 0; i < batch; i++) msgs[i].msg_hdr.msg_controllen = CONTROL;
        int r = recvmmsg(fd, msgs, batch, MSG_DONTWAIT, NULL);
        if (r > 0) {
            last = now();
            if (!n) first = last;
            for (int i = 0; i < r; i++) {
                unsigned len = msgs[i].msg_len;
                int seg = 0;
                for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c; c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
                    if (c->cmsg_level == IPPROTO_UDP && c->cmsg_type == UDP_GRO) memcpy(&seg, CMSG_DATA(c), sizeof seg);
                n += seg > 0 ? (len + seg - 1) / seg : 1;
                bytes += len;
            }
            continue;
        }
        if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) { perror("recvmmsg"); break; }
        int p = poll(&pfd, 1, 100);
        if (p == 0 && idle_ms > 0 && n > 0 && (now() - last) * 1000 >= idle_ms) break;
    }
    printf("{\"datagrams\":%llu,\"bytes\":%llu,\"seconds\":%.6f}\n", n, bytes, n ? last - first : 0.0);
    fflush(stdout);
    return 0;
}
