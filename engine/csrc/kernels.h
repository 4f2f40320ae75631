/* The kernels' library as its callers see it: every function it exports and the one structure they take.
 * The one place these are declared: nf4_kernel.c and decode_ops.c include it (so the compiler holds each
 * definition to it), and engine/native.py's ctypes declarations are checked against it
 * (tests/engine/test_native_kernels.py parses this file). Documentation sits with each definition. */
#ifndef KBCHAT_KERNELS_H
#define KBCHAT_KERNELS_H

#include <stdint.h>

/* One weight matrix in the kernel's layout (nf4_kernel.c describes it; engine/nf4_cpu.py fills it). */
typedef struct {
    const uint8_t *packed;  /* rows * cols / 2 bytes, blocks of 64 */
    const uint8_t *qabsmax; /* rows * cols / 64 */
    const float *absmax2;   /* one per 256 blocks */
    const float *code2;     /* 256 values */
    const float *bias;      /* rows, or NULL */
    const uint8_t *table;   /* 16 low bytes then 16 high bytes of the int16 NF4 code * W_ONE */
    float offset;
    int64_t rows, cols;
} nf4_weight;

/* nf4_kernel.c */
void nf4_linear(const nf4_weight *parts, int64_t count, const float *x, float *y, int64_t M, int16_t *xq,
                float *xscale, int threads);
void nf4_prompt_linear(const nf4_weight *parts, int64_t count, const float *code, const float *x, float *y,
                       int64_t M, uint8_t *xu, float *xs, float *xzs, int gated, int vnni, int threads);
int nf4_prompt_has_vnni(void);
void nf4_dequantize(const nf4_weight *w, const float *code, float *out, int threads);
void nf4_encode(const float *w, int64_t n, const float *absmax, const float *midpoints, uint8_t *packed,
                int threads);

/* decode_ops.c */
void add_rms_norm(float *hidden, const float *delta, const float *weight, float eps, float *normed, int64_t n);
void silu_mul_row(const float *gate_up, float *out, int64_t width);
void silu_mul(const float *gate_up, float *out, int64_t width, int64_t rows, int threads);
void decode_attention(float *qkv, const float *cos, const float *sin, float *keys, float *values,
                      int64_t position, int64_t capacity, int64_t heads, int64_t kv_heads, int64_t head_dim,
                      float scale, float *out, float *scores, int threads);
void prefill_attention(const float *q, int64_t q_stride, const float *keys, const float *values, int64_t start,
                       int64_t new, int64_t capacity, int64_t heads, int64_t kv_heads, int64_t head_dim,
                       float scale, float *out, int threads);

#endif
