/* Example: run the model once on the input in example_data.h and print its output.
 *
 * The output is printed as one line of hex (two digits per int8 value, in the output
 * layout of tt_model_io.h), then a line saying whether it equals the output tinytamer's
 * integer reference computed for the same input.  Printing goes through
 * tt_board_print (board.h): example/host/board.c uses stdio, example/qemu/board.c ARM
 * semihosting; on your board, write one over your UART.
 */
#include <stdint.h>

#include "board.h"
#include "example_data.h"
#include "model.h"

static int8_t tt_example_out[TT_OUTPUT_SIZE];
static char tt_example_line[2 * TT_OUTPUT_SIZE + 2];

int main(void)
{
    static const char hex[] = "0123456789abcdef";
    int32_t same = 1;
    if (tt_model_run(tt_example_input, tt_example_out) != 0) {
        tt_board_print("tt_model_run failed\n");
        return 1;
    }
    for (int32_t i = 0; i < TT_OUTPUT_SIZE; ++i) {
        const uint8_t v = (uint8_t)tt_example_out[i];
        tt_example_line[2 * i] = hex[v >> 4];
        tt_example_line[2 * i + 1] = hex[v & 15];
        same &= tt_example_out[i] == tt_example_expected[i];
    }
    tt_example_line[2 * TT_OUTPUT_SIZE] = '\n';
    tt_example_line[2 * TT_OUTPUT_SIZE + 1] = 0;
    tt_board_print(tt_example_line);
    tt_board_print(same ? "ok: equals the integer reference\n"
                        : "MISMATCH: differs from the integer reference\n");
    return same ? 0 : 1;
}
