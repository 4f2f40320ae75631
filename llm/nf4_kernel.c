/* NF4 matrix products for CPUs with AVX2 and FMA: bitsandbytes' 4-bit weights, read where they lie.
 *
 * Weights are bitsandbytes NF4 with double quantisation, blocks of 64 along a row, repacked once at load (by
 * llm/nf4_cpu.py) so that the 32 bytes of a block hold its element j in the low nibble of byte j and element
 * j + 32 in the high nibble. A block's scale is code2[qabsmax[b]] * absmax2[b / 256] + offset, bitsandbytes'
 * own double-quantised absmax, expanded per block as the product runs.
 *
 * Decoding reads every weight once per token, so it is bound by memory traffic: the 4-bit codes are turned into
 * 16-bit integers with two byte shuffles (the NF4 code * W_ONE, exact to 3e-5 of a block's absmax) and multiplied
 * with the input quantised to 16 bits per block of 64 (exact to 6e-5 of that block's largest value), eight
 * products summed per int32 lane before one conversion to float per block.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#define BLOCK 64
#define X_ONE 16383.0f
/* 8 products of |w| <= 16000 and |x| <= 16383 per int32 lane stay under 2^31. */
#define W_ONE 16000.0f
#define MAX_TOKENS 4

/* Order of the 16-bit lanes after the byte shuffles and unpacking (per 128-bit lane): the input is stored in it. */
static inline int64_t kernel_position(int64_t j) {
    int64_t group = j & ~31, i = j & 31;
    int64_t eighth = i >> 3, within = i & 7;
    static const int64_t start[4] = {0, 16, 8, 24};
    return group + start[eighth] + within;
}

/* x (M, K) -> xq (M, K) int16 in kernel order, scale (M, K / 64): x = xq * scale. */
static void nf4_quantize_input(const float *x, int16_t *xq, float *scale, int64_t M, int64_t K) {
    int64_t blocks = K / BLOCK;
    for (int64_t m = 0; m < M; m++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float *xb = x + m * K + b * BLOCK;
            float largest = 0.f;
            for (int j = 0; j < BLOCK; j++) largest = fmaxf(largest, fabsf(xb[j]));
            float s = largest / X_ONE;
            float inv = largest > 0.f ? X_ONE / largest : 0.f;
            scale[m * blocks + b] = s;
            int16_t *qb = xq + m * K + b * BLOCK;
            for (int64_t j = 0; j < BLOCK; j++) qb[kernel_position(j)] = (int16_t)lrintf(xb[j] * inv);
        }
    }
}

static inline float block_scale(const uint8_t *qabsmax, const float *absmax2, const float *code2, float offset,
                                int64_t b) {
    return code2[qabsmax[b]] * absmax2[b >> 8] + offset;
}

static inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One weight matrix in the kernel's layout (llm/nf4_cpu.py's NF4Weight mirrors it). */
typedef struct {
    const uint8_t *packed;  /* rows * cols / 2 bytes, blocks of 64 as described above */
    const uint8_t *qabsmax; /* rows * cols / 64 */
    const float *absmax2;   /* one per 256 blocks */
    const float *code2;     /* 256 values */
    const float *bias;      /* rows, or NULL */
    const uint8_t *table;   /* 16 low bytes then 16 high bytes of the int16 NF4 code * W_ONE */
    float offset;
    int64_t rows, cols;
} nf4_weight;

