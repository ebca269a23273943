// CPU emulation of the small part of CUDA C++ that tvl1.cu uses, so that the kernels
// themselves (not a port of them) run and are tested on machines without a GPU.
//
// Included before the kernel source (g++ -include emulate.h). Every CUDA thread of a
// launch is a fiber (ucontext) on one OS thread, every block resident at once. A fiber
// runs until it reaches __syncthreads() or a warp shuffle, where it waits for the other
// threads of its block (or warp), or __nanosleep(), where it lets the others run (a grid
// barrier's spin-wait), so barrier semantics are CUDA's. The order in which fibers run
// and resume is a parameter of the launch: running the same kernels in forward, reverse
// and shuffled orders and comparing the results finds data races between two barriers
// (a thread reading what another writes in the same phase).
//
// Strict where CUDA leaves behaviour undefined: a __syncthreads() that not every thread
// of the block reaches, or a shuffle with an incomplete warp or mask, stops the launch
// with an error instead of hanging or giving garbage; a read of a cluster neighbour's
// shared memory after that block has ended faults.
//
// What it cannot show: timing, occupancy, register limits, memory coalescing, and any
// difference between float arithmetic here (no FMA contraction) and on the GPU.

#pragma once

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace emu {

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

struct Block {
    dim3 idx;
    std::vector<char> shared;                   // this block's __shared__ variables while another block runs
    char* dynamic = nullptr;                    // its dynamic shared memory (the launch's bytes, guarded_take)
    unsigned exited = 0;                        // threads that have ended
    unsigned arrived = 0, gen = 0;              // __syncthreads
    std::vector<unsigned> warp_arrived, warp_gen, warp_size;
    std::vector<uint64_t> lanes;                // shuffle exchange, 32 per warp
};

struct Fiber {
    ucontext_t ctx;                             // how the fiber starts (makecontext)
    jmp_buf resume;                             // where it continues after a yield
    dim3 tid;
    unsigned linear = 0;                        // within the block
    Block* block = nullptr;
    char* stack = nullptr;                      // taken when the fiber first runs, returned when it ends
    bool started = false, done = false;
    const unsigned* wait_on = nullptr;          // a generation counter this fiber waits to change
    unsigned wait_value = 0;
};

inline Fiber* cur = nullptr;
inline dim3 block_dim, grid_dim;
inline unsigned threads_per_block = 0;
inline jmp_buf scheduler;                      // where the scheduler continues when a fiber yields or ends
inline std::string error;                      // first error of the launch
inline const std::function<void()>* body = nullptr;
inline Block* resident = nullptr;              // the block whose __shared__ variables are in place
inline std::vector<char*> free_stacks;          // kept between launches
inline unsigned long idle_spins = 0;            // __nanosleep calls since a barrier last completed
inline std::vector<Block>* blocks = nullptr;     // the launch's blocks: one thread block cluster
inline size_t dynamic_bytes = 0;                // dynamic shared memory per block
inline size_t grid_threads = 0;
inline unsigned cluster_arrived = 0, cluster_gen = 0;  // the cluster barrier
constexpr size_t STACK_BYTES = 64 * 1024;
constexpr unsigned long SPIN_LIMIT = 20000000;

inline void fail(const std::string& what) {
    if (error.empty()) error = what;
}

// a fiber stack with a no-access guard page below it: an overflow faults instead of corrupting
inline char* take_stack() {
    if (!free_stacks.empty()) {
        char* s = free_stacks.back();
        free_stacks.pop_back();
        return s;
    }
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    void* base = mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    mprotect(base, page, PROT_NONE);
    return static_cast<char*>(base) + page;
}

// Memory for the emulated GPU (device allocations, a block's dynamic shared memory): `bytes`
// that end where a no-access page begins, with another no-access page before their first page;
// every byte between the two is 0xff to start with (NaN as float32). So a read or write past
// either end faults, and a read of what nobody wrote shows. nullptr when out of memory.
inline std::pair<char*, size_t> guarded_pages(char* data, size_t bytes) {  // (first guard page, span)
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t inner = (bytes + page - 1) / page * page;
    return {data + bytes - inner - page, inner + 2 * page};
}

inline char* guarded_take(size_t bytes) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t inner = (bytes + page - 1) / page * page;
    void* base = mmap(nullptr, inner + 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    char* first = static_cast<char*>(base) + page;
    mprotect(base, page, PROT_NONE);
    mprotect(first + inner, page, PROT_NONE);
    std::memset(first, 0xff, inner);
    return first + inner - bytes;
}

inline void guarded_release(char* data, size_t bytes) {
    auto [start, span] = guarded_pages(data, bytes);
    munmap(start, span);
}

// no access at all from now on (a block that has ended: its shared memory is gone)
inline void guarded_seal(char* data, size_t bytes) {
    auto [start, span] = guarded_pages(data, bytes);
    mprotect(start, span, PROT_NONE);
}

// Switching is _setjmp/_longjmp, which keep the signal mask as it is (swapcontext makes two
// system calls per switch, and a launch switches millions of times); ucontext only starts a
// fiber on its own stack.
inline void yield() {
    if (!_setjmp(cur->resume)) _longjmp(scheduler, 1);
}

}  // namespace emu

