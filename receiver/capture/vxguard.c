/* vxguard.c: mapped captures that shrink while they are read.
 *
 * A file truncated while it is mapped (tcpdump's ring buffer, -C/-W, reopening its oldest file;
 * a copytruncate log rotation) makes every access past its new end raise SIGBUS, which kills
 * the process: every record of the run lost, on a reader thread or in numpy alike. The ranges
 * registered here are guarded: a page of one that faults is replaced by a page of zeros, the
 * access is retried and reads zeros, and the range's fault count goes up. Python checks the
 * file's size between batches and stops reading it there (receiver.capture). A SIGBUS anywhere
 * else goes to the handler installed before (Python's faulthandler, say), or ends the process
 * as it would have. */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))
#define MAX_GUARDS 64

struct guard {
    uintptr_t lo, hi; /* [lo, hi) guarded; lo == 0: a free entry (claimed by setting lo, live once hi is) */
    int64_t faults;
};

static struct guard guards[MAX_GUARDS];
static struct sigaction previous;

static void on_sigbus(int sig, siginfo_t *info, void *context) {
    uintptr_t at = (uintptr_t)info->si_addr;
    for (int i = 0; i < MAX_GUARDS; i++) {
        uintptr_t lo = __atomic_load_n(&guards[i].lo, __ATOMIC_ACQUIRE);
        uintptr_t hi = __atomic_load_n(&guards[i].hi, __ATOMIC_ACQUIRE);
        if (at < lo || at >= hi) continue;
        uintptr_t page = at & ~((uintptr_t)sysconf(_SC_PAGESIZE) - 1);
        void *p = mmap((void *)page, (size_t)sysconf(_SC_PAGESIZE), PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                       -1, 0);
        if (p != MAP_FAILED) {
            __atomic_fetch_add(&guards[i].faults, 1, __ATOMIC_RELAXED);
            return; /* the access is retried, and reads zeros */
        }
    }
    /* not a guarded page: as if this handler were not there */
    if (previous.sa_flags & SA_SIGINFO) {
        if (previous.sa_sigaction != NULL) {
            previous.sa_sigaction(sig, info, context);
            return;
        }
    } else if (previous.sa_handler != SIG_DFL && previous.sa_handler != SIG_IGN) {
        previous.sa_handler(sig);
        return;
    }
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigaction(SIGBUS, &dfl, NULL); /* the access is retried and ends the process, as without the guard */
}

/* install the handler, or again if another took its place since (faulthandler.enable()) */
static int install(void) {
    struct sigaction now;
    if (sigaction(SIGBUS, NULL, &now) != 0) return -1;
    if ((now.sa_flags & SA_SIGINFO) && now.sa_sigaction == on_sigbus) return 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    previous = now;
    return sigaction(SIGBUS, &sa, NULL);
}

/* guard [addr, addr + len): the entry's number, or -1 (no free entry, or no handler) */
EXPORT int64_t vx_guard_add(const void *addr, int64_t len) {
    if (len <= 0 || install() != 0) return -1;
    for (int i = 0; i < MAX_GUARDS; i++) {
        uintptr_t expected = 0;
        /* claim a free entry (lo is its lock: 0 free), then publish the range with hi */
        if (__atomic_compare_exchange_n(&guards[i].lo, &expected, (uintptr_t)addr, 0, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE)) {
            __atomic_store_n(&guards[i].faults, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&guards[i].hi, (uintptr_t)addr + (uintptr_t)len, __ATOMIC_RELEASE);
            return i;
        }
    }
    return -1;
}

/* stop guarding entry `i` (before its range is unmapped) */
EXPORT void vx_guard_remove(int64_t i) {
    if (i < 0 || i >= MAX_GUARDS) return;
    __atomic_store_n(&guards[i].hi, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&guards[i].lo, 0, __ATOMIC_RELEASE);
}

/* pages of entry `i` replaced by zeros so far */
EXPORT int64_t vx_guard_faults(int64_t i) {
    if (i < 0 || i >= MAX_GUARDS) return 0;
    return __atomic_load_n(&guards[i].faults, __ATOMIC_RELAXED);
}
