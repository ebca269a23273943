// Fused CUDA kernels of the flow stage: colour conversion and face crop, coarse-to-fine
// TV-L1 optical flow, optical strain and the model-input normalisation.
//
// The specification is edge_mer/flow/reference.py (numpy); every kernel below names the
// reference function it implements, and follows it step for step: the same pyramid sizes
// and resampling positions, the same bicubic filter (Keys, a = -0.75) clamped at the
// border, the same loop structure and stopping rule. Results differ from the reference
// only by float32 rounding and summation order (the stopping test can then fire one
// iteration earlier or later).
//
// Only device code: the host driver (pycuda) allocates the buffers, computes the pyramid
// sizes with reference.level_shapes and launches, per pair:
//   tvl1_pre                                   once
//   tvl1_downsample                            levels - 1 times (both images, z = 2)
//   per level, coarsest first:
//     tvl1_centered_gradient                   once
//     tvl1_warp, tvl1_solve                    warps times (tvl1_solve resets p on the first)
//     tvl1_upsample_flow                       unless finest
//   tvl1_epilogue_f32 or tvl1_epilogue_f16     once
// Images are planar float32, rows dense (pitch = width); several pairs run side by side
// through blockIdx.z (blockIdx.x for tvl1_solve) and the *_stride arguments (elements
// between consecutive planes of the same kind).
//
// Build: nvcc -ptx -arch=compute_72 (Xavier, CUDA <= 12), compute_87 (Orin), ... or pycuda's
// SourceModule(source, no_extern_c=True): the entry points are extern "C" already and
// cuda_fp16.h must not be wrapped. Needs nothing newer than sm_72 (warp shuffles, half
// conversion, __nanosleep from sm_70) and no host code.

#include <cuda_fp16.h>

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

// Median of N values by a compare-exchange selection; fully unrolled so v stays in registers.
template <int N>
__device__ __forceinline__ float median_of(float v[N]) {
#pragma unroll
    for (int i = 0; i <= N / 2; ++i) {
#pragma unroll
        for (int j = i + 1; j < N; ++j) {
            float a = v[i], b = v[j];
            v[i] = fminf(a, b);
            v[j] = fmaxf(a, b);
        }
    }
    return v[N / 2];
}

// reference.median_filter at one pixel: K x K window, border replicated
template <int K>
__device__ float median_at(const float* __restrict__ u, int w, int h, int x, int y) {
    float v[K * K];
    const int r = K / 2;
#pragma unroll
    for (int dy = 0; dy < K; ++dy) {
        int yy = clampi(y + dy - r, 0, h - 1);
#pragma unroll
        for (int dx = 0; dx < K; ++dx) v[dy * K + dx] = u[yy * w + clampi(x + dx - r, 0, w - 1)];
    }
    return median_of<K * K>(v);
}

// ---------------------------------------------------------------------------------------
// (a) reference.crop_gray (with reference.gray_u8), for the onset and the apex frame at once.
// inv: the 2x3 crop -> frame matrix (the inverse of the aligner's frame -> crop matrix).
// grid (ceil(S/16), ceil(S/16), 2), block (16, 16); out: (2, S, S), onset then apex.
extern "C" __global__ void tvl1_pre(const unsigned char* __restrict__ onset, const unsigned char* __restrict__ apex,
                                    int width, int height, int pitch, int channels,
                                    float m00, float m01, float m02, float m10, float m11, float m12,
                                    int size, float* __restrict__ out) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= size || y >= size) return;
    const unsigned char* frame = blockIdx.z == 0 ? onset : apex;
    float sx = m00 * x + m01 * y + m02;
    float sy = m10 * x + m11 * y + m12;
    float fx0 = floorf(sx), fy0 = floorf(sy);
    float ax = sx - fx0, ay = sy - fy0;
    int xa = clampi((int)fx0, 0, width - 1), xb = clampi((int)fx0 + 1, 0, width - 1);
    int ya = clampi((int)fy0, 0, height - 1), yb = clampi((int)fy0 + 1, 0, height - 1);
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

// (c1) reference.centered_gradient of I1, once per level. grid (ceil(w/16), ceil(h/16), pairs).
extern "C" __global__ void tvl1_centered_gradient(const float* __restrict__ img, int w, int h, int stride,
                                                  float* __restrict__ gx, float* __restrict__ gy) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    size_t base = (size_t)blockIdx.z * stride;
    const float* s = img + base;
    int xl = max(x - 1, 0), xr = min(x + 1, w - 1);
    int yu = max(y - 1, 0), yd = min(y + 1, h - 1);
    gx[base + y * w + x] = 0.5f * (s[y * w + xr] - s[y * w + xl]);
    gy[base + y * w + x] = 0.5f * (s[yd * w + x] - s[yu * w + x]);
}

