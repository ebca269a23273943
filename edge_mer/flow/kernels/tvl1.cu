// Fused CUDA kernels of the flow stage: colour conversion and face crop, coarse-to-fine
// TV-L1 optical flow, optical strain and the model-input normalisation.
//
// The specification is edge_mer/flow/reference.py (numpy); every kernel below names the
// reference function it implements, and follows it step for step: the same pyramid sizes
// and resampling positions, the same bicubic filter (Keys, a = -0.75) clamped at the
// border, the same loop structure and stopping rule. Results differ from the reference
// only by float32 rounding (divisions are products with reciprocals; the dual step's square
// roots and reciprocals are the GPU's approximate ones) and summation order (the stopping
// test can then fire one iteration earlier or later).
//
// Only device code: the host driver (pycuda) allocates the buffers, computes the pyramid
// sizes with reference.level_shapes and launches, per pair:
//   tvl1_pre                                   once
//   tvl1_downsample                            levels - 1 times (both images, z = 2)
//   per level, coarsest first:
//     tvl1_upsample_flow                       unless coarsest
//     tvl1_centered_gradient                   once
//     tvl1_warp, tvl1_solve                    warps times (tvl1_solve resets p on the first;
//                                              or tvl1_solve_bands, the same in another layout)
//   or, with thread block clusters, the pyramid and every level whose state fits in the
//   cluster's shared memory (all of the above) in one launch, the rest as above:
//     tvl1_levels_cluster or _cluster16        once
//   tvl1_epilogue                              once
// Images are planar float32, rows dense (pitch = width); several pairs run side by side
// through blockIdx.z and the *_stride arguments (elements between consecutive planes of the
// same kind), except in the solve's grid layouts, whose barrier holds one pair per launch.
//
// Build: nvcc -ptx -arch=compute_72 (Xavier, CUDA <= 12), compute_87 (Orin), ... or pycuda's
// SourceModule(source, no_extern_c=True, include_dirs=[this folder]): the entry points are
// extern "C" already, and tvl1_gpu.h comes from this folder. Needs nothing newer than sm_72
// (warp shuffles, __nanosleep from sm_70) and no host code, except tvl1_levels_cluster(16), whose
// body (thread block clusters) is compiled for sm_90 and newer only: below that it is an
// empty kernel that the driver never launches.

#include "tvl1_gpu.h"  // the GPU's own instructions (timer, approximate maths, clusters)

#define TVL1_FLT_EPSILON 1.192092896e-07f
#define TVL1_CUBIC_A (-0.75f)
#define TVL1_MAX_WARPS 32  // blockDim.x of tvl1_solve: a multiple of 32, at most 1024

// ---------------------------------------------------------------------------------------
// helpers

