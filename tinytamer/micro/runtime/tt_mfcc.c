/* The fixed-point MLPerf Tiny MFCC (see tinytamer/audio/mfcc_fixed.py for the steps). Every
 * shift of a negative value is arithmetic, as GCC defines it and numpy's >> computes it. */
#include "tt_mfcc.h"

#include "tt_fixedpoint.h"

static int32_t bit_length(uint32_t v)
{
    return v ? 32 - __builtin_clz(v) : 0;
}

/* floor(sqrt(v)) for v < 2^30. On a core with an FPU, VSQRT.F32 gives a root within one of the
 * exact one (v rounds to 24 bits: a relative error of 2^-25 on a root below 2^15), and two integer
 * steps make it exact; elsewhere it is computed bit by bit. */
static uint32_t isqrt32(uint32_t v)
{
#if defined(__ARM_FP) && defined(__thumb__)
    float f = (float)v;
    __asm__("vsqrt.f32 %0, %1" : "=t"(f) : "t"(f));
    uint32_t root = (uint32_t)f;
    root -= root * root > v;
    root += (root + 1) * (root + 1) <= v;
    return root;
#else
    uint32_t root = 0, bit = 1u << 30;
    while (bit > v) {
        bit >>= 2;
    }
    while (bit) {
        if (v >= root + bit) {
            v -= root + bit;
            root = (root >> 1) + bit;
        } else {
            root >>= 1;
        }
        bit >>= 2;
    }
    return root;
#endif
}

/* log2(max(e, 1)) in Q16: the leading bit, then the table interpolated on the next 16 bits. */
static int32_t log2_q16(const int32_t *lut, uint64_t e)
{
    if (e == 0) {
        e = 1;
    }
    const int32_t msb = 63 - __builtin_clzll(e);
    const uint32_t frac = (uint32_t)(msb >= 16 ? e >> (msb - 16) : e << (16 - msb)) & 0xFFFFu;
    const uint32_t idx = frac >> 8, rem = frac & 0xFFu;
    return (msb << 16) + lut[idx] + (((lut[idx + 1] - lut[idx]) * (int32_t)rem) >> 8);
}

/* In-place radix-2 DIT FFT of TT_MFCC_HALF points (input in bit-reversed order); every stage
 * rounds the twiddle product and halves. |Z| stays below the input's largest modulus
 * (< 2^14.5), so the int32 products (< 2^30.5) cannot overflow. */
static void fft_q15(const tt_mfcc_params *p, int32_t *re, int32_t *im)
{
    for (int32_t half = 1; half < TT_MFCC_HALF; half *= 2) {
        const int32_t step = TT_MFCC_FFT / (2 * half);
        for (int32_t base = 0; base < TT_MFCC_HALF; base += 2 * half) {
            for (int32_t j = 0; j < half; j++) {
                const int32_t wr = p->twiddle_re[j * step], wi = p->twiddle_im[j * step];
                int32_t *ar = &re[base + j], *ai = &im[base + j];
                int32_t *br = &re[base + j + half], *bi = &im[base + j + half];
                const int32_t tr = (*br * wr - *bi * wi + (1 << 14)) >> 15;
                const int32_t ti = (*br * wi + *bi * wr + (1 << 14)) >> 15;
                const int32_t xr = *ar, xi = *ai;
                *ar = (xr + tr) >> 1;
                *ai = (xi + ti) >> 1;
                *br = (xr - tr) >> 1;
                *bi = (xi - ti) >> 1;
            }
        }
    }
}