// (c2) reference.warp_bicubic of (I1, dI1/dx, dI1/dy) at x + u, then reference.data_term.
// grid (ceil(w/16), ceil(h/16), pairs).
extern "C" __global__ void tvl1_warp(const float* __restrict__ i0, const float* __restrict__ i1,
                                     const float* __restrict__ i1x, const float* __restrict__ i1y,
                                     const float* __restrict__ u1, const float* __restrict__ u2, int w, int h, int stride,
                                     float* __restrict__ i1wx, float* __restrict__ i1wy,
                                     float* __restrict__ grad, float* __restrict__ rho_c) {
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= w || y >= h) return;
    size_t base = (size_t)blockIdx.z * stride;
    int i = y * w + x;
    float f1 = u1[base + i], f2 = u2[base + i];
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
    const float* a = i1 + base;
    const float* b = i1x + base;
    const float* c = i1y + base;
    float vw = 0.0f, vx = 0.0f, vy = 0.0f;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float rw = 0.0f, rx = 0.0f, ry = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            int t = yi[j] * w + xi[k];
            rw += a[t] * wx[k];
            rx += b[t] * wx[k];
            ry += c[t] * wx[k];
        }
        vw += rw * wy[j];
        vx += rx * wy[j];
        vy += ry * wy[j];
    }
    i1wx[base + i] = vx;
    i1wy[base + i] = vy;
    grad[base + i] = vx * vx + vy * vy;
    rho_c[base + i] = vw - vx * f1 - vy * f2 - i0[base + i];
}

// Barrier over every block of the launch, for the multi-block solve (the pattern of
// cooperative groups' grid sync): each block arrives once; the last to arrive resets the
// count and advances the generation the others wait on. Every block must be resident at
// once: the driver launches at most one block per multiprocessor, each small enough to fit.
// barrier[0]: arrivals (0 between launches); barrier[1]: generation; barrier[2]: set to 1
// when a wait gave up after about a second (a block that never ran), so that the driver
// reports an error instead of the GPU hanging.
#define TVL1_SPIN_LIMIT (1u << 25)

