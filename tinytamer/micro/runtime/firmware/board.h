/* What the example needs from a board: a way to print one line of text. */
#ifndef TT_BOARD_H
#define TT_BOARD_H

void tt_board_print(const char *line);

#endif