void tt_mfcc_q16(const tt_mfcc_params *p, const int16_t *audio, int32_t *out, int32_t *scratch)
{
    int32_t *x = scratch; /* TT_MFCC_FFT windowed samples, later the bins' magnitudes */
    int32_t *re = scratch + TT_MFCC_FFT, *im = re + TT_MFCC_HALF;
    int32_t logs[64];
    for (int32_t f = 0; f < p->frames; f++) {
        const int16_t *a = audio + f * p->hop;
        uint32_t peak = 0;
        for (int32_t n = 0; n < p->window_len; n++) {
            const int32_t v = ((int32_t)a[n] * p->window[n] + (1 << 14)) >> 15;
            x[n] = v;
            const uint32_t m = (uint32_t)(v < 0 ? -v : v);
            peak = m > peak ? m : peak;
        }
        for (int32_t n = p->window_len; n < TT_MFCC_FFT; n++) {
            x[n] = 0;
        }
        /* every |sample| below 2^14 after the shift: loud frames (peak >= 2^14) shift right */
        const int32_t shift = 14 - bit_length(peak);
        const int32_t gain = shift > 0 ? 1 << shift : 1; /* a multiply: left-shifting a negative is undefined */
        const int32_t down = shift < 0 ? -shift : 0;
        /* even samples real, odd imaginary, in bit-reversed order */
        for (int32_t n = 0; n < TT_MFCC_HALF; n++) {
            const int32_t r = p->bit_reverse[n];
            re[n] = (x[2 * r] * gain) >> down;
            im[n] = (x[2 * r + 1] * gain) >> down;
        }
        fft_q15(p, re, im);
        /* the split: X[k] = (E + W^k O) / 4, products in 64 bits (|E|, |O| < 2^15.5) */
        for (int32_t k = 0; k <= TT_MFCC_HALF; k++) {
            const int32_t ka = k & (TT_MFCC_HALF - 1), kb = (TT_MFCC_HALF - k) & (TT_MFCC_HALF - 1);
            const int32_t er = re[ka] + re[kb], ei = im[ka] - im[kb];
            const int32_t o_r = im[ka] + im[kb], o_i = re[kb] - re[ka];
            const int64_t wr = p->twiddle_re[k], wi = p->twiddle_im[k];
            const int32_t tr = (int32_t)((o_r * wr - o_i * wi + (1 << 14)) >> 15);
            const int32_t ti = (int32_t)((o_r * wi + o_i * wr + (1 << 14)) >> 15);
            const int32_t xr = (er + tr) >> 2, xi = (ei + ti) >> 2;
            x[k] = (int32_t)isqrt32((uint32_t)(xr * xr) + (uint32_t)(xi * xi));
        }
        const uint16_t *w = p->mel_weights;
        for (int32_t j = 0; j < p->bands; j++) {
            uint64_t e = 0;
            const int32_t *m = x + p->mel_start[j];
            for (int32_t k = 0; k < p->mel_length[j]; k++) {
                e += (uint64_t)((uint32_t)m[k] * (uint32_t)w[k]);
            }
            w += p->mel_length[j];
            const int32_t l = log2_q16(p->log2_lut, e) - ((p->scale_log2 + shift) << 16);
            logs[j] = l > p->log_floor ? l : p->log_floor;
        }
        for (int32_t c = 0; c < p->coefficients; c++) {
            int64_t acc = 0;
            for (int32_t j = 0; j < p->bands; j++) {
                acc += (int64_t)logs[j] * p->dct[j * p->coefficients + c];
            }
            out[f * p->coefficients + c] = (int32_t)((acc + (1 << 19)) >> 20);
        }
    }
}

void tt_mfcc(const tt_mfcc_params *p, const int16_t *audio, int8_t *out, int32_t *scratch)
{
    /* one frame's coefficients at a time, so no frames x coefficients int32 buffer is needed */
    tt_mfcc_params one = *p;
    one.frames = 1;
    int32_t c16[32];
    for (int32_t f = 0; f < p->frames; f++) {
        tt_mfcc_q16(&one, audio + f * p->hop, c16, scratch);
        for (int32_t c = 0; c < p->coefficients; c++) {
            const int32_t v = tt_requant_inline(c16[c], p->out_multiplier, p->out_shift) + p->out_zp;
            out[f * p->coefficients + c] = tt_clamp(v, -128, 127);
        }
    }
}