__device__ void grid_sync(unsigned* barrier) {
    __syncthreads();
    if (threadIdx.x == 0) {
        volatile unsigned* shared_state = barrier;
        unsigned generation = shared_state[1];
        __threadfence();
        if (atomicAdd(&barrier[0], 1u) == gridDim.x - 1) {
            atomicExch(&barrier[0], 0u);
            __threadfence();
            atomicAdd(&barrier[1], 1u);
        } else {
            for (unsigned spins = 0; shared_state[1] == generation; ++spins) {
                if (spins > TVL1_SPIN_LIMIT) {
                    shared_state[2] = 1u;
                    break;
                }
                __nanosleep(32);
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
                                      const float* __restrict__ grad, const float* __restrict__ rho_c,
                                      int w, int h, int stride, float l_t, float theta, float taut, float stop,
                                      int outer_iterations, int inner_iterations, int median, int reset_dual,
                                      int parts, unsigned* __restrict__ barrier, float* __restrict__ partials) {
    __shared__ float scratch[TVL1_MAX_WARPS + 1];
    const int n = w * h;
    const int pair = blockIdx.x / parts, part = blockIdx.x % parts;
    const int first = part * blockDim.x + threadIdx.x, step = parts * blockDim.x;
    const size_t base = (size_t)pair * stride;
    u1 += base; u2 += base; p11 += base; p12 += base; p21 += base; p22 += base;
    tmp1 += base; tmp2 += base; i1wx += base; i1wy += base; grad += base; rho_c += base;

    if (reset_dual) {
        for (int i = first; i < n; i += step) p11[i] = p12[i] = p21[i] = p22[i] = 0.0f;
        sync_pair(parts, barrier);
    }
    float error = __int_as_float(0x7f800000);  // +inf; identical in every thread: see above
    for (int outer = 0; outer < outer_iterations && error > stop; ++outer) {
        if (median > 1) {
            for (int i = first; i < n; i += step) {
                int x = i % w, y = i / w;
                if (median == 3) {
                    tmp1[i] = median_at<3>(u1, w, h, x, y);
                    tmp2[i] = median_at<3>(u2, w, h, x, y);
                } else {
                    tmp1[i] = median_at<5>(u1, w, h, x, y);
                    tmp2[i] = median_at<5>(u2, w, h, x, y);
                }
            }
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
                int x = i % w, y = i / w;
                float a = u1[i], b = u2[i];
                float gx = i1wx[i], gy = i1wy[i], g = grad[i];
                float rho = rho_c[i] + gx * a + gy * b;
                float bound = l_t * g;
                float c;
                if (rho < -bound) c = l_t;
                else if (rho > bound) c = -l_t;
                else if (g > TVL1_FLT_EPSILON) c = -rho / g;
                else c = 0.0f;
                float v1 = a + c * gx, v2 = b + c * gy;
                float div1 = p11[i] + p12[i], div2 = p21[i] + p22[i];
                if (x > 0) { div1 -= p11[i - 1]; div2 -= p21[i - 1]; }
                if (y > 0) { div1 -= p12[i - w]; div2 -= p22[i - w]; }
                float n1 = v1 + theta * div1, n2 = v2 + theta * div2;
                local += (n1 - a) * (n1 - a) + (n2 - b) * (n2 - b);
                u1[i] = n1;
                u2[i] = n2;
            }
            float total = block_sum(local, scratch);
            if (parts > 1) {
                if (threadIdx.x == 0) partials[blockIdx.x] = total;
                grid_sync(barrier);
                total = 0.0f;
                for (int k = 0; k < parts; ++k) total += partials[pair * parts + k];
            }
            error = total;
            for (int i = first; i < n; i += step) {
                int x = i % w, y = i / w;
                float a = u1[i], b = u2[i];
                float u1x = x < w - 1 ? u1[i + 1] - a : 0.0f;
                float u1y = y < h - 1 ? u1[i + w] - a : 0.0f;
                float u2x = x < w - 1 ? u2[i + 1] - b : 0.0f;
                float u2y = y < h - 1 ? u2[i + w] - b : 0.0f;
                float ng1 = 1.0f + taut * sqrtf(u1x * u1x + u1y * u1y);
                float ng2 = 1.0f + taut * sqrtf(u2x * u2x + u2y * u2y);
                p11[i] = (p11[i] + taut * u1x) / ng1;
                p12[i] = (p12[i] + taut * u1y) / ng1;
                p21[i] = (p21[i] + taut * u2x) / ng2;
                p22[i] = (p22[i] + taut * u2y) / ng2;
            }
            sync_pair(parts, barrier);
        }
    }
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

// (g) features.normalise.motion_tensor (strain as features.flow.optical_strain: numpy.gradient,
// central inside, one-sided at the border) and texture_tensor, written NCHW into the engine's
// input buffers: motion (pairs, 3, S, S), texture (pairs, 1, S, S).
// flow_scale = 112 / S / FLOW_UNIT, strain_scale = 1 / STRAIN_UNIT.
// grid (ceil(S/16), ceil(S/16), pairs).
template <typename T>
__device__ __forceinline__ T to_out(float v);

template <>
__device__ __forceinline__ float to_out<float>(float v) { return v; }

template <>
__device__ __forceinline__ __half to_out<__half>(float v) { return __float2half_rn(v); }

__device__ __forceinline__ float np_gradient(const float* __restrict__ f, int i, int pos, int len, int step) {
    if (pos == 0) return f[i + step] - f[i];
    if (pos == len - 1) return f[i] - f[i - step];
    return 0.5f * (f[i + step] - f[i - step]);
}

template <typename T>
__device__ void epilogue(const float* __restrict__ u1, const float* __restrict__ u2, const float* __restrict__ apex,
                         int size, int stride, float flow_scale, float strain_scale, float clip,
                         float texture_mean, float texture_std, T* __restrict__ motion, T* __restrict__ texture) {
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
    T* m = motion + (size_t)blockIdx.z * 3 * plane;
    m[i] = to_out<T>(clampf(a[i] * flow_scale, -clip, clip));
    m[plane + i] = to_out<T>(clampf(b[i] * flow_scale, -clip, clip));
    m[2 * plane + i] = to_out<T>(clampf(strain * strain_scale, 0.0f, clip));
    float g = apex[(size_t)blockIdx.z * stride + i];
    texture[(size_t)blockIdx.z * plane + i] = to_out<T>((g / 255.0f - texture_mean) / texture_std);
}

extern "C" __global__ void tvl1_epilogue_f32(const float* __restrict__ u1, const float* __restrict__ u2,
                                             const float* __restrict__ apex, int size, int stride,
                                             float flow_scale, float strain_scale, float clip,
                                             float texture_mean, float texture_std,
                                             float* __restrict__ motion, float* __restrict__ texture) {
    epilogue<float>(u1, u2, apex, size, stride, flow_scale, strain_scale, clip, texture_mean, texture_std,
                    motion, texture);
}

extern "C" __global__ void tvl1_epilogue_f16(const float* __restrict__ u1, const float* __restrict__ u2,
                                             const float* __restrict__ apex, int size, int stride,
                                             float flow_scale, float strain_scale, float clip,
                                             float texture_mean, float texture_std,
                                             __half* __restrict__ motion, __half* __restrict__ texture) {
    epilogue<__half>(u1, u2, apex, size, stride, flow_scale, strain_scale, clip, texture_mean, texture_std,
                     motion, texture);
}
