/* The steps of a Llama-family layer around its matrix products, for CPUs with AVX2 and FMA: for one decoded
 * token RMSNorm, rotary embedding, the key/value cache write, attention over the cache, and the SiLU-gated
 * product; for a prompt its causal attention (at the end of this file) and the SiLU-gated product.
 *
 * Each is a handful of torch operations on vectors of a few thousand floats, so in torch a decode step spent
 * more time dispatching them than computing (bench/bench_llm.py's decode speed). Float32 throughout; the
 * results match torch's to float rounding (tests compare the whole forward). engine/forward.py calls these.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* e^x for 8 floats (Cephes' polynomial, as in avx_mathfun): relative error ~1e-7 on the range softmax and SiLU
 * use; -inf and very negative x give 0. */
static inline __m256 exp8(__m256 x) {
    const __m256 one = _mm256_set1_ps(1.f);
    x = _mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f));
    x = _mm256_max_ps(x, _mm256_set1_ps(-88.3762626647949f));
    __m256 fx = _mm256_fmadd_ps(x, _mm256_set1_ps(1.44269504088896341f), _mm256_set1_ps(0.5f));
    fx = _mm256_floor_ps(fx);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    const __m256 z = _mm256_mul_ps(x, x);
    __m256 y = _mm256_set1_ps(1.9875691500E-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073E-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894E-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459E-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201E-1f));
    y = _mm256_fmadd_ps(y, z, _mm256_add_ps(x, one));
    const __m256i exponent = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(exponent));
}

static inline float horizontal_sum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static float dot(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float sum = horizontal_sum8(acc);
    for (; i < n; i++) sum += a[i] * b[i];
    return sum;
}

/* hidden += delta (when delta is given), then normed = weight * hidden / sqrt(mean(hidden^2) + eps). */
void add_rms_norm(float *hidden, const float *delta, const float *weight, float eps, float *normed, int64_t n) {
    if (delta)
        for (int64_t i = 0; i < n; i++) hidden[i] += delta[i];
    const float scale = 1.0f / sqrtf(dot(hidden, hidden, n) / (float)n + eps);
    for (int64_t i = 0; i < n; i++) normed[i] = weight[i] * (hidden[i] * scale);
}

/* out = silu(gate_up[:width]) * gate_up[width:]. */
void silu_mul_row(const float *gate_up, float *out, int64_t width) {
    int64_t i = 0;
    for (; i + 8 <= width; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate_up + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        const __m256 silu = _mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.f), e));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(silu, _mm256_loadu_ps(gate_up + width + i)));
    }
    for (; i < width; i++) out[i] = gate_up[i] / (1.f + expf(-gate_up[i])) * gate_up[width + i];
}

/* rows of out (width) = silu(gate) * up, for rows of gate_up (gate, then up: 2 * width). */
void silu_mul(const float *gate_up, float *out, int64_t width, int64_t rows, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 1)
    for (int64_t r = 0; r < rows; r++) silu_mul_row(gate_up + r * 2 * width, out + r * width, width);
}

/* One new token's attention. qkv: its heads query vectors, then kv_heads keys, then kv_heads values (head_dim
 * each). Queries and keys are rotated (rotate_half convention, cos/sin of the token's position), the key and
 * value stored at `position` of this layer's cache (kv_heads x capacity x head_dim), and each query head attends
 * over positions 0..position of its key/value head. out: heads x head_dim. scores: heads x (position + 1). */