// Every __shared__ variable is placed in the section emu_shared; the linker marks its
// bounds. Blocks run interleaved, so the scheduler swaps the section's bytes whenever it
// switches to a thread of another block: each block sees only its own shared memory.
extern "C" char __start_emu_shared[] __attribute__((weak));
extern "C" char __stop_emu_shared[] __attribute__((weak));

namespace emu {

inline void make_resident(Block* b) {
    if (b == resident) return;
    size_t bytes = (size_t)(__stop_emu_shared - __start_emu_shared);
    if (bytes > 0) {
        if (resident) std::memcpy(resident->shared.data(), __start_emu_shared, bytes);
        if (b->shared.empty()) b->shared.assign(bytes, (char)0xff);  // uninitialised: NaN floats
        std::memcpy(__start_emu_shared, b->shared.data(), bytes);
    }
    resident = b;
}

inline void wait_for_change(const unsigned* counter, unsigned value) {
    cur->wait_on = counter;
    cur->wait_value = value;
    while (*counter == value && error.empty()) yield();
    cur->wait_on = nullptr;
}

inline void entry() {
    (*body)();
    cur->done = true;
    Block& b = *cur->block;
    // a block that has ended has no shared memory: a cluster neighbour that still reads it faults
    if (++b.exited == threads_per_block && b.dynamic) guarded_seal(b.dynamic, dynamic_bytes);
    if (b.arrived > 0) fail("a thread exited while others waited at __syncthreads()");
    if (b.warp_arrived[cur->linear >> 5] > 0) fail("a thread exited while its warp waited in a shuffle");
    if (cluster_arrived > 0) fail("a thread exited while others waited at the cluster barrier");
    _longjmp(scheduler, 1);  // a fiber never returns: there is no frame to return to
}

inline void syncthreads() {
    Block& b = *cur->block;
    unsigned g = b.gen;
    if (++b.arrived == threads_per_block) {  // every thread, exited ones included: CUDA's rule
        b.arrived = 0;
        ++b.gen;
        idle_spins = 0;
    } else {
        wait_for_change(&b.gen, g);
    }
}

inline void warp_sync(unsigned w) {
    Block& b = *cur->block;
    unsigned g = b.warp_gen[w];
    if (++b.warp_arrived[w] == b.warp_size[w]) {
        b.warp_arrived[w] = 0;
        ++b.warp_gen[w];
    } else {
        wait_for_change(&b.warp_gen[w], g);
    }
}

// a warp shuffle: every lane publishes its value, then reads lane `source(lane)`'s (its own when
// that is outside the warp); `what` names the intrinsic in the error
template <typename T, class Source>
T shuffle(const char* what, unsigned mask, T value, Source source) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a type wider than 64 bits");
    Block& b = *cur->block;
    unsigned lane = cur->linear & 31, w = cur->linear >> 5;
    if (b.warp_size[w] != 32 || mask != 0xffffffffu) {
        fail(std::string(what) + " needs a full warp and a full mask here (blockDim a multiple of 32)");
        return value;
    }
    uint64_t bits = 0;
    std::memcpy(&bits, &value, sizeof(T));
    b.lanes[w * 32 + lane] = bits;
    warp_sync(w);
    T out = value;
    unsigned from = source(lane);
    if (from < 32) std::memcpy(&out, &b.lanes[w * 32 + from], sizeof(T));
    warp_sync(w);
    return out;
}

