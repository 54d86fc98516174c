/* The fixed-point MLPerf Tiny MFCC frontend (tt_mfcc.c): raw int16 audio -> int8 features.
 * tinytamer/audio/mfcc_fixed.py is its bit-exact numpy reference; the tables are generated
 * by tinytamer/micro/ops/frontend.py. */
#ifndef TT_MFCC_H
#define TT_MFCC_H

#include <stdint.h>

#define TT_MFCC_FFT 512
#define TT_MFCC_HALF (TT_MFCC_FFT / 2) /* the real FFT runs as a complex one of this length */
/* int32 words of scratch: the windowed frame, then the complex FFT's two halves */
#define TT_MFCC_SCRATCH_WORDS (2 * TT_MFCC_FFT)

typedef struct {
    const int16_t *window;      /* window_len, Q15 periodic Hann */
    const int16_t *twiddle_re;  /* FFT / 2 + 1: Q15 cos(2 pi k / FFT) */
    const int16_t *twiddle_im;  /* FFT / 2 + 1: Q15 -sin(2 pi k / FFT) */
    const int16_t *bit_reverse; /* FFT / 2 */
    const int16_t *mel_start;   /* bands: first FFT bin of each band */
    const int16_t *mel_length;  /* bands: bins in each band */
    const uint16_t *mel_weights; /* the bands' Q15 weights, concatenated */
    const int32_t *log2_lut;    /* 257: log2(1 + i / 256) in Q16 */
    const int32_t *dct;         /* bands x coefficients, Q20 (ln 2 folded in) */
    int32_t frames, hop, window_len, bands, coefficients;
    int32_t scale_log2;         /* log2 of the integer pipeline's gain before the FFT shift */
    int32_t log_floor;          /* log2(1e-6) in Q16 */
    int32_t out_multiplier, out_shift, out_zp; /* Q16 MFCC -> int8 */
} tt_mfcc_params;

/* MFCCs in Q16 (frames x coefficients int32) of frames * hop + window samples of audio. */
void tt_mfcc_q16(const tt_mfcc_params *p, const int16_t *audio, int32_t *out, int32_t *scratch);
/* The same, requantized to the network's int8 input (frames x coefficients, HWC). */
void tt_mfcc(const tt_mfcc_params *p, const int16_t *audio, int8_t *out, int32_t *scratch);

#endif