void decode_attention(float *qkv, const float *cos, const float *sin, float *keys, float *values,
                      int64_t position, int64_t capacity, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      float scale, float *out, float *scores, int threads) {
    const int64_t half = head_dim / 2, length = position + 1, group = heads / kv_heads;
    for (int64_t h = 0; h < heads + kv_heads; h++) {
        float *v = qkv + h * head_dim;
        for (int64_t i = 0; i < half; i++) {
            const float a = v[i], b = v[i + half];
            v[i] = a * cos[i] - b * sin[i];
            v[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
    for (int64_t g = 0; g < kv_heads; g++) {
        memcpy(keys + (g * capacity + position) * head_dim, qkv + (heads + g) * head_dim, head_dim * sizeof(float));
        memcpy(values + (g * capacity + position) * head_dim, qkv + (heads + kv_heads + g) * head_dim,
               head_dim * sizeof(float));
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (length * heads >= 4096)
    for (int64_t h = 0; h < heads; h++) {
        const float *query = qkv + h * head_dim;
        const float *k = keys + (h / group) * capacity * head_dim, *v = values + (h / group) * capacity * head_dim;
        float *s = scores + h * length, *o = out + h * head_dim;
        float largest = -INFINITY;
        for (int64_t t = 0; t < length; t++) {
            s[t] = dot(query, k + t * head_dim, head_dim) * scale;
            largest = s[t] > largest ? s[t] : largest;
        }
        __m256 total8 = _mm256_setzero_ps();
        int64_t t = 0;
        for (; t + 8 <= length; t += 8) {
            const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), _mm256_set1_ps(largest)));
            _mm256_storeu_ps(s + t, e);
            total8 = _mm256_add_ps(total8, e);
        }
        float total = horizontal_sum8(total8);
        for (; t < length; t++) {
            s[t] = expf(s[t] - largest);
            total += s[t];
        }
        const float inverse = 1.f / total;
        for (int64_t i = 0; i < head_dim; i++) o[i] = 0.f;
        for (t = 0; t < length; t++) {
            const float p = s[t] * inverse;
            const float *row = v + t * head_dim;
            int64_t i = 0;
            for (; i + 8 <= head_dim; i += 8)
                _mm256_storeu_ps(o + i, _mm256_fmadd_ps(_mm256_set1_ps(p), _mm256_loadu_ps(row + i),
                                                        _mm256_loadu_ps(o + i)));
            for (; i < head_dim; i++) o[i] += p * row[i];
        }
    }
}

/* Prompts: causal attention of `new` queries at positions start .. start + new - 1 over keys and values
 * 0 .. start + new - 1 of one layer's cache (kv_heads x capacity x head_dim), flash-attention style: blocks of
 * 32 queries of one head against blocks of 64 keys with a running softmax, so a block of scores never leaves
 * the cache, and no block above the diagonal is computed, where torch's causal CPU kernel saved only part of
 * that work (bench/bench_llm.py times prefills). Queries: row r of head h at
 * q[r * q_stride + h * head_dim]; out: new x heads x head_dim. Needs head_dim a multiple of 16, at most 256. */
#define QUERY_BLOCK 32
#define KEY_BLOCK 64

/* c (n rows, `columns` of them, a multiple of 16) = a (n rows, `depth` each) times b (depth rows), plus c itself
 * when `accumulate`; sixteen columns at a time. n is a constant where inlined, so the sums stay in registers. */
static inline __attribute__((always_inline)) void rows_times(const float *a, int64_t a_stride, const float *b,
                                                             int64_t b_stride, int64_t depth, float *c,
                                                             int64_t c_stride, int64_t columns, int accumulate,
                                                             const int n) {
    for (int64_t j = 0; j < columns; j += 16) {
        __m256 sum[4][2];
        for (int i = 0; i < n; i++) {
            sum[i][0] = accumulate ? _mm256_loadu_ps(c + i * c_stride + j) : _mm256_setzero_ps();
            sum[i][1] = accumulate ? _mm256_loadu_ps(c + i * c_stride + j + 8) : _mm256_setzero_ps();
        }
        for (int64_t e = 0; e < depth; e++) {
            const __m256 b0 = _mm256_loadu_ps(b + e * b_stride + j), b1 = _mm256_loadu_ps(b + e * b_stride + j + 8);
            for (int i = 0; i < n; i++) {
                const __m256 x = _mm256_broadcast_ss(a + i * a_stride + e);
                sum[i][0] = _mm256_fmadd_ps(x, b0, sum[i][0]);
                sum[i][1] = _mm256_fmadd_ps(x, b1, sum[i][1]);
            }
        }
        for (int i = 0; i < n; i++) {
            _mm256_storeu_ps(c + i * c_stride + j, sum[i][0]);
            _mm256_storeu_ps(c + i * c_stride + j + 8, sum[i][1]);
        }
    }
}

/* rows_times for `rows` rows, four at a time. */
static void block_product(const float *a, int64_t a_stride, const float *b, int64_t b_stride, int64_t depth,
                          float *c, int64_t c_stride, int64_t columns, int accumulate, int rows) {
    int r = 0;
    for (; r + 4 <= rows; r += 4)
        rows_times(a + r * a_stride, a_stride, b, b_stride, depth, c + r * c_stride, c_stride, columns, accumulate, 4);
    for (; r < rows; r++)
        rows_times(a + r * a_stride, a_stride, b, b_stride, depth, c + r * c_stride, c_stride, columns, accumulate, 1);
}

void prefill_attention(const float *q, int64_t q_stride, const float *keys, const float *values, int64_t start,
                       int64_t new, int64_t capacity, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       float scale, float *out, int threads) {
    const int64_t end = start + new, group = heads / kv_heads, d = head_dim;
    const int64_t width = (end + KEY_BLOCK - 1) / KEY_BLOCK * KEY_BLOCK; /* keys, padded to whole blocks */
    /* Keys transposed block by block (d x KEY_BLOCK each), so that a block of scores is a product of row
     * vectors read one after the other. */
    float *kt = aligned_alloc(32, sizeof(float) * kv_heads * d * width);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t g = 0; g < kv_heads; g++) {
        float *t = kt + g * d * width;
        for (int64_t j = 0; j < width; j++) {
            float *column = t + (j / KEY_BLOCK) * d * KEY_BLOCK + j % KEY_BLOCK;
            for (int64_t e = 0; e < d; e++) column[e * KEY_BLOCK] = j < end ? keys[(g * capacity + j) * d + e] : 0.f;
        }
    }
    const int64_t query_blocks = (new + QUERY_BLOCK - 1) / QUERY_BLOCK;
#pragma omp parallel num_threads(threads)
    {
        float qb[QUERY_BLOCK * 256], s[QUERY_BLOCK * KEY_BLOCK], o[QUERY_BLOCK * 256];
        float largest[QUERY_BLOCK], total[QUERY_BLOCK];
        /* The last query blocks have the most keys: they go first, so that the threads finish together. */
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < heads * query_blocks; item++) {
            const int64_t h = item % heads, block = query_blocks - 1 - item / heads, g = h / group;
            const int64_t r0 = block * QUERY_BLOCK;
            const int rows = new - r0 < QUERY_BLOCK ? (int)(new - r0) : QUERY_BLOCK;
            for (int r = 0; r < rows; r++) {
                for (int64_t e = 0; e < d; e++) qb[r * d + e] = q[(r0 + r) * q_stride + h * d + e] * scale;
                largest[r] = -INFINITY;
                total[r] = 0.f;
            }
            for (int64_t i = 0; i < rows * d; i++) o[i] = 0.f;
            const int64_t first = start + r0, last = first + rows - 1; /* the block's query positions */
            const float *k = kt + g * d * width, *v = values + g * capacity * d;
            for (int64_t k0 = 0; k0 <= last; k0 += KEY_BLOCK) {
                const int keys_here = last + 1 - k0 < KEY_BLOCK ? (int)(last + 1 - k0) : KEY_BLOCK;
                /* scores (rows x KEY_BLOCK) = queries times this block of transposed keys */
                block_product(qb, d, k + k0 * d, KEY_BLOCK, d, s, KEY_BLOCK, (keys_here + 15) / 16 * 16, 0, rows);
                for (int r = 0; r < rows; r++) {
                    float *row = s + r * KEY_BLOCK;
                    /* keys k0 + j for j < visible are at or before this query's position */
                    const int64_t before = first + r + 1 - k0;
                    const int visible = before < 0 ? 0 : before < keys_here ? (int)before : keys_here;
                    for (int j = visible; j < KEY_BLOCK; j++) row[j] = -INFINITY;
                    float high = largest[r];
                    for (int j = 0; j < visible; j++) high = row[j] > high ? row[j] : high;
                    const float shrink = expf(largest[r] - high); /* 0 on the first block: -inf - finite */
                    largest[r] = high;
                    __m256 sum = _mm256_setzero_ps();
                    for (int j = 0; j < KEY_BLOCK; j += 8) {
                        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(row + j), _mm256_set1_ps(high)));
                        _mm256_storeu_ps(row + j, e);
                        sum = _mm256_add_ps(sum, e);
                    }
                    total[r] = total[r] * shrink + horizontal_sum8(sum);
                    if (shrink != 1.f)
                        for (int64_t e = 0; e < d; e++) o[r * d + e] *= shrink;
                }
                /* o += probabilities times this block's values */
                block_product(s, KEY_BLOCK, v + k0 * d, d, keys_here, o, d, d, 1, rows);
            }
            for (int r = 0; r < rows; r++) {
                const float inverse = 1.f / total[r];
                for (int64_t e = 0; e < d; e++) out[((r0 + r) * heads + h) * d + e] = o[r * d + e] * inverse;
            }
        }
    }
    free(kt);
}
