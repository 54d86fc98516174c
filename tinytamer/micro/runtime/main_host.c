/* Host build: read inputs (TT_INPUT_SIZE bytes each) from stdin, write outputs to stdout. */
#include <stdint.h>
#include <stdio.h>

#include "model.h"

int main(void)
{
    static int8_t in[TT_INPUT_SIZE];
    static int8_t out[TT_OUTPUT_SIZE];
    while (fread(in, 1, TT_INPUT_SIZE, stdin) == TT_INPUT_SIZE) {
        if (tt_model_run(in, out) != 0) {
            return 2;
        }
        if (fwrite(out, 1, TT_OUTPUT_SIZE, stdout) != TT_OUTPUT_SIZE) {
            return 3;
        }
    }
    return 0;
}