template <typename T>
T shfl_down(unsigned mask, T value, int delta) {
    return shuffle("__shfl_down_sync", mask, value, [delta](unsigned lane) { return lane + delta; });
}

template <typename T>
T shfl_xor(unsigned mask, T value, int lane_mask) {
    return shuffle("__shfl_xor_sync", mask, value, [lane_mask](unsigned lane) { return (lane ^ lane_mask) & 31u; });
}

// The hardware barrier of a thread block cluster; the emulator runs a launch as one cluster
// (the driver launches exactly one), so every thread of the grid takes part.
inline void cluster_sync() {
    unsigned g = cluster_gen;
    if (++cluster_arrived == grid_threads) {
        cluster_arrived = 0;
        ++cluster_gen;
        idle_spins = 0;
    } else {
        wait_for_change(&cluster_gen, g);
    }
}

// distributed shared memory: the same offset in block `rank`'s dynamic shared memory
template <class T>
inline T* cluster_map(T* p, unsigned rank) {
    char* mine = cur->block->dynamic;
    const char* at = reinterpret_cast<const char*>(p);
    if (mine == nullptr || at < mine || at >= mine + dynamic_bytes) {
        fail("cluster_map of an address outside this block's dynamic shared memory");
        return p;
    }
    if (rank >= blocks->size()) {
        fail("cluster_map to a block outside the cluster");
        return p;
    }
    return reinterpret_cast<T*>((*blocks)[rank].dynamic + (at - mine));
}

// a thread polling memory that another block will change (a grid barrier): let the others run
inline void nanosleep_yield() {
    if (++idle_spins > SPIN_LIMIT) {
        fail("a spin-wait never ended: a grid barrier that not every block reaches?");
        return;
    }
    yield();
}

// Run body once per thread of the grid. Every block is resident at once (as a grid barrier
// needs); a fiber gets its stack when it first runs, so kernels without barriers use one.
// order: 0 runs and resumes threads in order (block by block), 1 in reverse, any other
// value in a fresh random order every round (seeded).
inline int launch(const unsigned* grid, const unsigned* block, size_t shared, unsigned order,
                  const std::function<void()>& fn) {
    error.clear();
    idle_spins = 0;
    cluster_arrived = 0;
    dynamic_bytes = shared;
    const size_t aligned = (shared + 15) / 16 * 16;  // a GPU's dynamic shared memory starts 16-byte aligned
    grid_dim = {grid[0], grid[1], grid[2]};
    block_dim = {block[0], block[1], block[2]};
    threads_per_block = block[0] * block[1] * block[2];
    unsigned blocks = grid[0] * grid[1] * grid[2];
    unsigned warps = (threads_per_block + 31) / 32;
    std::vector<Block> bs(blocks);
    for (unsigned k = 0; k < blocks; ++k) {
        Block& b = bs[k];
        b.idx = {k % grid[0], (k / grid[0]) % grid[1], k / (grid[0] * grid[1])};
        b.warp_arrived.assign(warps, 0);
        b.warp_gen.assign(warps, 0);
        b.warp_size.assign(warps, 32);
        if (threads_per_block % 32) b.warp_size[warps - 1] = threads_per_block % 32;
        b.lanes.assign(warps * 32, 0);
    }
    ::emu::blocks = &bs;
    if (shared > 0) {
        for (Block& b : bs) {
            b.dynamic = guarded_take(aligned);
            if (b.dynamic == nullptr) {
                fail("out of memory for dynamic shared memory");
                break;
            }
        }
    }
    size_t total = (size_t)blocks * threads_per_block;
    grid_threads = total;
    std::vector<Fiber> fibers(total);
    std::vector<size_t> sequence(total);
    for (size_t t = 0; t < total; ++t) {
        Fiber& f = fibers[t];
        f.block = &bs[t / threads_per_block];
        f.linear = (unsigned)(t % threads_per_block);
        f.tid = {f.linear % block_dim.x, (f.linear / block_dim.x) % block_dim.y, f.linear / (block_dim.x * block_dim.y)};
        sequence[t] = order == 1 ? total - 1 - t : t;
    }
    std::mt19937 rng(order);
    body = &fn;
    size_t live = total;
    while (live > 0 && error.empty()) {
        if (order > 1) std::shuffle(sequence.begin(), sequence.end(), rng);
        bool progressed = false;
        for (size_t t : sequence) {
            Fiber& f = fibers[t];
            if (f.done || (f.wait_on && *f.wait_on == f.wait_value)) continue;
            if (!f.started) {
                f.stack = take_stack();
                if (f.stack == nullptr) {
                    fail("out of memory for thread stacks");
                    break;
                }
            }
            cur = &f;
            make_resident(f.block);
            if (!_setjmp(scheduler)) {
                if (f.started) _longjmp(f.resume, 1);
                getcontext(&f.ctx);
                f.ctx.uc_stack.ss_sp = f.stack;
                f.ctx.uc_stack.ss_size = STACK_BYTES;
                f.ctx.uc_link = nullptr;
                makecontext(&f.ctx, entry, 0);
                f.started = true;
                setcontext(&f.ctx);
            }
            progressed = true;
            if (f.done) {
                free_stacks.push_back(f.stack);
                f.stack = nullptr;
                --live;
            }
            if (!error.empty()) break;
        }
        if (!progressed && live > 0) fail("deadlock: every thread waits at a barrier that cannot complete");
    }
    for (Fiber& f : fibers)  // threads left waiting when the launch failed
        if (f.stack) free_stacks.push_back(f.stack);
    for (Block& b : bs)
        if (b.dynamic) guarded_release(b.dynamic, aligned);
    cur = nullptr;
    body = nullptr;
    resident = nullptr;
    ::emu::blocks = nullptr;
    return error.empty() ? 0 : 1;
}

}  // namespace emu