__device__ __forceinline__ int clampi(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

__device__ __forceinline__ float clampf(float v, float lo, float hi) { return fminf(fmaxf(v, lo), hi); }

// reference.gray_u8: OpenCV's fixed-point BGR -> grey, bit-exact with cv2.cvtColor
__device__ __forceinline__ float gray_at(const unsigned char* __restrict__ frame, int pitch, int channels,
                                         int x, int y) {
    const unsigned char* p = frame + (size_t)y * pitch + (size_t)x * channels;
    if (channels == 1) return (float)p[0];
    int v = (3735 * (int)p[0] + 19235 * (int)p[1] + 9798 * (int)p[2] + (1 << 14)) >> 15;
    return (float)v;
}

// reference._cubic_weights: Keys cubic, a = -0.75, taps at -1, 0, 1, 2
__device__ __forceinline__ void cubic_weights(float t, float w[4]) {
    const float a = TVL1_CUBIC_A;
    float t1 = t + 1.0f;
    float s = 1.0f - t;
    w[0] = ((a * t1 - 5.0f * a) * t1 + 8.0f * a) * t1 - 4.0f * a;
    w[1] = ((a + 2.0f) * t - (a + 3.0f)) * t * t + 1.0f;
    w[2] = ((a + 2.0f) * s - (a + 3.0f)) * s * s + 1.0f;
    w[3] = 1.0f - w[0] - w[1] - w[2];
}

// reference.resize_bilinear at one output pixel: source position (d + 0.5) * f - 0.5, clamped
__device__ float resize_at(const float* __restrict__ src, int sw, int sh, int x, int y, float fx, float fy) {
    float sx = clampf((x + 0.5f) * fx - 0.5f, 0.0f, (float)(sw - 1));
    float sy = clampf((y + 0.5f) * fy - 0.5f, 0.0f, (float)(sh - 1));
    int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
    float ax = sx - x0, ay = sy - y0;
    int x1 = min(x0 + 1, sw - 1), y1 = min(y0 + 1, sh - 1);
    float top = src[y0 * sw + x0] * (1.0f - ax) + src[y0 * sw + x1] * ax;
    float bottom = src[y1 * sw + x0] * (1.0f - ax) + src[y1 * sw + x1] * ax;
    return top * (1.0f - ay) + bottom * ay;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple of 32.
// Contains __syncthreads(): global writes made before the call are visible to the block after it.
__device__ float block_sum(float v, float* scratch /* TVL1_MAX_WARPS + 1 */) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    if (warp == 0) {
        int warps = blockDim.x >> 5;
        float w = lane < warps ? scratch[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) w += __shfl_down_sync(0xffffffffu, w, o);
        if (lane == 0) scratch[TVL1_MAX_WARPS] = w;
    }
    __syncthreads();
    return scratch[TVL1_MAX_WARPS];
}

__device__ __forceinline__ void exchange(float& a, float& b) {  // a, b = min, max
    float lo = fminf(a, b);
    b = fmaxf(a, b);
    a = lo;
}

// Sort K values a[0], a[s], ..., a[(K-1)s] in place (K = 3, 4 or 5; the optimal networks).
template <int K>
__device__ __forceinline__ void sort_strided(float* a, int s) {
    if (K == 3) {
        exchange(a[0], a[s]); exchange(a[s], a[2 * s]); exchange(a[0], a[s]);
    } else if (K == 4) {
        exchange(a[0], a[s]); exchange(a[2 * s], a[3 * s]); exchange(a[0], a[2 * s]);
        exchange(a[s], a[3 * s]); exchange(a[s], a[2 * s]);
    } else {
        exchange(a[0], a[s]); exchange(a[3 * s], a[4 * s]); exchange(a[2 * s], a[4 * s]);
        exchange(a[2 * s], a[3 * s]); exchange(a[s], a[4 * s]); exchange(a[0], a[3 * s]);
        exchange(a[0], a[2 * s]); exchange(a[s], a[3 * s]); exchange(a[s], a[2 * s]);
    }
}

// Median of a K x K window (K = 3 or 5, row-major in v; v is reordered). Rows, then columns,
// are sorted; then v[i][j] has at least (i+1)(j+1) values <= it and (K-i)(K-j) >= it, which
// leaves as candidates for the median only those with both counts at most (K*K+1)/2: the
// anti-diagonal for K = 3, whose median is the window's; for K = 5 the 13 values on the
// anti-diagonals i + j = 3, 4, 5 (6 values of the 25 are certainly below them, 6 above). Those
// three are sorted too, each from its top right end; then the median of v[9], v[12] and v[15]
// is the window's. 21 and 112 exchanges instead of the 30 and 234 of a plain selection, of whose
// minima and maxima the compiler keeps only those used (188 of 224 for K = 5). That these
// networks give the median is checked over every input of zeros and ones, which by the 0-1
// principle covers every input (tests/test_flow_emulate.py).
template <int K>
__device__ __forceinline__ float window_median(float v[K * K]) {
#pragma unroll
    for (int r = 0; r < K; ++r) sort_strided<K>(v + r * K, 1);
#pragma unroll
    for (int c = 0; c < K; ++c) sort_strided<K>(v + c, K);
    if (K == 5) {
        sort_strided<4>(v + 3, 4);  // v[3], v[7], v[11], v[15]
        sort_strided<5>(v + 4, 4);  // v[4], v[8], v[12], v[16], v[20]
        sort_strided<4>(v + 9, 4);  // v[9], v[13], v[17], v[21]
    }
    const int lo = K == 3 ? 2 : 9, mid = K == 3 ? 4 : 12, hi = K == 3 ? 6 : 15;
    exchange(v[lo], v[mid]);
    exchange(v[mid], v[hi]);
    exchange(v[lo], v[mid]);
    return v[mid];
}

// The K x K window of pixel (x, y) of a w x h plane, border replicated: value(k, yy, xx) for each of
// its pixels, k = its place in row-major order.
template <int K, class Value>
__device__ __forceinline__ void window_at(int w, int h, int x, int y, Value value) {
    const int r = K / 2;
    int xs[K];
#pragma unroll
    for (int dx = 0; dx < K; ++dx) xs[dx] = clampi(x + dx - r, 0, w - 1);
#pragma unroll
    for (int dy = 0; dy < K; ++dy) {
        const int yy = clampi(y + dy - r, 0, h - 1);
#pragma unroll
        for (int dx = 0; dx < K; ++dx) value(dy * K + dx, yy, xs[dx]);
    }
}

// reference.median_filter at pixel (x, y) of a dense w x h plane: K x K window, border replicated
template <int K>
__device__ float median_at(const float* plane, int w, int h, int x, int y) {
    float v[K * K];
    window_at<K>(w, h, x, y, [&](int k, int yy, int xx) { v[k] = plane[yy * w + xx]; });
    return window_median<K>(v);
}

// ---------------------------------------------------------------------------------------
// (a) reference.crop_gray (with reference.gray_u8), for the onset and the apex frame at once.
// staged: what the driver copies to the device per pair, TVL1_PRE_HEADER bytes of parameters, then
// the windows of the two width x height frames that the crop reads (the driver copies only those):
//   int [0] width, [1] height, [2] ox, [3] oy (the windows' first column and row in the frame),
//       [4] pitch (bytes between a window's rows), [5] channels, [6] [7] where the onset's and the
//       apex's windows begin (bytes from staged); float [8..13] the 2x3 crop -> frame matrix (the
//       inverse of the aligner's frame -> crop matrix).
// Taking its parameters from device memory, the launch is the same for every pair: a CUDA graph holds it.
// grid (ceil(S/16), ceil(S/16), 2), block (16, 16); out: (2, S, S), onset then apex.
#define TVL1_PRE_HEADER 64
extern "C" __global__ void tvl1_pre(const unsigned char* __restrict__ staged, int size, float* __restrict__ out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= size || y >= size) return;
    const int* info = reinterpret_cast<const int*>(staged);
    const int width = info[0], height = info[1], ox = info[2], oy = info[3], pitch = info[4], channels = info[5];
    const unsigned char* frame = staged + info[6 + blockIdx.z];
    const float* inv = reinterpret_cast<const float*>(info + 8);
    const float m00 = inv[0], m01 = inv[1], m02 = inv[2], m10 = inv[3], m11 = inv[4], m12 = inv[5];
    float sx = m00 * x + m01 * y + m02;
    float sy = m10 * x + m11 * y + m12;
    float fx0 = floorf(sx), fy0 = floorf(sy);
    float ax = sx - fx0, ay = sy - fy0;
    int xa = clampi((int)fx0, 0, width - 1), xb = clampi((int)fx0 + 1, 0, width - 1);
    int ya = clampi((int)fy0, 0, height - 1), yb = clampi((int)fy0 + 1, 0, height - 1);
    xa -= ox; xb -= ox; ya -= oy; yb -= oy;  // into the window the frames hold
    float top = gray_at(frame, pitch, channels, xa, ya) * (1.0f - ax) + gray_at(frame, pitch, channels, xb, ya) * ax;
    float bottom = gray_at(frame, pitch, channels, xa, yb) * (1.0f - ax) + gray_at(frame, pitch, channels, xb, yb) * ax;
    out[(size_t)blockIdx.z * size * size + y * size + x] = rintf(top * (1.0f - ay) + bottom * ay);
}

// (b) reference.pyramid: one level from the previous one, factor = 1 / scale_step.
// grid (ceil(dw/16), ceil(dh/16), planes), block (16, 16).
extern "C" __global__ void tvl1_downsample(const float* __restrict__ src, int sw, int sh, int src_stride,
                                           float* __restrict__ dst, int dw, int dh, int dst_stride, float factor) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dw || y >= dh) return;
    const float* s = src + (size_t)blockIdx.z * src_stride;
    dst[(size_t)blockIdx.z * dst_stride + y * dw + x] = resize_at(s, sw, sh, x, y, factor, factor);
}

// reference.centered_gradient of the w x h plane s at (x, y)
__device__ __forceinline__ void gradient_at(const float* s, int w, int h, int x, int y, float& gx, float& gy) {
    int xl = max(x - 1, 0), xr = min(x + 1, w - 1);
    int yu = max(y - 1, 0), yd = min(y + 1, h - 1);
    gx = 0.5f * (s[y * w + xr] - s[y * w + xl]);
    gy = 0.5f * (s[yd * w + x] - s[yu * w + x]);
}

// (c1) reference.centered_gradient of I1, once per level. grid (ceil(w/16), ceil(h/16), pairs).
extern "C" __global__ void tvl1_centered_gradient(const float* __restrict__ img, int w, int h, int stride,
                                                  float* __restrict__ gx, float* __restrict__ gy) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    size_t base = (size_t)blockIdx.z * stride;
    gradient_at(img + base, w, h, x, y, gx[base + y * w + x], gy[base + y * w + x]);
}

