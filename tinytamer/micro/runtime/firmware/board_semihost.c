/* The example's board on QEMU (or a debugger): print over ARM semihosting. */
#include "board.h"
#include "semihost.h"

void tt_board_print(const char *line)
{
    tt_sh_write0(line);
}
