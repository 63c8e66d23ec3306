/* vxsync.h: the producer/consumer handshake of the C threads (vxrecv.c, vxread.c).
 *
 * The thread owns a `head` counter, Python a `tail`; each is published with a release store and
 * read with an acquire load. A consumer about to sleep sets `waiting` (then looks once more); the
 * thread writes to the eventfd after publishing only when `waiting` is set. */
#ifndef VXSYNC_H
#define VXSYNC_H
#include <stdint.h>
#include <unistd.h>

static inline int64_t load_acq(int64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void store_rel(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

/* the thread: wake the consumer if it sleeps on `evfd` */
static inline void wake_consumer(int64_t *waiting, int64_t evfd) {
    uint64_t one = 1;
    __atomic_thread_fence(__ATOMIC_SEQ_CST); /* head is out before `waiting` is read */
    if (__atomic_load_n(waiting, __ATOMIC_SEQ_CST)) {
        ssize_t w = write((int)evfd, &one, sizeof one);
        (void)w;
    }
}

/* the consumer: say whether it goes to sleep on the eventfd (before its last look at head) */
static inline void set_waiting(int64_t *waiting, int64_t idle) {
    __atomic_store_n(waiting, idle ? 1 : 0, __ATOMIC_SEQ_CST);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
}
#endif