// reference.warp_bicubic of (I1, dI1/dx, dI1/dy) at (x, y) + (f1, f2), then reference.data_term
// with I0's value there: the solve's constants at that pixel, (wx, wy, 1 / grad, rho_c) with
// grad = wx^2 + wy^2, its reciprocal correctly rounded and 0 where grad <= FLT_EPSILON
// (threshold_at's division by grad, made once per warp instead of once per iteration).
// at(t): the three images' values at pixel t of the w x h planes, in x, y, z.
template <class Sample>
__device__ __forceinline__ float4 warp_sampled(Sample at, int w, int h, int x, int y, float f1, float f2,
                                               float i0v) {
    float sx = x + f1, sy = y + f2;
    float x0 = floorf(sx), y0 = floorf(sy);
    float wx[4], wy[4];
    cubic_weights(sx - x0, wx);
    cubic_weights(sy - y0, wy);
    int xi[4], yi[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        xi[k] = clampi((int)x0 + k - 1, 0, w - 1);
        yi[k] = clampi((int)y0 + k - 1, 0, h - 1);
    }
    float vw = 0.0f, vx = 0.0f, vy = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float rw = 0.0f, rx = 0.0f, ry = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const float4 v = at(yi[j] * w + xi[k]);
            rw += v.x * wx[k];
            rx += v.y * wx[k];
            ry += v.z * wx[k];
        }
        vw += rw * wy[j];
        vx += rx * wy[j];
        vy += ry * wy[j];
    }
    float grad = vx * vx + vy * vy;
    return make_float4(vx, vy, grad > TVL1_FLT_EPSILON ? __frcp_rn(grad) : 0.0f, vw - vx * f1 - vy * f2 - i0v);
}

// warp_sampled from three planes (a: I1, b: dI1/dx, c: dI1/dy)
__device__ __forceinline__ float4 warp_at(const float* a, const float* b, const float* c, int w, int h, int x, int y,
                                          float f1, float f2, float i0v) {
    return warp_sampled([&](int t) { return make_float4(a[t], b[t], c[t], 0.0f); }, w, h, x, y, f1, f2, i0v);
}

// (c2) reference.warp_bicubic of (I1, dI1/dx, dI1/dy) at x + u, then reference.data_term.
// grid (ceil(w/16), ceil(h/16), pairs).
extern "C" __global__ void tvl1_warp(const float* __restrict__ i0, const float* __restrict__ i1,
                                     const float* __restrict__ i1x, const float* __restrict__ i1y,
                                     const float* __restrict__ u1, const float* __restrict__ u2, int w, int h, int stride,
                                     float* __restrict__ i1wx, float* __restrict__ i1wy,
                                     float* __restrict__ igrad, float* __restrict__ rho_c) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    size_t i = (size_t)blockIdx.z * stride + y * w + x;
    float4 c = warp_at(i1 + blockIdx.z * stride, i1x + blockIdx.z * stride, i1y + blockIdx.z * stride, w, h, x, y,
                       u1[i], u2[i], i0[i]);
    i1wx[i] = c.x;
    i1wy[i] = c.y;
    igrad[i] = c.z;
    rho_c[i] = c.w;
}

// Barrier over every block of the launch, for the multi-block solve (the pattern of
// cooperative groups' grid sync): each block arrives once; the last to arrive resets the
// count and advances the generation the others wait on. Every block must be resident at
// once: the driver launches at most one block per multiprocessor, each small enough to fit,
// and one pair per launch (the barrier counts gridDim.x blocks).
// barrier[0]: arrivals (0 between launches); barrier[1]: generation; barrier[2]: set to 1
// when a wait gave up after TVL1_BARRIER_TIMEOUT_NS (a block that never ran). From then on
// no barrier of the launch waits (the launch ends quickly, its results void) and the driver
// reports an error and resets the three words, instead of the GPU hanging.
#define TVL1_BARRIER_TIMEOUT_NS 1000000000ull


__device__ void grid_sync(unsigned* barrier) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned* state = barrier;
        if (state[2] == 0u) {
            unsigned generation = state[1];
            __threadfence();
            if (atomicAdd(&barrier[0], 1u) == gridDim.x - 1) {
                atomicExch(&barrier[0], 0u);
                __threadfence();
                atomicAdd(&barrier[1], 1u);
            } else {
                unsigned long long start = tvl1_now_ns();
                while (state[1] == generation && state[2] == 0u) {
                    if (tvl1_now_ns() - start > TVL1_BARRIER_TIMEOUT_NS) {
                        state[2] = 1u;
                        break;
                    }
                    __nanosleep(32);
                }
            }
        }
        __threadfence();
    }
    __syncthreads();
}

// all threads of the pair: its block (parts == 1) or its blocks (grid_sync)
__device__ __forceinline__ void sync_pair(int parts, unsigned* barrier) {
    if (parts > 1) grid_sync(barrier);
    else __syncthreads();
}

// reference.median_filter of both flow components at one pixel (median = 3 or 5)
__device__ __forceinline__ void median_pair(int median, const float* u1, const float* u2, int w, int h, int x, int y,
                                            float& m1, float& m2) {
    if (median == 3) {
        m1 = median_at<3>(u1, w, h, x, y);
        m2 = median_at<3>(u2, w, h, x, y);
    } else {
        m1 = median_at<5>(u1, w, h, x, y);
        m2 = median_at<5>(u2, w, h, x, y);
    }
}

// reference.threshold_step at one pixel: v from the flow u there and warp_at's constants c; grad
// again as wx^2 + wy^2 for the bounds, the division by it a product with its reciprocal (at most
// an ulp apart), selections instead of branches
__device__ __forceinline__ float2 threshold_at(float4 c, float2 u, float l_t) {
    float rho = c.w + c.x * u.x + c.y * u.y;
    float bound = l_t * (c.x * c.x + c.y * c.y);
    float k = -rho * c.z;
    k = rho > bound ? -l_t : k;
    k = rho < -bound ? l_t : k;
    return make_float2(u.x + k * c.x, u.y + k * c.y);
}

// phase 1 at pixel i (x, y) of the flow (a, b) in dense planes of width w: threshold_at,
// reference.divergence of the dual p and u = v + theta div p; the new flow in (n1, n2)
__device__ __forceinline__ void primal_at(int i, int x, int y, int w, float a, float b,
                                          const float* __restrict__ i1wx, const float* __restrict__ i1wy,
                                          const float* __restrict__ igrad, const float* __restrict__ rho_c,
                                          const float* p11, const float* p12, const float* p21, const float* p22,
                                          float l_t, float theta, float& n1, float& n2) {
    float2 v = threshold_at(make_float4(i1wx[i], i1wy[i], igrad[i], rho_c[i]), make_float2(a, b), l_t);
    float div1 = p11[i] + p12[i], div2 = p21[i] + p22[i];
    if (x > 0) { div1 -= p11[i - 1]; div2 -= p21[i - 1]; }
    if (y > 0) { div1 -= p12[i - w]; div2 -= p22[i - w]; }
    n1 = v.x + theta * div1;
    n2 = v.y + theta * div2;
}


// reference.project_dual at one pixel: the new dual from the old one, s = (p11, p21, p12, p22) and
// the result in that order, and the forward differences of the new flow. The gradient norms and
// the two reciprocals that replace the four divisions are the GPU's approximate ones (the dual's
// rescaling by 1 / (1 + taut |grad u|), a number in (0, 1]).
__device__ __forceinline__ float4 project_dual(float4 s, float u1x, float u1y, float u2x, float u2y, float taut) {
    float r1 = rcp_approx(1.0f + taut * sqrt_approx(u1x * u1x + u1y * u1y));
    float r2 = rcp_approx(1.0f + taut * sqrt_approx(u2x * u2x + u2y * u2y));
    return make_float4((s.x + taut * u1x) * r1, (s.y + taut * u2x) * r2, (s.z + taut * u1y) * r1,
                       (s.w + taut * u2y) * r2);
}

