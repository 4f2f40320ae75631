/* NF4 matrix products for CPUs with AVX2 and FMA (prompts also with AVX512-VNNI where the CPU has it):
 * bitsandbytes' 4-bit weights, read where they lie.
 *
 * Weights are bitsandbytes NF4 with double quantisation, blocks of 64 along a row, repacked once at load (by
 * engine/nf4_cpu.py) so that the 32 bytes of a block hold its element j in the low nibble of byte j and element
 * j + 32 in the high nibble. A block's scale is code2[qabsmax[b]] * absmax2[b / 256] + offset, bitsandbytes'
 * own double-quantised absmax, expanded per block as the product runs.
 *
 * Decoding reads every weight once per token, so it is bound by memory traffic: the 4-bit codes are turned into
 * 16-bit integers with two byte shuffles (the NF4 code * W_ONE, exact to 3e-5 of a block's absmax) and multiplied
 * with the input quantised to 16 bits per token and block of 64 (steps of 6e-5 of that block's largest value),
 * eight products summed per int32 lane before one conversion to float per block.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "kernels.h"

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

static inline float horizontal_max(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
}

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

/* Prompts: products of many tokens, bound by arithmetic rather than memory.
 *
 * The weights of 32 rows at a time are expanded into bytes, the NF4 values rounded to integers in [-63, 63]
 * (steps of 1/63 of a block's absmax, well inside NF4's own), and the input is quantised to 7 bits (0..127) per
 * token and block of 64 with its own zero point: unlike bitsandbytes, which keeps activations in float.
 * `vpmaddubsw` then multiplies 32 byte pairs per instruction, and with these ranges two of its 16-bit sums add
 * up without overflow before they are widened: faster than the dequantised float32 matrix, and than widening
 * after every instruction as int8 kernels without VNNI do. With AVX512-VNNI (the tiles below) one vpdpbusd
 * replaces the five instructions, on the same integers, and a tile takes four groups of eight rows at once.
 * bench/bench_llm.py times prefills on either. */
#define PROMPT_W_ONE 63.0f
#define PROMPT_X_MAX 127.0f
#define PANEL 32 /* rows expanded at once; the tokens' input is read once per panel */
#define PROMPT_TILE 4

/* x (M, K) -> xu (M, K) in [0, 127] and, per token and block, scale s and zero point z (times s): x ~ (xu - z) s */
static void prompt_quantize_input(const float *x, uint8_t *xu, float *xs, float *xzs, int64_t M, int64_t K,
                                  int threads) {
    const int64_t blocks = K / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t mb = 0; mb < M * blocks; mb++) {
        const float *xb = x + mb * BLOCK;
        __m256 v[8], low, high;
        for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(xb + 8 * i);
        low = high = v[0];
        for (int i = 1; i < 8; i++) { low = _mm256_min_ps(low, v[i]); high = _mm256_max_ps(high, v[i]); }
        const float lo = -horizontal_max(_mm256_sub_ps(_mm256_setzero_ps(), low)), hi = horizontal_max(high);
        float s, z;
        if (hi > lo) { s = (hi - lo) / PROMPT_X_MAX; z = -rintf(lo / s); }
        else { s = lo != 0.f ? fabsf(lo) : 1.f; z = lo < 0.f ? 1.f : 0.f; } /* a constant block: xu 0 or 1 */
        const __m256 inverse = _mm256_set1_ps(1.f / s), zero = _mm256_set1_ps(z);
        __m256i q[8];
        for (int i = 0; i < 8; i++) q[i] = _mm256_cvtps_epi32(_mm256_fmadd_ps(v[i], inverse, zero));
        const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7), top = _mm256_set1_epi8(127);
        for (int i = 0; i < 2; i++) { /* 32 values to bytes, saturated to [0, 127], in their order */
            const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(q[4 * i], q[4 * i + 1]),
                                                      _mm256_packs_epi32(q[4 * i + 2], q[4 * i + 3]));
            _mm256_storeu_si256((__m256i *)(xu + mb * BLOCK + 32 * i),
                                _mm256_min_epu8(_mm256_permutevar8x32_epi32(bytes, order), top));
        }
        xs[mb] = s;
        xzs[mb] = z * s;
    }
}

/* Row r of the matrices side by side: which matrix and which of its rows. */
static inline const nf4_weight *part_of_row(const nf4_weight *parts, int64_t r, int64_t *n) {
    while (r >= parts->rows) { r -= parts->rows; parts++; }
    *n = r;
    return parts;
}

/* Rows r0 .. r0 + 7 as bytes, for every block: 16 vectors of their elements 4q .. 4q + 3 (row j in bytes
 * 4j .. 4j + 3 of vector q), then the rows' block scales / 63 and those times the sum of the block's bytes. */
