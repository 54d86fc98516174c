/* Whole-program run on an emulated board: run the model on the embedded inputs and
 * print each output as hex over semihosting, one line per input. */
#include <stdint.h>

#include "model.h"
#include "semihost.h"

/* The inputs back to back, TT_INPUT_SIZE bytes each (one byte when there are none, so that
 * an image built to be measured holds no test data). */
extern const int8_t tt_inputs[];
extern const int32_t tt_num_inputs;

static int8_t tt_output[TT_OUTPUT_SIZE];
static char tt_line[2 * TT_OUTPUT_SIZE + 2];

int main(void)
{
    static const char hex[] = "0123456789abcdef";
    for (int32_t n = 0; n < tt_num_inputs; ++n) {
        if (tt_model_run(tt_inputs + n * TT_INPUT_SIZE, tt_output) != 0) {
            return 1;
        }
        for (int32_t i = 0; i < TT_OUTPUT_SIZE; ++i) {
            const uint8_t v = (uint8_t)tt_output[i];
            tt_line[2 * i] = hex[v >> 4];
            tt_line[2 * i + 1] = hex[v & 15];
        }
        tt_line[2 * TT_OUTPUT_SIZE] = '\n';
        tt_line[2 * TT_OUTPUT_SIZE + 1] = 0;
        tt_sh_write0(tt_line);
    }
    return 0;
}