// phase 2 at pixel i of dense planes: project_dual; reads s*, writes d* (the same buffers in
// tvl1_solve, the other copy in tvl1_solve_bands)
__device__ __forceinline__ void dual_at(int i, float u1x, float u1y, float u2x, float u2y, float taut,
                                        const float* s11, const float* s12, const float* s21, const float* s22,
                                        float* d11, float* d12, float* d21, float* d22) {
    float4 q = project_dual(make_float4(s11[i], s21[i], s12[i], s22[i]), u1x, u1y, u2x, u2y, taut);
    d11[i] = q.x;
    d21[i] = q.y;
    d12[i] = q.z;
    d22[i] = q.w;
}

// phase 2 at pixel i (column x) of the flow (u1, u2): reference.forward_gradient, then
// dual_at. below1, below2: the row under pixel i (its first pixel), wherever it lives, or
// nullptr on the image's last row.
__device__ __forceinline__ void dual_step(int i, int x, int w, const float* u1, const float* u2,
                                          const float* below1, const float* below2, float taut,
                                          const float* s11, const float* s12, const float* s21, const float* s22,
                                          float* d11, float* d12, float* d21, float* d22) {
    float a = u1[i], b = u2[i];
    float u1x = x < w - 1 ? u1[i + 1] - a : 0.0f;
    float u2x = x < w - 1 ? u2[i + 1] - b : 0.0f;
    float u1y = below1 ? below1[x] - a : 0.0f;
    float u2y = below2 ? below2[x] - b : 0.0f;
    dual_at(i, u1x, u1y, u2x, u2y, taut, s11, s12, s21, s22, d11, d12, d21, d22);
}

// The stopping sum of a pair: this block's sum (block_sum) when it is alone, else every
// block's sum through `sums` (one slot per block of the launch) after a grid barrier, added
// in the same order by every thread of every block.
__device__ __forceinline__ float pair_sum(float block_total, int parts, int pair, float* sums, unsigned* barrier) {
    if (parts == 1) return block_total;
    if (threadIdx.x == 0) sums[blockIdx.x] = block_total;
    grid_sync(barrier);
    float total = 0.0f;
    for (int k = 0; k < parts; ++k) total += sums[pair * parts + k];
    return total;
}

// (d, e) reference.solve_warp, fused: all outer x inner iterations of one warp in one launch,
// the state in global memory (it stays in L2 at these sizes: at S = 112 the six state
// planes alone take 301 KB, far above a block's shared memory) and a barrier between the
// phases, which need neighbours written by other threads:
//   median:  reference.median_filter of u (into tmp, then back), before every outer iteration
//   phase 1: reference.threshold_step + reference.divergence + u = v + theta div p, and the
//            squared update summed over the pair (the stopping test)
//   phase 2: reference.forward_gradient + reference.project_dual
// Two layouts of the same loop, chosen by the driver (measured in benchmarks/flow.py):
//   parts = 1: one block per pair, __syncthreads() between phases;
//   parts > 1: `parts` blocks per pair (blockIdx.x = pair * parts + part) sharing its pixels,
//              grid_sync() between phases, the stopping sum through partials[gridDim.x].
// Every thread of every block sums the same numbers in the same order, so all of them leave
// the loops at the same iteration (which the barriers need).
// reset_dual = 1 on the first warp of a level (reference.solve_level starts p at 0).
// grid (pairs * parts), block (32..1024, a multiple of 32).
extern "C" __global__ void tvl1_solve(float* __restrict__ u1, float* __restrict__ u2,
                                      float* __restrict__ p11, float* __restrict__ p12,
                                      float* __restrict__ p21, float* __restrict__ p22,
                                      float* __restrict__ tmp1, float* __restrict__ tmp2,
                                      const float* __restrict__ i1wx, const float* __restrict__ i1wy,
                                      const float* __restrict__ igrad, const float* __restrict__ rho_c,
                                      int w, int h, int stride, float l_t, float theta, float taut, float stop,
                                      int outer_iterations, int inner_iterations, int median, int reset_dual,
                                      int parts, unsigned* __restrict__ barrier, float* __restrict__ partials) {
    __shared__ float scratch[TVL1_MAX_WARPS + 1];
    const int n = w * h;
    const int pair = blockIdx.x / parts, part = blockIdx.x % parts;
    const int first = part * blockDim.x + threadIdx.x, step = parts * blockDim.x;
    const size_t base = (size_t)pair * stride;
    u1 += base; u2 += base; p11 += base; p12 += base; p21 += base; p22 += base;
    tmp1 += base; tmp2 += base; i1wx += base; i1wy += base; igrad += base; rho_c += base;

    if (reset_dual) {
        for (int i = first; i < n; i += step) p11[i] = p12[i] = p21[i] = p22[i] = 0.0f;
        sync_pair(parts, barrier);
    }
    float error = __int_as_float(0x7f800000);  // +inf; identical in every thread: see above
    for (int outer = 0; outer < outer_iterations && error > stop; ++outer) {
        if (median > 1) {
            for (int i = first; i < n; i += step)
                median_pair(median, u1, u2, w, h, i % w, i / w, tmp1[i], tmp2[i]);
            sync_pair(parts, barrier);
            for (int i = first; i < n; i += step) {
                u1[i] = tmp1[i];
                u2[i] = tmp2[i];
            }
            sync_pair(parts, barrier);
        }
        for (int inner = 0; inner < inner_iterations && error > stop; ++inner) {
            float local = 0.0f;
            for (int i = first; i < n; i += step) {
                float a = u1[i], b = u2[i], n1, n2;
                primal_at(i, i % w, i / w, w, a, b, i1wx, i1wy, igrad, rho_c, p11, p12, p21, p22, l_t, theta, n1, n2);
                local += (n1 - a) * (n1 - a) + (n2 - b) * (n2 - b);
                u1[i] = n1;
                u2[i] = n2;
            }
            error = pair_sum(block_sum(local, scratch), parts, pair, partials, barrier);
            for (int i = first; i < n; i += step) {
                int x = i % w, y = i / w;
                bool last = y == h - 1;
                dual_step(i, x, w, u1, u2, last ? nullptr : u1 + i - x + w, last ? nullptr : u2 + i - x + w, taut,
                          p11, p12, p21, p22, p11, p12, p21, p22);
            }
            sync_pair(parts, barrier);
        }
    }
}

