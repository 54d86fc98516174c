#include "semihost.h"

#define SYS_WRITE0 0x04
#define SYS_EXIT 0x18
#define ADP_STOPPED_APPLICATION_EXIT 0x20026
#define ADP_STOPPED_RUNTIME_ERROR 0x20023

static int tt_semihost(int op, const void *arg)
{
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void tt_sh_write0(const char *s)
{
    tt_semihost(SYS_WRITE0, s);
}

void tt_sh_exit(int ok)
{
    /* 32-bit SYS_EXIT takes the stop reason only: QEMU exits 0 for ApplicationExit, 1 else. */
    tt_semihost(SYS_EXIT, (const void *)(ok ? ADP_STOPPED_APPLICATION_EXIT
                                            : ADP_STOPPED_RUNTIME_ERROR));
    for (;;) {
    }
}