static void expand_eight_rows(const nf4_weight *parts, int64_t r0, const __m256i table, int8_t *out,
                              float *scales, float *sums) {
    const int64_t K = parts->cols, blocks = K / BLOCK;
    const uint8_t *rows[8];
    const nf4_weight *owner[8];
    int64_t index[8];
    for (int j = 0; j < 8; j++) {
        owner[j] = part_of_row(parts, r0 + j, &index[j]);
        rows[j] = owner[j]->packed + index[j] * (K / 2);
    }
    const __m256i nibble = _mm256_set1_epi8(0x0F), ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    for (int64_t b = 0; b < blocks; b++) {
        __m256i r[16];
        for (int j = 0; j < 8; j++) {
            const __m256i codes = _mm256_loadu_si256((const __m256i *)(rows[j] + b * 32));
            r[j] = _mm256_shuffle_epi8(table, _mm256_and_si256(codes, nibble));                             /* 0..31 */
            r[8 + j] = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(codes, 4), nibble)); /* 32..63 */
        }
        __m256i sum16 = _mm256_setzero_si256();
        for (int half = 0; half < 2; half++) { /* an 8 x 8 transpose of 32-bit groups */
            const __m256i *v = r + 8 * half;
            __m256i t[8], u[8];
            for (int i = 0; i < 4; i++) {
                t[2 * i] = _mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]);
            }
            for (int i = 0; i < 2; i++) {
                u[4 * i] = _mm256_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
                u[4 * i + 1] = _mm256_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
                u[4 * i + 2] = _mm256_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
                u[4 * i + 3] = _mm256_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
            }
            int8_t *o = out + (b * 16 + 8 * half) * 32;
            for (int q = 0; q < 4; q++) {
                const __m256i low = _mm256_permute2x128_si256(u[q], u[4 + q], 0x20);
                const __m256i high = _mm256_permute2x128_si256(u[q], u[4 + q], 0x31);
                _mm256_store_si256((__m256i *)(o + q * 32), low);
                _mm256_store_si256((__m256i *)(o + (q + 4) * 32), high);
                sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(ones8, low));
                sum16 = _mm256_add_epi16(sum16, _mm256_maddubs_epi16(ones8, high));
            }
        }
        int32_t sum[8];
        _mm256_storeu_si256((__m256i *)sum, _mm256_madd_epi16(sum16, ones16));
        for (int j = 0; j < 8; j++) {
            const nf4_weight *w = owner[j];
            const float scale = block_scale(w->qabsmax, w->absmax2, w->code2, w->offset,
                                            index[j] * blocks + b) / PROMPT_W_ONE;
            scales[b * 8 + j] = scale;
            sums[b * 8 + j] = scale * (float)sum[j];
        }
    }
}

/* wide + the products of 8 input bytes (x0: 4 of them in every 32-bit lane, then x1) with 8 rows' 8 weight
 * bytes (w0: 4 per row, then w1), per row and 32-bit lane. */
static inline __attribute__((always_inline)) __m256i eight_bytes_product(__m256i wide, __m256i x0, __m256i w0,
                                                                         __m256i x1, __m256i w1) {
    /* |sum| <= 2 * (2 * 127 * 63) = 32004: two products fit in 16 bits */
    const __m256i pair = _mm256_add_epi16(_mm256_maddubs_epi16(x0, w0), _mm256_maddubs_epi16(x1, w1));
    return _mm256_add_epi32(wide, _mm256_madd_epi16(pair, _mm256_set1_epi16(1)));
}
#define MAX_GROUPS 4 /* groups of 8 rows in one call of the tiles: a panel's */

/* A panel of expanded rows (expand_eight_rows: bytes, then their scales and sums per block), with their bias. */
typedef struct {
    const int8_t *bytes;
    const float *scales, *sums, *bias;
    int64_t K;
} prompt_panel;

#define TILE_FUNCTION prompt_tile
#define TILES_FUNCTION prompt_tiles
#define EIGHT_BYTES_PRODUCT eight_bytes_product
#define FUSED_GROUPS 1
#include "nf4_prompt_tile.h"

/* The same with AVX512-VNNI (on 256-bit vectors): vpdpbusd adds each lane's four byte products into 32 bits in
 * one instruction, where the path above needs five. The integers are the same, so are the outputs. */
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
static inline __attribute__((always_inline)) __m256i eight_bytes_product_vnni(__m256i wide, __m256i x0,
                                                                              __m256i w0, __m256i x1, __m256i w1) {
    return _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(wide, x0, w0), x1, w1);
}
#define TILE_FUNCTION prompt_tile_vnni
#define TILES_FUNCTION prompt_tiles_vnni
#define EIGHT_BYTES_PRODUCT eight_bytes_product_vnni
#define FUSED_GROUPS 4
#include "nf4_prompt_tile.h"
#pragma GCC pop_options