// (d, e) again, in a third layout with one grid-wide barrier per inner iteration instead of
// two: `parts` blocks per pair, block `part` owning the rows [part * rows, part * rows + rows).
// The flow and the dual variables alternate between two buffers each (u/ub, p/q): an
// iteration reads one and writes the other, so no block ever writes what another may still
// read. Phase 1 also computes the new flow of the next band's first row, privately (halo,
// one row per block), so phase 2 needs nothing from other blocks and follows phase 1 after a
// __syncthreads(); only the stopping sum (partials, two sets by iteration parity) waits for
// every block. The median reads two rows of the neighbours and is followed by a grid barrier.
// When the loops end, whatever is in the second buffers is copied back to the first, where
// the next launch and the driver expect it.
// grid (pairs * ceil(h / rows)), block (32..1024, a multiple of 32); halo (gridDim.x, 2, w);
// partials (2, gridDim.x).
extern "C" __global__ void tvl1_solve_bands(float* __restrict__ u1, float* __restrict__ u2,
                                            float* __restrict__ ub1, float* __restrict__ ub2,
                                            float* __restrict__ p11, float* __restrict__ p12,
                                            float* __restrict__ p21, float* __restrict__ p22,
                                            float* __restrict__ q11, float* __restrict__ q12,
                                            float* __restrict__ q21, float* __restrict__ q22,
                                            float* __restrict__ halo,
                                            const float* __restrict__ i1wx, const float* __restrict__ i1wy,
                                            const float* __restrict__ igrad, const float* __restrict__ rho_c,
                                            int w, int h, int stride, float l_t, float theta, float taut,
                                            float stop, int outer_iterations, int inner_iterations, int median,
                                            int reset_dual, int rows, unsigned* __restrict__ barrier,
                                            float* __restrict__ partials) {
    __shared__ float scratch[TVL1_MAX_WARPS + 1];
    const int parts = (h + rows - 1) / rows;
    const int pair = blockIdx.x / parts, part = blockIdx.x % parts;
    const int r1 = min((part + 1) * rows, h);
    const int own_begin = part * rows * w, own_end = r1 * w, halo_end = min(r1 + 1, h) * w;
    const size_t base = (size_t)pair * stride;
    // the current buffers (c) and the ones the iteration writes (n), swapped after each use
    float *c1 = u1 + base, *c2 = u2 + base, *n1s = ub1 + base, *n2s = ub2 + base;
    float *s11 = p11 + base, *s12 = p12 + base, *s21 = p21 + base, *s22 = p22 + base;
    float *d11 = q11 + base, *d12 = q12 + base, *d21 = q21 + base, *d22 = q22 + base;
    float* hx = halo + (size_t)blockIdx.x * 2 * w;
    float* hy = hx + w;
    i1wx += base; i1wy += base; igrad += base; rho_c += base;
    int parity = 0;  // which set of partials

    if (reset_dual) {
        for (int i = own_begin + threadIdx.x; i < own_end; i += blockDim.x) s11[i] = s12[i] = s21[i] = s22[i] = 0.0f;
        sync_pair(parts, barrier);
    }
    float error = __int_as_float(0x7f800000);  // +inf; identical in every thread of the pair
    for (int outer = 0; outer < outer_iterations && error > stop; ++outer) {
        if (median > 1) {
            for (int i = own_begin + threadIdx.x; i < own_end; i += blockDim.x)
                median_pair(median, c1, c2, w, h, i % w, i / w, n1s[i], n2s[i]);
            float* t = c1; c1 = n1s; n1s = t;
            t = c2; c2 = n2s; n2s = t;
            sync_pair(parts, barrier);
        }
        for (int inner = 0; inner < inner_iterations && error > stop; ++inner) {
            float local = 0.0f;
            for (int i = own_begin + threadIdx.x; i < halo_end; i += blockDim.x) {
                int x = i % w;
                float a = c1[i], b = c2[i], n1, n2;
                primal_at(i, x, i / w, w, a, b, i1wx, i1wy, igrad, rho_c, s11, s12, s21, s22, l_t, theta, n1, n2);
                if (i < own_end) {
                    local += (n1 - a) * (n1 - a) + (n2 - b) * (n2 - b);
                    n1s[i] = n1;
                    n2s[i] = n2;
                } else {  // the next band's first row: this block's private copy
                    hx[x] = n1;
                    hy[x] = n2;
                }
            }
            __syncthreads();
            for (int i = own_begin + threadIdx.x; i < own_end; i += blockDim.x) {
                int x = i % w, y = i / w;
                bool last = y == h - 1, inside = i + w < own_end;  // else the row below is the halo
                const float* below1 = last ? nullptr : inside ? n1s + i - x + w : hx;
                const float* below2 = last ? nullptr : inside ? n2s + i - x + w : hy;
                dual_step(i, x, w, n1s, n2s, below1, below2, taut, s11, s12, s21, s22, d11, d12, d21, d22);
            }
            error = pair_sum(block_sum(local, scratch), parts, pair, partials + (size_t)parity * gridDim.x, barrier);
            parity ^= 1;
            float* t = c1; c1 = n1s; n1s = t;
            t = c2; c2 = n2s; n2s = t;
            t = s11; s11 = d11; d11 = t;
            t = s12; s12 = d12; d12 = t;
            t = s21; s21 = d21; d21 = t;
            t = s22; s22 = d22; d22 = t;
        }
    }
    // back into the first buffers (own rows; no block reads them again in this launch)
    const bool flow_moved = c1 != u1 + base, dual_moved = s11 != p11 + base;
    for (int i = own_begin + threadIdx.x; i < own_end; i += blockDim.x) {
        if (flow_moved) {
            u1[base + i] = c1[i];
            u2[base + i] = c2[i];
        }
        if (dual_moved) {
            p11[base + i] = s11[i];
            p12[base + i] = s12[i];
            p21[base + i] = s21[i];
            p22[base + i] = s22[i];
        }
    }
}

