// tvl1_gpu.h: the instructions of tvl1.cu that only a GPU has, in one place: its nanosecond timer,
// the approximate square root and reciprocal of the dual step, and thread block clusters
// (compute capability 9.0 and newer). tvl1.cu includes it; a CPU build of the kernels (the
// tests' emulator) brings a header of the same name with its own versions instead.
#pragma once

// the GPU's global nanosecond timer
__device__ __forceinline__ unsigned long long tvl1_now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

#if defined(TVL1_EXACT_DUAL)
// built with -DTVL1_EXACT_DUAL (to tell their effect on a GPU): the correctly rounded ones
__device__ __forceinline__ float sqrt_approx(float x) { return sqrtf(x); }
__device__ __forceinline__ float rcp_approx(float x) { return __frcp_rn(x); }
#else
// The GPU's approximate square root and reciprocal: one instruction each instead of a correctly
// rounded sequence of about ten with a branch; not correctly rounded, denormal inputs taken as 0.
__device__ __forceinline__ float sqrt_approx(float x) {
    float y;
    asm("sqrt.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
__device__ __forceinline__ float rcp_approx(float x) {
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
#endif

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define TVL1_HAS_CLUSTERS 1
// a cluster kernel's attributes (TVL1_CLUSTER_THREADS: tvl1.cu's most threads per block)
#define TVL1_CLUSTER_DIMS(blocks) __cluster_dims__(blocks, 1, 1) __launch_bounds__(TVL1_CLUSTER_THREADS)
// every thread of the cluster; release / acquire at cluster scope (shared and global memory).
// Not the .aligned form: that one is undefined if the compiler ever splits a warp across copies.
__device__ __forceinline__ void cluster_sync() {
    asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
}
// every thread of the cluster, ordering only shared memory: what this block wrote into its own
// before the barrier is visible to the cluster's reads after it (PTX 8.6's restricted fences,
// CUDA 12.8; an older toolkit, or a build with -DTVL1_FULL_BARRIERS, gets the full barrier)
__device__ __forceinline__ void cluster_sync_shared() {
#if !defined(TVL1_FULL_BARRIERS) && \
    (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 8))
    asm volatile("fence.release.sync_restrict::shared::cta.cluster;\n\t"
                 "barrier.cluster.arrive.relaxed;\n\t"
                 "barrier.cluster.wait;\n\t"
                 "fence.acquire.sync_restrict::shared::cluster.cluster;" ::: "memory");
#else
    cluster_sync();
#endif
}
// the address of the same shared-memory location in block `rank` of the cluster
template <class T>
__device__ __forceinline__ T* cluster_map(T* p, unsigned rank) {
    unsigned long long out;
    asm("mapa.u64 %0, %1, %2;" : "=l"(out) : "l"(p), "r"(rank));  // pure: the compiler may share it
    return reinterpret_cast<T*>(out);
}
__device__ __forceinline__ float* dynamic_shared() {
    extern __shared__ float4 tvl1_dynamic[];  // 16-byte aligned
    return reinterpret_cast<float*>(tvl1_dynamic);
}
#else
#define TVL1_HAS_CLUSTERS 0
#define TVL1_CLUSTER_DIMS(blocks)
#endif
