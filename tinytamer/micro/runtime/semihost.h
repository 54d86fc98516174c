/* ARM semihosting (bkpt 0xAB on M-profile): console output and exit for QEMU runs. */
#ifndef TT_SEMIHOST_H
#define TT_SEMIHOST_H

void tt_sh_write0(const char *s);
void tt_sh_exit(int ok) __attribute__((noreturn));

#endif