// (b..f) the pyramid and whole pyramid levels in one launch, for GPUs with thread block clusters
// (compute capability 9.0 and newer). Per level (level_cluster): reference.upsample_flow of the
// coarser level's flow (zero at the coarsest), reference.centered_gradient of I1, then `warps`
// times reference.warp_bicubic + data_term and reference.solve_warp, the dual p starting at zero
// (reference.solve_level). One cluster of TVL1_CLUSTER blocks per pair (tvl1_levels_cluster) or
// of TVL1_CLUSTER_LARGE (tvl1_levels_cluster16, where the GPU allows that non-portable size),
// block `rank` owning the rows [rank * rows, rank * rows + rows) of a level (the last blocks may
// own fewer, or none). The flow, the
// dual and the warp's constants live in the blocks' shared memory for the whole level; only I1
// and its gradient (read at the warped positions: one float4 per pixel, `sampled`) go through
// global memory, and the level's flow is written there at the end.
// The loop is tvl1_solve_bands' with the cluster's hardware barrier in place of a grid barrier,
// once per inner iteration: u and p alternate between two buffers (an iteration reads the
// current ones, its own and its neighbours' boundary rows through distributed shared memory, and
// writes the next ones), and phase 1 also computes the next band's first row privately (its
// warp constants are computed once per warp), so that phase 2 needs only this block's threads.
// The stopping sum: each warp's sum in shared memory, added by the last warp after phase 1
// into the block's sum, kept in this block's shared memory (two slots, by iteration parity);
// after the barrier lane k of the last warp reads block k's (16 remote loads per block, not one
// per warp: those crowd the cluster's network); while they travel, the next iteration's phase 1
// runs (it needs no sum); then that warp adds them (the same butterfly in every block) and
// leaves the total in shared memory, which every thread reads after the barrier that follows
// phase 1, so every thread of the cluster leaves the loops at the same iteration. When the sum
// says stop, that phase 1's results are left unused in the next buffers. After an outer
// iteration's last inner one, every warp reads the blocks' sums itself (once per outer iteration).
// The median first copies the neighbours' two rows above and below the band into this block's
// spare rows, so that its windows read this block's memory only, and is followed by a barrier.
// So every block writes only its own shared memory and reads its neighbours' only after a
// barrier: the barriers inside the level (cluster_sync_shared) order shared memory alone, which
// needs no GPU-wide memory fence; the first (after the gradient, in global memory) and the last
// are full ones.
// A pixel's values lie together, so that one instruction moves them (offsets in the same units):
//   P[2]  float4 (p11, p21, p12, p22) per pixel: the dual, current and next (x, y: what the
//         pixel to the right needs; z, w: what the pixel below needs);
//   C     float4: warp_at's constants, with one row more, the next band's first row;
//   U[2]  float2 (u1, u2): the flow, current and next, each with two spare rows above the band
//         (the median's copies) and two below (the first: the next band's first row, which
//         phase 1 writes into the next buffer and the median's copy overwrites; the second: a copy).
// Dynamic shared memory per block, in floats (rows >= 2, the median's copy needs two), with
// TVL1_MAX_WARPS for the warps' sums, two for the block's and two for the cluster's:
//   TVL1_CLUSTER_PLANES * rows * w + TVL1_CLUSTER_ROWS * w + 2 * TVL1_MAX_WARPS.
// grid (the cluster's blocks), block (32..TVL1_CLUSTER_THREADS, a multiple of 32); one pair per launch.
#define TVL1_CLUSTER 8  // blocks per cluster: the portable maximum
#define TVL1_CLUSTER_LARGE 16  // the most a Hopper GPU allows, with the function's non-portable attribute
#define TVL1_CLUSTER_PLANES 16  // per pixel: P (2 x 4), C (4), U (2 x 2)
#define TVL1_CLUSTER_ROWS 20  // per column: C's extra row (4), U's four spare rows (2 x 4 x 2)
// most threads per block: ptxas (sm_90) then allows 96 registers, and spills only around the levels
// and warps, none inside an iteration (at 1024, 64 registers, it spills after each iteration's
// barrier, and 1024 threads are the slowest on an H200); the driver also times 512 and 256
// (cuda.SMALLER_BLOCKS), which there take about what 640 does (0.54 / 0.54 / 0.57 ms per pair at
// S = 112; 128: 0.73)
#define TVL1_CLUSTER_THREADS 640


#if TVL1_HAS_CLUSTERS
// A thread's pixels i = threadIdx.x + k * blockDim.x of a band w wide, with their column x and
// band row ly, stepped without a division per pixel.
struct BandWalk {
    int i, x, ly;
    int step, step_x, step_y, w;
    __device__ __forceinline__ BandWalk(int w_) : i(threadIdx.x), x(threadIdx.x % w_), ly(threadIdx.x / w_),
        step(blockDim.x), step_x(blockDim.x % w_), step_y(blockDim.x / w_), w(w_) {}
    __device__ __forceinline__ void next() {
        i += step;
        x += step_x;
        ly += step_y;
        if (x >= w) { x -= w; ++ly; }
    }
};