// ---- the CUDA C++ names the kernels use ------------------------------------------------

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static __attribute__((section("emu_shared")))
#define threadIdx (::emu::cur->tid)
#define blockIdx (::emu::cur->block->idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)

using std::max;
using std::min;

inline void __syncthreads() { ::emu::syncthreads(); }

template <typename T>
inline T __shfl_down_sync(unsigned mask, T value, int delta) {
    return ::emu::shfl_down(mask, value, delta);
}

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T value, int lane_mask) {
    return ::emu::shfl_xor(mask, value, lane_mask);
}

// one OS thread runs every fiber, and a fiber only gives way at a barrier or __nanosleep: an
// atomic operation is atomic as written, and every write is visible to the next reader
inline unsigned atomicAdd(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p = old + v;
    return old;
}

inline unsigned atomicExch(unsigned* p, unsigned v) {
    unsigned old = *p;
    *p = v;
    return old;
}

inline void __threadfence() {}

inline float __frcp_rn(float x) { return 1.0f / x; }  // IEEE division: the correctly rounded reciprocal

inline void __nanosleep(unsigned) { ::emu::nanosleep_yield(); }

// CUDA's vector types, with their alignment (a float4 load or store is one 16-byte access)
struct alignas(8) float2 {
    float x, y;
};

struct alignas(16) float4 {
    float x, y, z, w;
};

inline float2 make_float2(float x, float y) { return float2{x, y}; }

inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

inline float __int_as_float(int v) {
    float f;
    std::memcpy(&f, &v, sizeof f);
    return f;
}

// ---- what the host side (tests/cuda_emulator/__init__.py) calls --------------------------------

// Device memory, guarded as emu::guarded_take says (a stray access faults, fresh memory is
// NaN), in whole 4-byte words. 0 when out of memory.
extern "C" uintptr_t emu_alloc(size_t bytes) {
    return reinterpret_cast<uintptr_t>(::emu::guarded_take((bytes + 3) / 4 * 4));
}

extern "C" void emu_free(uintptr_t ptr, size_t bytes) {
    ::emu::guarded_release(reinterpret_cast<char*>(ptr), (bytes + 3) / 4 * 4);
}

extern "C" const char* emu_error() { return ::emu::error.c_str(); }

// bytes of every __shared__ variable of the module (a kernel's own static shared memory is at most this)
extern "C" size_t emu_static_shared() { return (size_t)(__stop_emu_shared - __start_emu_shared); }
