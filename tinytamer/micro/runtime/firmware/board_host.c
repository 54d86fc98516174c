/* The example's board on a host computer: print to stdout. */
#include <stdio.h>

#include "board.h"

void tt_board_print(const char *line)
{
    fputs(line, stdout);
}
