// tvl1_gpu.h for the CPU: what edge_mer/flow/kernels/tvl1_gpu.h gives the kernels on a GPU, made of
// the emulator's own parts (emulate.h, included before the kernels). The kernels include this file
// by name, and the emulator's build finds it first.
#pragma once

// the kernels' approximate square root and reciprocal (PTX sqrt.approx, rcp.approx on a GPU): exact here
inline float sqrt_approx(float x) { return std::sqrt(x); }
inline float rcp_approx(float x) { return 1.0f / x; }

// thread block clusters (compute capability 9.0): the launch is the cluster
#define TVL1_HAS_CLUSTERS 1
#define TVL1_CLUSTER_DIMS(blocks)
inline void cluster_sync() { ::emu::cluster_sync(); }
inline void cluster_sync_shared() { ::emu::cluster_sync(); }
template <class T>
inline T* cluster_map(T* p, unsigned rank) { return ::emu::cluster_map(p, rank); }
inline float* dynamic_shared() { return reinterpret_cast<float*>(::emu::cur->block->dynamic); }

// the kernels' clock (globaltimer on a GPU): 1 ms per reading, so a wait that times out
// after a second on a GPU gives up after about a thousand polls here
inline unsigned long long emu_clock_ns = 0;
inline unsigned long long tvl1_now_ns() { return emu_clock_ns += 1000000ull; }