/* Up to MAX_TOKENS tokens (xq rows) times one row of W, scaled and summed into y[t * stride]. */
static void row_product(const nf4_weight *w, int64_t n, const int16_t *xq, const float *xscale, int64_t tokens,
                        float *y, int64_t stride) {
    const int64_t K = w->cols, blocks = K / BLOCK;
    const __m256i low_bytes = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)w->table));
    const __m256i high_bytes = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)(w->table + 16)));
    const __m256i nibble = _mm256_set1_epi8(0x0F);
    __m256 acc[MAX_TOKENS];
    for (int t = 0; t < MAX_TOKENS; t++) acc[t] = _mm256_setzero_ps();
    const uint8_t *row = w->packed + n * (K / 2);
    for (int64_t b = 0; b < blocks; b++) {
        const float ws = block_scale(w->qabsmax, w->absmax2, w->code2, w->offset, n * blocks + b);
        const __m256i codes = _mm256_loadu_si256((const __m256i *)(row + b * 32));
        const __m256i first = _mm256_and_si256(codes, nibble);
        const __m256i second = _mm256_and_si256(_mm256_srli_epi16(codes, 4), nibble);
        const __m256i first_lo = _mm256_shuffle_epi8(low_bytes, first);
        const __m256i first_hi = _mm256_shuffle_epi8(high_bytes, first);
        const __m256i second_lo = _mm256_shuffle_epi8(low_bytes, second);
        const __m256i second_hi = _mm256_shuffle_epi8(high_bytes, second);
        const __m256i w0 = _mm256_unpacklo_epi8(first_lo, first_hi);
        const __m256i w1 = _mm256_unpackhi_epi8(first_lo, first_hi);
        const __m256i w2 = _mm256_unpacklo_epi8(second_lo, second_hi);
        const __m256i w3 = _mm256_unpackhi_epi8(second_lo, second_hi);
        for (int64_t t = 0; t < tokens; t++) {
            const int16_t *xb = xq + t * K + b * BLOCK;
            __m256i sum = _mm256_madd_epi16(w0, _mm256_loadu_si256((const __m256i *)xb));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(w1, _mm256_loadu_si256((const __m256i *)(xb + 16))));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(w2, _mm256_loadu_si256((const __m256i *)(xb + 32))));
            sum = _mm256_add_epi32(sum, _mm256_madd_epi16(w3, _mm256_loadu_si256((const __m256i *)(xb + 48))));
            const __m256 s = _mm256_set1_ps(ws * xscale[t * blocks + b]);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum), s, acc[t]);
        }
    }
    const float bias = w->bias ? w->bias[n] : 0.f;
    for (int64_t t = 0; t < tokens; t++) y[t * stride] = horizontal_sum(acc[t]) * (1.0f / W_ONE) + bias;
}

/* y (M, sum of rows) = x (M, K) times the `count` matrices of one input, their outputs side by side (a layer's
 * query, key and value projections in one call). xq: M * K int16 and xscale: M * K / 64 floats of scratch.
 * threads: torch's intra-op thread count, passed in since OpenMP keeps that setting per calling thread. */
void nf4_linear(const nf4_weight *parts, int64_t count, const float *x, float *y, int64_t M, int16_t *xq,
                float *xscale, int threads) {
    const int64_t K = parts[0].cols, blocks = K / BLOCK;
    int64_t width = 0;
    for (int64_t p = 0; p < count; p++) width += parts[p].rows;
    nf4_quantize_input(x, xq, xscale, M, K);
    for (int64_t m0 = 0; m0 < M; m0 += MAX_TOKENS) {
        const int64_t tokens = M - m0 < MAX_TOKENS ? M - m0 : MAX_TOKENS;
        /* Small products aren't worth waking a second thread for. */
#pragma omp parallel for schedule(static) num_threads(threads) if (width * K >= (1 << 18))
        for (int64_t r = 0; r < width; r++) {
            int64_t p = 0, n = r, column = 0;
            while (n >= parts[p].rows) { n -= parts[p].rows; column += parts[p].rows; p++; }
            row_product(&parts[p], n, xq + m0 * K, xscale + m0 * blocks, tokens, y + m0 * width + column + n,
                        width);
        }
    }
}

/* W (rows, cols) as float32, exactly bitsandbytes' dequantisation (code: the 16 NF4 values). */
void nf4_dequantize(const nf4_weight *w, const float *code, float *out, int threads) {
    const int64_t K = w->cols, blocks = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < w->rows; n++) {
        for (int64_t b = 0; b < blocks; b++) {
            const float ws = block_scale(w->qabsmax, w->absmax2, w->code2, w->offset, n * blocks + b);
            const uint8_t *codes = w->packed + n * (K / 2) + b * 32;
            float *o = out + n * K + b * BLOCK;
            for (int j = 0; j < 32; j++) {
                o[j] = code[codes[j] & 15] * ws;
                o[j + 32] = code[codes[j] >> 4] * ws;
            }
        }
    }
}

/* bitsandbytes' NF4 quantisation (its default CPU path, value for value) of w, n values in blocks of 64 with
 * the given absmax: each value scaled into [-1, 1] is coded by how many NF4 midpoints lie below it, and
 * packed two to a byte as bitsandbytes packs them (first in the high nibble). */
void nf4_encode(const float *w, int64_t n, const float *absmax, const float *midpoints, uint8_t *packed,
                int threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n / 2; i++) {
        const float inverse = 1.0f / fmaxf(absmax[2 * i / BLOCK], 1e-38f);
        uint8_t q[2];
        for (int e = 0; e < 2; e++) {
            const float v = fminf(fmaxf(w[2 * i + e] * inverse, -1.f), 1.f);
            uint8_t below = 0;
            for (int k = 0; k < 15; k++) below += midpoints[k] < v;
            q[e] = below;
        }
        packed[i] = (uint8_t)(q[0] << 4 | q[1]);
    }
}