typedef void (*prompt_tiles_fn)(const prompt_panel *, const int64_t *, int, const uint8_t *, const float *,
                                const float *, float *const *, int64_t, int);

/* Whether this CPU can take the VNNI path: 1 (AVX512-VNNI and AVX512-VL) or 0. */
int nf4_prompt_has_vnni(void) {
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl");
}

/* nf4_linear for prompts (see above): y (M, sum of rows) = x (M, K) times the `count` matrices, side by side;
 * or, `gated`, y (M, rows) = silu(x gate^T) * (x up^T) for the two matrices gate and up of one shape (a SiLU-gated
 * MLP), whose panels then hold 16 rows of each: the products never leave the cache (for a long prompt they
 * would be tens of MB a layer, written, faulted in and read again).
 * code: the 16 NF4 values. The rows (of each, gated) must be a multiple of 8. Scratch: xu M * K bytes, xs and
 * xzs M * K / 64 floats. vnni: use the AVX512-VNNI tiles (only where nf4_prompt_has_vnni()). */
void nf4_prompt_linear(const nf4_weight *parts, int64_t count, const float *code, const float *x, float *y,
                       int64_t M, uint8_t *xu, float *xs, float *xzs, int gated, int vnni, int threads) {
    const int64_t K = parts[0].cols, blocks = K / BLOCK;
    int64_t width = 0;
    for (int64_t p = 0; p < count; p++) width += parts[p].rows;
    /* panels: `step` output columns each, from rows r0.. (and, gated, the up matrix's r0.. after them) */
    const int64_t columns = gated ? parts[0].rows : width, step = gated ? PANEL / 2 : PANEL;
    prompt_quantize_input(x, xu, xs, xzs, M, K, threads);
    int8_t bytes[32];
    for (int i = 0; i < 16; i++) bytes[i] = bytes[16 + i] = (int8_t)lrintf(code[i] * PROMPT_W_ONE);
    const __m256i table = _mm256_loadu_si256((const __m256i *)bytes);
    const prompt_tiles_fn tiles = vnni ? prompt_tiles_vnni : prompt_tiles;
#pragma omp parallel num_threads(threads)
    {
        int8_t *panel = aligned_alloc(32, PANEL * K);
        float bias[PANEL], products[PROMPT_TILE * PANEL];
        float *scales = malloc(sizeof(float) * PANEL * blocks), *sums = malloc(sizeof(float) * PANEL * blocks);
#pragma omp for schedule(dynamic, 1)
        for (int64_t r0 = 0; r0 < columns; r0 += step) {
            const int64_t here = columns - r0 < step ? columns - r0 : step, rows = gated ? 2 * here : here;
            for (int64_t e = 0; e < rows; e++) { /* panel row e: which row of the matrices side by side */
                const int64_t row = gated && e >= here ? columns + r0 + e - here : r0 + e;
                if (e % 8 == 0)
                    expand_eight_rows(parts, row, table, panel + e * K, scales + e * blocks, sums + e * blocks);
                int64_t n;
                const nf4_weight *w = part_of_row(parts, row, &n);
                bias[e] = w->bias ? w->bias[n] : 0.f;
            }
            const prompt_panel rows_here = {panel, scales, sums, bias, K};
            for (int64_t m0 = 0; m0 < M; m0 += PROMPT_TILE) {
                const int tokens = M - m0 < PROMPT_TILE ? (int)(M - m0) : PROMPT_TILE;
                const uint8_t *xq = xu + m0 * K;
                const float *ts = xs + m0 * blocks, *tz = xzs + m0 * blocks;
                int64_t rows_of[MAX_GROUPS];
                float *out[MAX_GROUPS];
                int groups = 0;
                if (!gated) {
                    for (int64_t e = 0; e < here; e += 8, groups++) {
                        rows_of[groups] = e;
                        out[groups] = y + m0 * width + r0 + e;
                    }
                    tiles(&rows_here, rows_of, groups, xq, ts, tz, out, width, tokens);
                    continue;
                }
                for (int64_t e = 0; e < 2 * here; e += 8, groups++) { /* the gate rows, then their up rows */
                    rows_of[groups] = e;
                    out[groups] = products + e;
                }
                tiles(&rows_here, rows_of, groups, xq, ts, tz, out, PANEL, tokens);
                for (int t = 0; t < tokens; t++)
                    silu_mul_row(products + PANEL * t, y + (m0 + t) * columns + r0, here);
            }
        }
        free(panel); free(scales); free(sums);
    }
}
