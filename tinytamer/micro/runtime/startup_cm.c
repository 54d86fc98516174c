/* Minimal Cortex-M start-up: vector table, .data copy, .bss clear, FPU on, main, exit. */
#include <stdint.h>

#include "semihost.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _estack;
extern int main(void);
void tt_reset_handler(void);
void tt_fault_handler(void);

__attribute__((section(".vectors"), used))
static void (*const tt_vectors[16])(void) = {
    (void (*)(void))(&_estack), tt_reset_handler, tt_fault_handler, tt_fault_handler,
    tt_fault_handler, tt_fault_handler, tt_fault_handler, 0, 0, 0, 0,
    tt_fault_handler, tt_fault_handler, 0, tt_fault_handler, tt_fault_handler,
};

void tt_fault_handler(void)
{
    tt_sh_write0("tinytamer: hard fault\n");
    tt_sh_exit(0);
}

void tt_reset_handler(void)
{
    uint32_t *src = &_sidata;
    for (uint32_t *dst = &_sdata; dst < &_edata;) {
        *dst++ = *src++;
    }
    for (uint32_t *dst = &_sbss; dst < &_ebss;) {
        *dst++ = 0;
    }
    /* CPACR: full access to CP10/CP11, so hard-float library code cannot fault. */
    *(volatile uint32_t *)0xE000ED88u |= (0xFu << 20);
    __asm__ volatile("dsb\n\tisb");
    tt_sh_exit(main() == 0);
}
