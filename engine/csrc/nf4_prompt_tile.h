/* The prompt kernel's tiles (engine/csrc/nf4_kernel.c), included there once per instruction set: TILES_FUNCTION names the
 * function, EIGHT_BYTES_PRODUCT is the integer step it is built on, and FUSED_GROUPS says how many groups of
 * eight rows share a tile (4 tokens x G groups need 4G sums in registers at once: AVX2 has 16, AVX-512 32). */

/* y[g][t * width + 0..7] = tokens (<= 4) of the quantised input times the eight panel rows from rows[g] on, plus
 * their bias, for g < groups (<= MAX_GROUPS). Each input broadcast serves all the groups. */
static inline __attribute__((always_inline)) void TILE_FUNCTION(const prompt_panel *panel, const int64_t *rows,
                                                              const int groups, const uint8_t *xu,
                                                              const float *xs, const float *xzs, float *const *y,
                                                              int64_t width, const int tokens) {
    const int64_t K = panel->K, blocks = K / BLOCK;
    __m256 acc[PROMPT_TILE][MAX_GROUPS];
    for (int t = 0; t < tokens; t++)
        for (int g = 0; g < groups; g++) acc[t][g] = _mm256_setzero_ps();
    for (int64_t b = 0; b < blocks; b++) {
        __m256i wide[PROMPT_TILE][MAX_GROUPS];
        const int8_t *wb[MAX_GROUPS];
        for (int g = 0; g < groups; g++) {
            wb[g] = panel->bytes + rows[g] * K + b * 16 * 32;
            for (int t = 0; t < tokens; t++) wide[t][g] = _mm256_setzero_si256();
        }
        for (int q = 0; q < 16; q += 2) {
            __m256i w0[MAX_GROUPS], w1[MAX_GROUPS];
            for (int g = 0; g < groups; g++) {
                w0[g] = _mm256_load_si256((const __m256i *)(wb[g] + q * 32));
                w1[g] = _mm256_load_si256((const __m256i *)(wb[g] + q * 32 + 32));
            }
            for (int t = 0; t < tokens; t++) {
                const uint8_t *xq = xu + t * K + b * BLOCK + 4 * q;
                const __m256i x0 = _mm256_set1_epi32(*(const int32_t *)xq);
                const __m256i x1 = _mm256_set1_epi32(*(const int32_t *)(xq + 4));
                for (int g = 0; g < groups; g++) wide[t][g] = EIGHT_BYTES_PRODUCT(wide[t][g], x0, w0[g], x1, w1[g]);
            }
        }
        for (int g = 0; g < groups; g++) {
            const int64_t at = rows[g] * blocks + b * 8;
            const __m256 scale = _mm256_loadu_ps(panel->scales + at), sum = _mm256_loadu_ps(panel->sums + at);
            for (int t = 0; t < tokens; t++) {
                const __m256 product = _mm256_mul_ps(_mm256_cvtepi32_ps(wide[t][g]), scale);
                acc[t][g] = _mm256_fmadd_ps(product, _mm256_set1_ps(xs[t * blocks + b]), acc[t][g]);
                acc[t][g] = _mm256_fnmadd_ps(_mm256_set1_ps(xzs[t * blocks + b]), sum, acc[t][g]);
            }
        }
    }
    for (int g = 0; g < groups; g++) {
        const __m256 shift = _mm256_loadu_ps(panel->bias + rows[g]);
        for (int t = 0; t < tokens; t++) _mm256_storeu_ps(y[g] + t * width, _mm256_add_ps(acc[t][g], shift));
    }
}

/* The tile above for `tokens` (<= 4) and `groups` (<= MAX_GROUPS), FUSED_GROUPS of them at a time, its loops
 * unrolled for each count. */
static void TILES_FUNCTION(const prompt_panel *panel, const int64_t *rows, int groups, const uint8_t *xu,
                           const float *xs, const float *xzs, float *const *y, int64_t width, int tokens) {
#define TILE_TOKENS(G)                                                                                             \
    switch (tokens) {                                                                                              \
    case 4: TILE_FUNCTION(panel, rows + g, G, xu, xs, xzs, y + g, width, 4); break;                               \
    case 3: TILE_FUNCTION(panel, rows + g, G, xu, xs, xzs, y + g, width, 3); break;                               \
    case 2: TILE_FUNCTION(panel, rows + g, G, xu, xs, xzs, y + g, width, 2); break;                               \
    default: TILE_FUNCTION(panel, rows + g, G, xu, xs, xzs, y + g, width, 1);                                     \
    }
    for (int g = 0; g < groups; g += FUSED_GROUPS) {
        const int here = groups - g < FUSED_GROUPS ? groups - g : FUSED_GROUPS;
        if (here == 4) { TILE_TOKENS(4) }
        else if (here == 3) { TILE_TOKENS(3) }
        else if (here == 2) { TILE_TOKENS(2) }
        else { TILE_TOKENS(1) }
    }
#undef TILE_TOKENS
}

#undef TILE_FUNCTION
#undef TILES_FUNCTION
#undef EIGHT_BYTES_PRODUCT
#undef FUSED_GROUPS