// The sum of v over the warp, the same number in every lane (an xor butterfly).
__device__ __forceinline__ float warp_total(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// After a barrier, this lane's part of the cluster's stopping sum: block k's sum for lane k (`sum`:
// where each block keeps its own), 0 for the lanes past the cluster. warp_total of the parts is the
// cluster's sum, the same numbers in the same lanes in every warp of every block, so that every
// thread of the cluster gets the same number.
template <int BLOCKS>
__device__ __forceinline__ float cluster_part(const float* sum) {
    const unsigned lane = threadIdx.x & 31;
    return lane < BLOCKS ? *cluster_map(sum, lane) : 0.0f;
}

// reference.median_filter of both flow components at pixel (x, y) of a band whose first row is
// y0, from the band's rows with two more above and below (u: the first of those, row y0 - 2)
template <int K>
__device__ __forceinline__ float2 band_median(const float2* u, int w, int h, int x, int y, int y0) {
    float a[K * K], b[K * K];
    window_at<K>(w, h, x, y, [&](int k, int yy, int xx) {
        const float2 v = u[(yy - y0 + 2) * w + xx];
        a[k] = v.x;
        b[k] = v.y;
    });
    return make_float2(window_median<K>(a), window_median<K>(b));
}
#endif

// A level's work for a cluster of BLOCKS blocks (levels_cluster: 8 or 16)
template <int BLOCKS>
__device__ __forceinline__ void level_cluster(
        const float* __restrict__ i0, const float* __restrict__ i1, float4* sampled,
        const float* __restrict__ cu1, const float* __restrict__ cu2, int cw, int ch, float inv_scale_step,
        float* __restrict__ u1, float* __restrict__ u2, int w, int h, float l_t, float theta, float taut,
        float stop, int warps, int outer_iterations, int inner_iterations, int median, int rows) {

#if TVL1_HAS_CLUSTERS
    const int rank = blockIdx.x, plane = rows * w;
    const int y0 = rank * rows, own_rows = max(0, min(rows, h - y0)), own = own_rows * w;
    const bool above = rank > 0 && own_rows > 0, below = y0 + own_rows < h && own_rows > 0;
    const int halo = below ? w : 0;  // the next band's first row, which this block also computes
    float4* const P = reinterpret_cast<float4*>(dynamic_shared());  // P[0], then P[1] from P + plane
    float4* const C = P + 2 * plane;
    float2* const U = reinterpret_cast<float2*>(C + plane + w);  // U[0], then U[1] from U + u_plane
    const int u_plane = plane + 4 * w, lead = 2 * w;  // a U buffer's size, and where its band begins
    float* warp_sums = reinterpret_cast<float*>(U + 2 * u_plane);  // TVL1_MAX_WARPS: each warp's stopping sum
    float* sums = warp_sums + TVL1_MAX_WARPS;  // 2: this block's sum, by iteration parity
    float* totals = sums + 2;  // 2: the cluster's sum, by iteration parity, for the whole block to read
    int cu = 0, cp = 0;  // the current buffer of U, of P
    const int nwarps = blockDim.x >> 5;
    const bool last_warp = (int)(threadIdx.x >> 5) == nwarps - 1;  // adds up the block's and the cluster's sums
    const size_t g0 = (size_t)y0 * w;  // the band's first pixel in the global planes

    const float fx = cw > 0 ? (float)cw / (float)w : 0.0f, fy = cw > 0 ? (float)ch / (float)h : 0.0f;
    for (BandWalk t(w); t.i < own; t.next()) {
        const int i = t.i, x = t.x, y = y0 + t.ly;
        U[lead + i] = cw > 0 ? make_float2(resize_at(cu1, cw, ch, x, y, fx, fy) * inv_scale_step,
                                           resize_at(cu2, cw, ch, x, y, fx, fy) * inv_scale_step)
                             : make_float2(0.0f, 0.0f);
        P[i] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        float gx, gy;
        gradient_at(i1, w, h, x, y, gx, gy);
        sampled[g0 + i] = make_float4(i1[g0 + i], gx, gy, 0.0f);  // what the warps sample, in one load
    }
    cluster_sync();  // the gradient (global) and the flow visible to the whole cluster
    int parity = 0;  // which slot of sums
    for (int warp = 0; warp < warps; ++warp) {
        const float2* flow = U + cu * u_plane + lead;  // the current flow's band
        const float2* down_u = below ? cluster_map(flow, rank + 1) : nullptr;
        for (BandWalk t(w); t.i < own + halo; t.next()) {  // past own: the next band's first row
            const int i = t.i, x = t.x, y = y0 + t.ly;
            const float2 f = i < own ? flow[i] : down_u[x];
            C[i] = warp_sampled([&](int t) { return sampled[t]; }, w, h, x, y, f.x, f.y, i0[y * w + x]);
        }
        __syncthreads();
        float error = __int_as_float(0x7f800000);  // +inf; identical in every thread of the cluster
        for (int outer = 0; outer < outer_iterations && error > stop; ++outer) {
            if (median > 1) {
                float2* u = U + cu * u_plane;  // the current flow from its spare rows above the band
                float2* out = U + (cu ^ 1) * u_plane + lead;
                for (int j = threadIdx.x; j < 4 * w; j += blockDim.x) {  // rows y0 - 2, y0 - 1, y0 + own_rows, + 1
                    const int k = j / w, x = j - k * w, y = k < 2 ? y0 - 2 + k : y0 + own_rows + k - 2;
                    if (own_rows > 0 && y >= 0 && y < h)  // the band above's last rows, the band below's first
                        u[(k < 2 ? k : own_rows + k) * w + x] =
                            cluster_map(u, k < 2 ? rank - 1 : rank + 1)[(k < 2 ? rows + k : k) * w + x];
                }
                __syncthreads();
                for (BandWalk t(w); t.i < own; t.next())
                    out[t.i] = median == 3 ? band_median<3>(u, w, h, t.x, y0 + t.ly, y0)
                                           : band_median<5>(u, w, h, t.x, y0 + t.ly, y0);
                cu ^= 1;
                cluster_sync_shared();
            }
            float pulled = 0.0f;  // the last warp's lane k: block k's sum of the last iteration, on its way
            bool owed = false;    // whether that iteration's sum is still to be added up
            for (int inner = 0; inner < inner_iterations; ++inner) {
                const float2* uc = U + cu * u_plane + lead;
                float2* un = U + (cu ^ 1) * u_plane + lead;
                const float4* pc = P + cp * plane;
                float4* pn = P + (cp ^ 1) * plane;
                const float2* halves = reinterpret_cast<const float2*>(pc);  // [2i]: (p11, p21), [2i + 1]: (p12, p22)
                // the neighbours' current buffers: (p12, p22) of the last row above, u and p of the first row below
                const float2* up = above ? cluster_map(halves, rank - 1) + 2 * (rows - 1) * w + 1 : nullptr;
                const float2* dn_u = below ? cluster_map(uc, rank + 1) : nullptr;
                const float4* dn_p = below ? cluster_map(pc, rank + 1) : nullptr;
                float local = 0.0f;
                for (BandWalk t(w); t.i < own + halo; t.next()) {
                    const int i = t.i, x = t.x;  // past own: the next band's first row, x = i - own
                    if (i < own) {  // primal_at's step, the divergence across bands
                        float2 a = uc[i], v = threshold_at(C[i], a, l_t);
                        float4 p = pc[i];
                        float div1 = p.x + p.z, div2 = p.y + p.w;
                        if (x > 0) { float2 l = halves[2 * i - 2]; div1 -= l.x; div2 -= l.y; }
                        if (t.ly > 0) { float2 o = halves[2 * (i - w) + 1]; div1 -= o.x; div2 -= o.y; }
                        else if (above) { float2 o = up[2 * x]; div1 -= o.x; div2 -= o.y; }
                        float n1 = v.x + theta * div1, n2 = v.y + theta * div2;
                        local += (n1 - a.x) * (n1 - a.x) + (n2 - a.y) * (n2 - a.y);
                        un[i] = make_float2(n1, n2);
                    } else {  // the next band's first row, privately; the row above it is this block's last
                        float2 v = threshold_at(C[i], dn_u[x], l_t), o = halves[2 * (i - w) + 1];
                        float4 p = dn_p[x];
                        float div1 = p.x + p.z - o.x, div2 = p.y + p.w - o.y;
                        if (x > 0) { float4 l = dn_p[x - 1]; div1 -= l.x; div2 -= l.y; }
                        un[i] = make_float2(v.x + theta * div1, v.y + theta * div2);  // U's first spare row below
                    }
                }
                if (owed && last_warp) {  // the last iteration's sum, which travelled while this phase 1 ran
                    const float total = warp_total(pulled);
                    if ((threadIdx.x & 31) == 0) totals[parity] = total;
                }
                local = warp_total(local);
                if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = local;
                __syncthreads();
                if (owed) {
                    owed = false;
                    error = totals[parity];
                    if (!(error > stop)) break;  // this phase 1 goes unused: it wrote only the next buffers
                }
                if (last_warp) {  // the block's sum, by the warp with the least of phase 2 (it has the last pixels)
                    const unsigned lane = threadIdx.x & 31;
                    float block = warp_total((int)lane < nwarps ? warp_sums[lane] : 0.0f);
                    if (lane == 0) sums[parity] = block;
                }
                for (BandWalk t(w); t.i < own; t.next()) {  // reference.forward_gradient, project_dual
                    const int i = t.i;
                    const float2 n = un[i];
                    const float2 r = t.x < w - 1 ? un[i + 1] : n;  // the row below: this band's or the spare row
                    const float2 d = t.ly < own_rows - 1 || below ? un[i + w] : n;
                    pn[i] = project_dual(pc[i], r.x - n.x, d.x - n.x, r.y - n.y, d.y - n.y, taut);
                }
                cluster_sync_shared();
                if (last_warp) pulled = cluster_part<BLOCKS>(sums + parity);  // added after the next phase 1
                owed = true;
                parity ^= 1;
                cu ^= 1;
                cp ^= 1;
            }
            if (owed) error = warp_total(cluster_part<BLOCKS>(sums + (parity ^ 1)));  // every warp, once
        }
    }
    const float2* flow = U + cu * u_plane + lead;
    for (int i = threadIdx.x; i < own; i += blockDim.x) {
        const float2 f = flow[i];
        u1[g0 + i] = f.x;
        u2[g0 + i] = f.y;
    }
    cluster_sync();  // no block ends while another may still read its shared memory (the warp reads u below)
#endif
}

// The pyramid and the levels from the coarsest down to `last`, for a cluster of BLOCKS blocks (the
// kernels below). table: per level (finest first) the address of its two images (I0 then I1, each
// h x w), then per level the ints w, h, the stopping threshold (float bits) and 0. Levels 1.. are
// made from level 0 first (reference.pyramid, both images, spread over the cluster's threads, a
// barrier after each); then level_cluster per level, with rows = max(2, ceil(h / BLOCKS)), its flow
// written to (a1, a2) for the coarsest, (b1, b2) for the next, and so on alternately, from the
// coarser level's (zero at the coarsest).
template <int BLOCKS>
__device__ __forceinline__ void levels_cluster(
        const long long* __restrict__ table, int levels, int last, float4* sampled, float* a1, float* a2,
        float* b1, float* b2, float inv_scale_step, float l_t, float theta, float taut, int warps,
        int outer_iterations, int inner_iterations, int median) {
#if TVL1_HAS_CLUSTERS
    const int* dims = reinterpret_cast<const int*>(table + levels);
    for (int k = 1; k < levels; ++k) {
        const float* src = reinterpret_cast<const float*>(table[k - 1]);
        float* dst = reinterpret_cast<float*>(table[k]);
        const int sw = dims[4 * (k - 1)], sh = dims[4 * (k - 1) + 1], dw = dims[4 * k], dh = dims[4 * k + 1];
        for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < 2 * dw * dh; j += BLOCKS * blockDim.x) {
            const int z = j / (dw * dh), r = j - z * dw * dh, y = r / dw;
            dst[j] = resize_at(src + z * sw * sh, sw, sh, r - y * dw, y, inv_scale_step, inv_scale_step);
        }
        cluster_sync();  // the level (global memory) visible to the whole cluster
    }
    for (int k = levels - 1; k >= last; --k) {
        const int w = dims[4 * k], h = dims[4 * k + 1];
        const float* i0 = reinterpret_cast<const float*>(table[k]);
        const bool into_a = ((levels - 1 - k) & 1) == 0;
        const int cw = k + 1 < levels ? dims[4 * (k + 1)] : 0, ch = k + 1 < levels ? dims[4 * (k + 1) + 1] : 0;
        level_cluster<BLOCKS>(i0, i0 + w * h, sampled, into_a ? b1 : a1, into_a ? b2 : a2, cw, ch, inv_scale_step,
                              into_a ? a1 : b1, into_a ? a2 : b2, w, h, l_t, theta, taut,
                              __int_as_float(dims[4 * k + 2]), warps, outer_iterations, inner_iterations, median,
                              max(2, (h + BLOCKS - 1) / BLOCKS));
    }
#endif
}

extern "C" __global__ void TVL1_CLUSTER_DIMS(TVL1_CLUSTER) tvl1_levels_cluster(
        const long long* __restrict__ table, int levels, int last, float4* sampled, float* a1, float* a2,
        float* b1, float* b2, float inv_scale_step, float l_t, float theta, float taut, int warps,
        int outer_iterations, int inner_iterations, int median) {
    levels_cluster<TVL1_CLUSTER>(table, levels, last, sampled, a1, a2, b1, b2, inv_scale_step, l_t, theta, taut,
                                 warps, outer_iterations, inner_iterations, median);
}

extern "C" __global__ void TVL1_CLUSTER_DIMS(TVL1_CLUSTER_LARGE) tvl1_levels_cluster16(
        const long long* __restrict__ table, int levels, int last, float4* sampled, float* a1, float* a2,
        float* b1, float* b2, float inv_scale_step, float l_t, float theta, float taut, int warps,
        int outer_iterations, int inner_iterations, int median) {
    levels_cluster<TVL1_CLUSTER_LARGE>(table, levels, last, sampled, a1, a2, b1, b2, inv_scale_step, l_t, theta,
                                       taut, warps, outer_iterations, inner_iterations, median);
}

// (f) reference.upsample_flow: bilinear resize of (u1, u2) to the finer level, times 1 / scale_step.
// grid (ceil(dw/16), ceil(dh/16), pairs).
extern "C" __global__ void tvl1_upsample_flow(const float* __restrict__ su1, const float* __restrict__ su2,
                                              int sw, int sh, int src_stride,
                                              float* __restrict__ du1, float* __restrict__ du2,
                                              int dw, int dh, int dst_stride, float inv_scale_step) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= dw || y >= dh) return;
    float fx = (float)sw / (float)dw, fy = (float)sh / (float)dh;
    size_t sb = (size_t)blockIdx.z * src_stride, db = (size_t)blockIdx.z * dst_stride;
    du1[db + y * dw + x] = resize_at(su1 + sb, sw, sh, x, y, fx, fy) * inv_scale_step;
    du2[db + y * dw + x] = resize_at(su2 + sb, sw, sh, x, y, fx, fy) * inv_scale_step;
}

// (g) flow.normalise.motion_tensor (strain as flow.opencv.optical_strain: numpy.gradient,
// central inside, one-sided at the border) and texture_tensor, written NCHW into the engine's
// input buffers: motion (pairs, 3, S, S), texture (pairs, 1, S, S).
// flow_scale = 112 / S / FLOW_UNIT, strain_scale = 1 / STRAIN_UNIT.
// grid (ceil(S/16), ceil(S/16), pairs).
__device__ __forceinline__ float np_gradient(const float* __restrict__ f, int i, int pos, int len, int step) {
    if (pos == 0) return f[i + step] - f[i];
    if (pos == len - 1) return f[i] - f[i - step];
    return 0.5f * (f[i + step] - f[i - step]);
}

extern "C" __global__ void tvl1_epilogue(const float* __restrict__ u1, const float* __restrict__ u2,
                                         const float* __restrict__ apex, int size, int stride,
                                         float flow_scale, float strain_scale, float clip,
                                         float texture_mean, float texture_std,
                                         float* __restrict__ motion, float* __restrict__ texture) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= size || y >= size) return;
    const int plane = size * size;
    const size_t base = (size_t)blockIdx.z * stride;
    const float* a = u1 + base;
    const float* b = u2 + base;
    int i = y * size + x;
    float du_dx = np_gradient(a, i, x, size, 1), du_dy = np_gradient(a, i, y, size, size);
    float dv_dx = np_gradient(b, i, x, size, 1), dv_dy = np_gradient(b, i, y, size, size);
    float shear = 0.5f * (du_dy + dv_dx);
    float strain = sqrtf(du_dx * du_dx + dv_dy * dv_dy + 2.0f * shear * shear);
    float* m = motion + (size_t)blockIdx.z * 3 * plane;
    m[i] = clampf(a[i] * flow_scale, -clip, clip);
    m[plane + i] = clampf(b[i] * flow_scale, -clip, clip);
    m[2 * plane + i] = clampf(strain * strain_scale, 0.0f, clip);
    float g = apex[(size_t)blockIdx.z * stride + i];
    texture[(size_t)blockIdx.z * plane + i] = (g / 255.0f - texture_mean) / texture_std;
}
