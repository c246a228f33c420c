// Host emulation of the primitives of kernelvl_cuda.h (included from there when KV_EMU is defined): the kernels'
// own source, compiled as C++ for the CPU, run with one fiber (cooperative, round-robin, on one OS thread) per
// CUDA thread, one block at a time (or the blocks of one thread block cluster together). Warp collectives (shuffles, ldmatrix, mma) exchange their operands through a
// per-warp area between two warp barriers, and compute what the PTX ISA specifies for each lane; __syncthreads is a
// block barrier. cp.async copies land only when their thread waits for them (the latest the PTX ISA allows), so the
// emulator checks index arithmetic, fragment layouts, edge handling and the pipelines' commit/wait accounting; it
// does not model the other orders the hardware may pick, so a missing barrier can still pass here.
// Used by kernels/emu/emu_tests.cpp (run by kernels/emu/run.sh and the test suite).
#pragma once
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <algorithm>
#include <cstdio>
#include <unordered_map>
#include <vector>
#include "kv_racecheck.h"

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __restrict__ __restrict
// One block runs at a time, so a function-local static is that block's shared memory. They all live in one section,
// which the launcher fills with garbage before each block (as on the device: nothing carries over between blocks, and
// a read before the write that a missing barrier should have ordered sees the garbage, not a previous block's value).
#define __shared__ __attribute__((section("kv_shared"))) static
extern "C" __attribute__((weak)) unsigned char __start_kv_shared[], __stop_kv_shared[];   // the linker's bounds
#define KV_GRID_CONSTANT

struct kv_dim3 { unsigned x = 0, y = 0, z = 0; };
inline kv_dim3 threadIdx, blockIdx, blockDim, gridDim;   // the running fiber's (set at every switch)

// A barrier of fibers: the last of `alive` to arrive releases the others (a new generation); a fiber that has
// returned from the kernel no longer counts (as an exited thread on the device).
struct kv_emu_bar
{
    int alive = 0, count = 0;
    unsigned gen = 0;
    KV_RC(kv_rc::Bar rc; bool rcSync = true;)   // racecheck: the arrivals' clocks; false: an exchange, not a barrier
};
struct kv_emu_warp
{
    kv_emu_bar bar;
    uint32_t w[32][6];
    uint64_t addr[32];
};
struct kv_emu_group   // a warpgroup (4 warps): wgmma's operand exchange
{
    kv_emu_bar bar;
    unsigned long long a, b;
};
// An mbarrier (PTX ISA: expected arrival count, pending arrivals, transaction count, phase) and the TMA copies that will
// complete on it. Keyed by its shared-memory address in the block (the 8 bytes on the device hold this state).
struct kv_emu_tma { unsigned long long dst; const struct kv_tensor_map* map; int c0, c1, c2; KV_RC(unsigned long long bar; kv_rc::Snap snap; uintptr_t pc;) };
struct kv_emu_mbar
{
    bool init = false;
    int count = 0, pending = 0;
    long long tx = 0;
    unsigned phase = 0;
    std::vector<kv_emu_tma> copies;   // issued, not yet landed
    KV_RC(kv_rc::MBar rc;)
};
struct kv_emu_cluster;
struct kv_emu_block
{
    kv_emu_bar bar;
    std::unordered_map<unsigned long long, kv_emu_mbar> mbars;
    std::unordered_map<int, kv_emu_bar> named;   // bar.sync id, count (ids 1..15)
    kv_emu_warp* warps;
    kv_emu_group* groups;
    unsigned char* dyn;
    size_t dynBytes;
    int rank = 0, live = 0;   // rank in the cluster; threads that have not returned (0: exited)
    kv_emu_cluster* cluster;
};
// A thread block cluster: its blocks run together (their threads' fibers in one schedule); barrier.cluster is a
// barrier of all their threads. A kernel launched without clusters runs as clusters of one block.
struct kv_emu_cluster
{
    kv_emu_bar bar;
    kv_emu_block* blocks;
    int size;
};
inline kv_emu_block* kv_emu_cur;

// Fibers: x86-64 System V context switch (callee-saved registers on the fiber's own stack; no signal mask, no
// system call), so that a switch costs nanoseconds: the kernels switch at every warp collective.
extern "C" void kv_emu_switch(void** saveSp, void* loadSp);
asm(R"(
    .text
    .globl kv_emu_switch
    .type kv_emu_switch, @function
kv_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size kv_emu_switch, .-kv_emu_switch
)");
inline void* kv_emu_mainSp;
inline void** kv_emu_selfSp;
// Set by a wait that found nothing changed since the fiber's last switch (it yields again without progress): the
// scheduler's deadlock test (every live fiber idle since the last progress) and the starve mode read it.
inline bool kv_emu_idle;
KV_EMU_FN static inline void kv_emu_yield() { kv_emu_switch(kv_emu_selfSp, kv_emu_mainSp); }
KV_EMU_FN static inline void kv_emu_arrive(kv_emu_bar& b)
{
    KV_RC(if (b.rcSync) kv_rc::bar_arrive(b.rc);)
    if (++b.count >= b.alive) { b.count = 0; b.gen++; KV_RC(kv_rc::bar_release(b.rc);) return; }
    unsigned g = b.gen;
    kv_emu_yield();   // after arriving: progress
    while (b.gen == g) { kv_emu_idle = true; kv_emu_yield(); }
}
KV_EMU_FN static inline void kv_emu_leave(kv_emu_bar& b)
{
    b.alive--;
    if (b.count > 0 && b.count >= b.alive) { b.count = 0; b.gen++; KV_RC(kv_rc::bar_release(b.rc);) }
}

typedef unsigned long long kv_saddr;   // the host address itself
#define KV_DYNAMIC_SHARED(type, name) type* name = (type*)kv_emu_cur->dyn

KV_EMU_FN static inline kv_emu_warp& kv_emu_w() { return kv_emu_cur->warps[threadIdx.x >> 5]; }
KV_EMU_FN static inline int kv_emu_lane() { return (int)(threadIdx.x & 31); }

KV_EMU_FN static inline void __syncthreads() { kv_emu_arrive(kv_emu_cur->bar); }
KV_EMU_FN static inline void kv_syncwarp() { kv_emu_arrive(kv_emu_w().bar); }

KV_EMU_FN static inline uint32_t kv_emu_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
KV_EMU_FN static inline float kv_emu_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

KV_EMU_FN static inline uint32_t kv_emu_shfl(uint32_t v, int o)
{
    auto& w = kv_emu_w();
    int l = kv_emu_lane();
    w.w[l][0] = v;
    kv_emu_arrive(w.bar);
    uint32_t r = w.w[l ^ o][0];
    kv_emu_arrive(w.bar);
    return r;
}
KV_EMU_FN static inline float __shfl_xor_sync(unsigned, float v, int o) { return kv_emu_float(kv_emu_shfl(kv_emu_bits(v), o)); }
KV_EMU_FN static inline int __shfl_xor_sync(unsigned, int v, int o) { return (int)kv_emu_shfl((uint32_t)v, o); }

KV_EMU_FN static inline float kv_int_as_float(int i) { return kv_emu_float((uint32_t)i); }
KV_EMU_FN static inline float kv_max(float a, float b) { return std::fmax(a, b); }
KV_EMU_FN static inline float kv_sqrt(float x) { return std::sqrt(x); }
KV_EMU_FN static inline float kv_rcp(float x) { return 1.0f / x; }
KV_EMU_FN static inline float kv_fma(float a, float b, float c) { return std::fma(a, b, c); }
KV_EMU_FN static inline unsigned long long kv_globaltimer()
{
    return (unsigned long long)std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
KV_EMU_FN static inline unsigned long long kv_clock64() { return kv_globaltimer(); }   // (a 1 GHz clock)
KV_EMU_FN static inline float kv_exp2(float x) { return std::exp2(x); }
KV_EMU_FN static inline float kv_log2(float x) { return std::log2(x); }

// bf16: the upper half of the f32, rounded to nearest even (finite inputs).
KV_EMU_FN static inline uint32_t kv_emu_bf16(float x)
{
    uint32_t u = kv_emu_bits(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u >> 16;   // inf / nan: truncate
    u += 0x7fffu + ((u >> 16) & 1u);
    return u >> 16;
}
KV_EMU_FN static inline unsigned kv_pack_bf16(float lo, float hi) { return kv_emu_bf16(lo) | (kv_emu_bf16(hi) << 16); }
KV_EMU_FN static inline float kv_emu_bf16_to_f32(uint32_t h) { return kv_emu_float(h << 16); }

// IEEE half: f32 -> f16 round to nearest even (overflow to inf, subnormals), f16 -> f32 exact.
KV_EMU_FN static inline unsigned short kv_f16_bits(float x)
{
    uint32_t u = kv_emu_bits(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
    if (a >= 0x7f800000u) return (unsigned short)(sign | 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u));
    if (a >= 0x477ff000u) return (unsigned short)(sign | 0x7c00u);             // >= 65520 rounds to inf
    if (a < 0x38800000u)                                                        // below 2^-14: subnormal half
    {
        float f = kv_emu_float(a) * 16777216.0f;                                // exact: scale by 2^24 (units of 2^-24)
        float r = std::nearbyint(f);                                            // round half to even (default mode)
        return (unsigned short)(sign | (uint32_t)r);
    }
    uint32_t mant = a & 0x7fffffu, exp = (a >> 23) - 112;                      // rebias 127 -> 15
    uint32_t h = (exp << 10) | (mant >> 13), rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;                  // may carry into the exponent: right
    return (unsigned short)(sign | h);
}
KV_EMU_FN static inline float kv_f16_to_f32(unsigned short h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0) { float f = (float)m * (1.0f / 16777216.0f); return sign ? -f : f; }
    if (e == 31) return kv_emu_float(sign | 0x7f800000u | (m << 13));
    return kv_emu_float(sign | ((e + 112) << 23) | (m << 13));
}

// mma.sync m16n8kK, row.col, f32 accumulate: every lane deposits its fragments (a0..a3, b0, b1), then computes its
// own four outputs from all lanes' fragments: elem(lane, reg, which) reads one operand element; A and B map (row, k)
// and (k, col) to it by the fragment layouts of kernelvl_cuda.h.
template <int K, class Elem, class FA, class FB>
KV_EMU_FN static inline void kv_emu_mma(float* d, const uint32_t (&mine)[6], Elem elem, FA A, FB B)
{
    auto& w = kv_emu_w();
    int l = kv_emu_lane();
    std::memcpy(w.w[l], mine, sizeof mine);
    kv_emu_arrive(w.bar);
    int g = l >> 2, t = l & 3;
    float out[4];
    for (int e = 0; e < 4; e++)
    {
        int row = g + 8 * (e >> 1), col = 2 * t + (e & 1);
        float s = 0.f;
        for (int k = 0; k < K; k++) s += A(w, row, k, elem) * B(w, k, col, elem);
        out[e] = d[e] + s;
    }
    kv_emu_arrive(w.bar);
    for (int e = 0; e < 4; e++) d[e] = out[e];
}

// k16 with 16-bit operands: A(row, k) in lane (row % 8) * 4 + (k % 8) / 2, register (row >= 8) + 2 (k >= 8), half k % 2;
// B(k, col) in lane col * 4 + (k % 8) / 2, register 4 + (k >= 8), half k % 2.
template <bool BF16>
KV_EMU_FN static inline void kv_emu_mma16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    const uint32_t mine[6] = {a0, a1, a2, a3, b0, b1};
    auto half = [](kv_emu_warp& w, int lane, int reg, int hi) {
        uint32_t v = (w.w[lane][reg] >> (hi ? 16 : 0)) & 0xffffu;
        return BF16 ? kv_emu_bf16_to_f32(v) : kv_f16_to_f32((unsigned short)v);
    };
    kv_emu_mma<16>(d, mine, half,
        [](kv_emu_warp& w, int row, int k, auto h) { return h(w, (row & 7) * 4 + ((k & 7) >> 1), (row < 8 ? 0 : 1) + (k < 8 ? 0 : 2), k & 1); },
        [](kv_emu_warp& w, int k, int col, auto h) { return h(w, col * 4 + ((k & 7) >> 1), k < 8 ? 4 : 5, k & 1); });
}
KV_EMU_FN static inline void kv_mma_bf16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) { kv_emu_mma16<true>(d, a0, a1, a2, a3, b0, b1); }
KV_EMU_FN static inline void kv_mma_f16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) { kv_emu_mma16<false>(d, a0, a1, a2, a3, b0, b1); }

// tf32: round the f32 to 10 mantissa bits, ties away from zero (finite inputs).
KV_EMU_FN static inline unsigned kv_tf32(float x)
{
    uint32_t u = kv_emu_bits(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return u & ~0x1fffu;
    return (u + 0x1000u) & ~0x1fffu;
}

// mma.sync m16n8k8 tf32 (the tensor cores read the upper 19 bits of each register): A(row, k) in lane
// (row % 8) * 4 + k % 4, register (row >= 8) + 2 (k >= 4); B(k, col) in lane col * 4 + k % 4, register 4 + (k >= 4).
KV_EMU_FN static inline void kv_mma_tf32(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    const uint32_t mine[6] = {a0, a1, a2, a3, b0, b1};
    auto val = [](kv_emu_warp& w, int lane, int reg, int) { return kv_emu_float(w.w[lane][reg] & ~0x1fffu); };
    kv_emu_mma<8>(d, mine, val,
        [](kv_emu_warp& w, int row, int k, auto v) { return v(w, (row & 7) * 4 + (k & 3), (row < 8 ? 0 : 1) + (k < 4 ? 0 : 2), 0); },
        [](kv_emu_warp& w, int k, int col, auto v) { return v(w, col * 4 + (k & 3), k < 4 ? 4 : 5, 0); });
}

KV_EMU_FN static inline kv_saddr kv_smem(const void* p) { return (kv_saddr)(uintptr_t)p; }

// cp.async as the PTX ISA allows it to behave at its slowest: a copy lands only when its thread waits for its group
// (cp.async.wait_group N applies every committed group but the newest N). A kernel that reads a stage before waiting
// for it reads what was there before (garbage or an older tile), and the emulator's references catch that.
// A thread's asynchronous operations in commit groups (cp.async's and wgmma's alike): retire(N, apply) applies every
// committed group but the newest N, oldest first.
template <class Op>
struct kv_emu_groups
{
    std::vector<Op> open;                  // issued, not yet committed
    std::vector<std::vector<Op>> groups;   // committed, oldest first
    void commit()
    {
        groups.push_back(std::move(open));
        open.clear();
    }
    template <class F>
    void retire(size_t keep, F apply)
    {
        while (groups.size() > keep)
        {
            for (auto& op : groups.front()) apply(op);
            groups.erase(groups.begin());
        }
    }
};
struct kv_emu_copy { kv_saddr dst; const void* src; int bytes; KV_RC(kv_rc::Snap snap; uintptr_t pc;) };
using kv_emu_copies = kv_emu_groups<kv_emu_copy>;
inline kv_emu_copies* kv_emu_pending;               // the running fiber's
// The other modes. "race": copies land at once and fibers are resumed in a random order, skipping some passes, so
// that warps run ahead of each other between barriers: a missing __syncthreads shows as a read of a stage that another
// warp has already overwritten. "starve": copies land at once, and one victim (a warp, a warpgroup, or every warp but
// one) is resumed only when every other live fiber is stuck, for a few such turns, then another victim is drawn: the
// rest of the block runs as far ahead of the victim as the barriers let it, the schedule that exposes a barrier
// missing between a slow warp's read and a fast warp's next write (which race mode's short stalls rarely produce).
inline bool kv_emu_eager = false, kv_emu_shuffle = false, kv_emu_starve = false;
inline uint64_t kv_emu_rng = 0x9e3779b97f4a7c15ull;
KV_EMU_FN static inline uint32_t kv_emu_rand()
{
    kv_emu_rng ^= kv_emu_rng << 13; kv_emu_rng ^= kv_emu_rng >> 7; kv_emu_rng ^= kv_emu_rng << 17;
    return (uint32_t)kv_emu_rng;
}
KV_EMU_FN static inline void kv_emu_set_mode(const char* mode)
{
    const bool race = mode && std::strcmp(mode, "race") == 0;
    kv_emu_starve = mode && std::strcmp(mode, "starve") == 0;
    kv_emu_eager = kv_emu_shuffle = race || kv_emu_starve;
    const bool racecheck = mode && std::strcmp(mode, "racecheck") == 0;   // the ordered schedule, with kv_racecheck.h's detector
    KV_RC(kv_rc::on = racecheck;)
#if !defined(KV_RACECHECK)
    if (racecheck) { std::fprintf(stderr, "KV_EMU_MODE=racecheck needs the racecheck build (kernels/emu/run.sh)\n"); std::exit(2); }
#endif
}
// A 16-byte cp.async lands: its first `bytes` (the source size) copied, the rest zeros (the zero-fill of edge rows).
KV_EMU_FN static inline void kv_emu_land(const kv_emu_copy& c)
{
    if (c.bytes < 0 || c.bytes > 16) { std::fprintf(stderr, "cp.async source size %d outside 0..16\n", c.bytes); std::abort(); }
    KV_RC(kv_rc::async_access(c.dst, 16, true, c.snap, c.pc, "cp.async");)
    if (c.bytes > 0) std::memcpy((void*)(uintptr_t)c.dst, c.src, (size_t)c.bytes);
    std::memset((void*)(uintptr_t)(c.dst + c.bytes), 0, (size_t)(16 - c.bytes));
}
KV_EMU_FN static inline void kv_cp_async16(kv_saddr dst, const void* src, int bytes)
{
    kv_emu_copy c{dst, src, bytes};
    KV_RC(c.snap = kv_rc::snapshot(); c.pc = KV_RC_PC;)
    if (kv_emu_eager) kv_emu_land(c);
    else kv_emu_pending->open.push_back(c);
}
KV_EMU_FN static inline void kv_cp_async_commit() { kv_emu_pending->commit(); }
template <int N>
KV_EMU_FN static inline void kv_cp_async_wait()
{
    kv_emu_pending->retire(N, kv_emu_land);
}

// ldmatrix .x4: lane l gives the address of row l % 8 of matrix l / 8 (rows of 8 b16 = 16 bytes).
template <bool TRANS>
KV_EMU_FN static inline void kv_emu_ldmatrix(kv_saddr addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    auto& w = kv_emu_w();
    int l = kv_emu_lane();
    w.addr[l] = addr;
    kv_emu_arrive(w.bar);
    auto b16 = [&](int matrix, int row, int col) {
        uint16_t v;
        std::memcpy(&v, (const void*)(uintptr_t)(w.addr[matrix * 8 + row] + 2 * col), 2);
        return (uint32_t)v;
    };
    unsigned r[4];
    for (int j = 0; j < 4; j++)
        r[j] = TRANS ? b16(j, 2 * (l & 3), l >> 2) | (b16(j, 2 * (l & 3) + 1, l >> 2) << 16)
                     : b16(j, l >> 2, 2 * (l & 3)) | (b16(j, l >> 2, 2 * (l & 3) + 1) << 16);
    kv_emu_arrive(w.bar);
    r0 = r[0]; r1 = r[1]; r2 = r[2]; r3 = r[3];
}
KV_EMU_FN static inline void kv_ldmatrix_x4(kv_saddr a, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) { kv_emu_ldmatrix<false>(a, r0, r1, r2, r3); }
KV_EMU_FN static inline void kv_ldmatrix_x4_trans(kv_saddr a, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3) { kv_emu_ldmatrix<true>(a, r0, r1, r2, r3); }

KV_EMU_FN static inline void kv_st_shared16(kv_saddr addr, unsigned a, unsigned b, unsigned c, unsigned d)
{
    KV_RC(kv_rc::plain(addr, 16, true, false, KV_RC_PC, "st.shared.v4");)
    unsigned v[4] = {a, b, c, d};
    std::memcpy((void*)(uintptr_t)addr, v, 16);
}
KV_EMU_FN static inline void kv_ld_nc_v4(const void* p, unsigned& a, unsigned& b, unsigned& c, unsigned& d)
{
    unsigned v[4];
    std::memcpy(v, p, 16);
    a = v[0]; b = v[1]; c = v[2]; d = v[3];
}
KV_EMU_FN static inline void kv_ld_nc_f4(const float* p, float* v) { std::memcpy(v, p, 16); }

KV_EMU_FN static inline int kv_atomic_add_shared(kv_saddr addr, int v)
{
    KV_RC(kv_rc::plain(addr, 4, true, true, KV_RC_PC, "atomicAdd");)
    return __atomic_fetch_add((int*)(uintptr_t)addr, v, __ATOMIC_RELAXED);
}
KV_EMU_FN static inline void kv_set_flag_shared(int* p)
{
    KV_RC(kv_rc::plain((uintptr_t)p, 4, true, true, KV_RC_PC, "flag store");)
    *p = 1;
}
KV_EMU_FN static inline void kv_atomic_max_nonneg(float* p, float v)
{
    int bits = (int)kv_emu_bits(v), old = __atomic_load_n((int*)p, __ATOMIC_RELAXED);
    while (old < bits && !__atomic_compare_exchange_n((int*)p, &old, bits, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {}
}

// ---- sm_90a: wgmma on descriptors, emulated as the PTX ISA describes the K-major 128B-swizzled layout ----
// wgmma is asynchronous: an operation is recorded when issued (the warpgroup agreeing on its descriptors) and computed,
// reading shared memory, only when its thread's wgmma.wait_group retires its group (the latest the PTX ISA allows),
// so a kernel that lets a stage be overwritten while a wgmma in flight still reads it fails here.
// type 0 bf16, 1 f16, 2 tf32; n 256 (A from shared memory, descriptor a) or 64 (A from registers: this thread's two
// rows, gathered from its warp at issue, in arow)
struct kv_emu_wgmma_op { float* d; unsigned long long a, b; int type; bool accumulate; int n; float arow[2][16]; KV_RC(kv_rc::Snap snap; uintptr_t pc;) };
using kv_emu_wgmmas = kv_emu_groups<kv_emu_wgmma_op>;
inline kv_emu_wgmmas* kv_emu_wpending;   // the running fiber's
KV_EMU_FN static inline void kv_emu_wgmma_compute(const kv_emu_wgmma_op& op);
KV_EMU_FN static inline void kv_fence_proxy_async() {}
KV_EMU_FN static inline void kv_wgmma_fence() {}
template <int N, class T>
KV_EMU_FN static inline void kv_wgmma_fence_operand(T*) {}   // a compiler ordering constraint only (source order here)
KV_EMU_FN static inline void kv_wgmma_commit() { kv_emu_wpending->commit(); }
template <int N>
KV_EMU_FN static inline void kv_wgmma_wait() { kv_emu_wpending->retire(N, kv_emu_wgmma_compute); }

// The descriptor's start address is 14 bits of (shared address >> 4): here an offset into the block's dynamic
// shared memory (1024-aligned, so the swizzle sees the same address bits as on the device).
KV_EMU_FN static inline unsigned long long kv_wgmma_desc(kv_saddr addr)
{
    unsigned long long off = addr - (kv_saddr)(uintptr_t)kv_emu_cur->dyn;
    return ((off & 0x3ffffu) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

// Element (row, k) of a K-major bf16 operand: 8-row groups SBO bytes apart, rows 128 bytes apart within a group, k
// along the row; then the 128B swizzle XORs address bits 4-6 with bits 7-9.
KV_EMU_FN static inline unsigned long long kv_emu_wgmma_off(unsigned long long desc, int row, int k, int type)
{
    if (((desc >> 62) & 3) != 1 || ((desc >> 16) & 0x3fff) != 1) std::abort();   // only what kernels/gemm_sm90.cu uses
    unsigned long long start = (desc & 0x3fff) << 4, sbo = ((desc >> 32) & 0x3fff) << 4, bytes = type == 2 ? 4 : 2;
    unsigned long long off = start + (unsigned long long)(row / 8) * sbo + (unsigned long long)(row % 8) * 128 + bytes * k;
    return off ^ (((off >> 7) & 7) << 4);
}
KV_EMU_FN static inline float kv_emu_wgmma_elem(unsigned long long desc, int row, int k, int type = 0)
{
    const unsigned long long off = kv_emu_wgmma_off(desc, row, k, type);
    if (type == 2)   // tf32: the top 19 bits of the f32 pattern
    {
        uint32_t u;
        std::memcpy(&u, kv_emu_cur->dyn + off, 4);
        return kv_emu_float(u & 0xffffe000u);
    }
    uint16_t v;
    std::memcpy(&v, kv_emu_cur->dyn + off, 2);
    return type == 1 ? kv_f16_to_f32(v) : kv_emu_bf16_to_f32(v);
}

KV_EMU_FN static inline void kv_emu_wgmma_issue(float* d, unsigned long long a, unsigned long long b, int type, bool accumulate, uintptr_t pc = 0)
{
    auto& G = kv_emu_cur->groups[threadIdx.x >> 7];
    int idx = (int)(threadIdx.x & 127);
    if (idx == 0) { G.a = a; G.b = b; }
    kv_emu_arrive(G.bar);
    if (G.a != a || G.b != b) std::abort();   // the warpgroup must agree on its operands
    kv_emu_arrive(G.bar);
    kv_emu_wgmma_op op{};
    op.d = d; op.a = a; op.b = b; op.type = type; op.accumulate = accumulate; op.n = 256;
    KV_RC(op.snap = kv_rc::snapshot(); op.pc = pc;)
    (void)pc;
    kv_emu_wpending->open.push_back(op);
}
// Register-A m64n64k16 bf16: the warp's A fragments exchanged (as kv_mma_bf16's are) so that each thread records
// rows g and g + 8 of its warp's 16 x 16 slice; the warpgroup agrees on b.
KV_EMU_FN static inline void kv_wgmma_m64n64k16_bf16_rs(float* d, const unsigned* a, unsigned long long b, int accumulate)
{
    auto& G = kv_emu_cur->groups[threadIdx.x >> 7];
    auto& W = kv_emu_w();
    const int lane = kv_emu_lane(), g = lane >> 2;
    if ((threadIdx.x & 127) == 0) G.b = b;
    for (int j = 0; j < 4; j++) W.w[lane][j] = a[j];
    kv_emu_arrive(G.bar);
    if (G.b != b) std::abort();   // the warpgroup must agree on its operands
    kv_emu_wgmma_op op{};
    op.d = d; op.b = b; op.type = 0; op.accumulate = accumulate != 0; op.n = 64;
    for (int tt = 0; tt < 4; tt++)   // lane 4 g + tt holds k 2tt, 2tt+1 (a0: row g, a1: row g+8) and 2tt+8, 2tt+9 (a2, a3)
        for (int h = 0; h < 2; h++)
        {
            uint32_t lo = W.w[4 * g + tt][h], hi = W.w[4 * g + tt][2 + h];
            op.arow[h][2 * tt] = kv_emu_bf16_to_f32(lo & 0xffff); op.arow[h][2 * tt + 1] = kv_emu_bf16_to_f32(lo >> 16);
            op.arow[h][2 * tt + 8] = kv_emu_bf16_to_f32(hi & 0xffff); op.arow[h][2 * tt + 9] = kv_emu_bf16_to_f32(hi >> 16);
        }
    kv_emu_arrive(G.bar);   // every lane has read the exchange before it is written again
    KV_RC(op.snap = kv_rc::snapshot(); op.pc = KV_RC_PC;)
    kv_emu_wpending->open.push_back(op);
}
KV_EMU_FN static inline void kv_wgmma_m64n256k16_bf16(float* d, unsigned long long a, unsigned long long b, int accumulate) { kv_emu_wgmma_issue(d, a, b, 0, accumulate != 0 KV_RC(, KV_RC_PC)); }
KV_EMU_FN static inline void kv_wgmma_m64n256k16_f16(float* d, unsigned long long a, unsigned long long b, int accumulate) { kv_emu_wgmma_issue(d, a, b, 1, accumulate != 0 KV_RC(, KV_RC_PC)); }
KV_EMU_FN static inline void kv_wgmma_m64n256k8_tf32(float* d, unsigned long long a, unsigned long long b, int accumulate) { kv_emu_wgmma_issue(d, a, b, 2, accumulate != 0 KV_RC(, KV_RC_PC)); }

template <int N>
KV_EMU_FN static inline void kv_setmaxnreg_dec() {}
template <int N>
KV_EMU_FN static inline void kv_setmaxnreg_inc() {}

// bar.sync id, count: the first `count` threads to arrive release each other (the named barrier's generation).
KV_EMU_FN static inline void kv_named_barrier(int id, int count)
{
    auto& b = kv_emu_cur->named[id];
    b.alive = count;
    kv_emu_arrive(b);
}

KV_EMU_FN static inline void kv_emu_wgmma_compute(const kv_emu_wgmma_op& op)
{
    int idx = (int)(threadIdx.x & 127), w = idx >> 5, lane = idx & 31, g = lane >> 2, t = lane & 3;
#if defined(KV_RACECHECK)
    // racecheck: what the warp's lanes read together (A's rows 16 w .. 16 w + 15 unless A is in registers, all of B's
    // n rows, the K of one instruction), recorded once, by lane 0, as of the operation's issue
    if (kv_rc::on && lane == 0)
    {
        const int kn = op.type == 2 ? 8 : 16, bytes = op.type == 2 ? 4 : 2;
        for (int k = 0; k < kn; k++)
        {
            if (op.n == 256)
                for (int row = 16 * w; row < 16 * w + 16; row++)
                    kv_rc::async_access((uintptr_t)(kv_emu_cur->dyn + kv_emu_wgmma_off(op.a, row, k, op.type)), bytes, false, op.snap, op.pc, "wgmma operand read");
            for (int col = 0; col < op.n; col++)
                kv_rc::async_access((uintptr_t)(kv_emu_cur->dyn + kv_emu_wgmma_off(op.b, col, k, op.type)), bytes, false, op.snap, op.pc, "wgmma operand read");
        }
    }
#endif
    if (op.n == 64)
    {
        for (int i = 0; i < 8; i++)
            for (int h = 0; h < 2; h++)
                for (int e = 0; e < 2; e++)
                {
                    int col = 8 * i + 2 * t + e;
                    float s = 0.f;
                    for (int k = 0; k < 16; k++) s += op.arow[h][k] * kv_emu_wgmma_elem(op.b, col, k, 0);
                    op.d[4 * i + 2 * h + e] = op.accumulate ? op.d[4 * i + 2 * h + e] + s : s;
                }
        return;
    }
    for (int i = 0; i < 32; i++)
        for (int h = 0; h < 2; h++)
            for (int e = 0; e < 2; e++)
            {
                int row = 16 * w + g + 8 * h, col = 8 * i + 2 * t + e;
                float s = 0.f;
                for (int k = 0; k < (op.type == 2 ? 8 : 16); k++) s += kv_emu_wgmma_elem(op.a, row, k, op.type) * kv_emu_wgmma_elem(op.b, col, k, op.type);
                op.d[4 * i + 2 * h + e] = op.accumulate ? op.d[4 * i + 2 * h + e] + s : s;
            }
}

// ---- sm_90a: TMA and mbarriers ----
// kv_tensor_map's bytes as the emulator encodes them (kv_emu_encode_tensor_map, standing in for cuTensorMapEncodeTiled):
// a tiled 3-D map of 2-byte elements, the box's inner extent 128 bytes, the 128B swizzle, zero fill out of bounds.
struct kv_emu_tensor_map
{
    const unsigned char* base;
    unsigned long long dims[3];      // elements, innermost first
    unsigned long long strides[2];   // bytes between consecutive indices of dims 1 and 2
    unsigned box[3];
    unsigned elem;                   // bytes per element (2: bf16 / f16, 4: f32)
};
static_assert(sizeof(kv_emu_tensor_map) <= sizeof(kv_tensor_map), "the emulated map fits in the opaque bytes");
KV_EMU_FN static inline void kv_emu_encode_tensor_map(kv_tensor_map* map, const void* base, const unsigned long long dims[3],
                                            const unsigned long long strides[2], const unsigned box[3], unsigned elem = 2)
{
    // cuTensorMapEncodeTiled's rules that the kernels rely on: 16-byte aligned base and strides, box <= 256 a side.
    if ((uintptr_t)base % 16 || strides[0] % 16 || strides[1] % 16 || box[0] * elem != 128 || box[1] > 256 || box[2] > 256)
    {
        std::fprintf(stderr, "kv_emu_encode_tensor_map: arguments cuTensorMapEncodeTiled would reject\n");
        std::abort();
    }
    kv_emu_tensor_map m{(const unsigned char*)base, {dims[0], dims[1], dims[2]}, {strides[0], strides[1]}, {box[0], box[1], box[2]}, elem};
    std::memset(map, 0, sizeof *map);
    std::memcpy(map, &m, sizeof m);
}
// The block of the running thread's cluster whose dynamic shared memory holds `addr` (a mapa address of another block),
// else the running block (static shared memory).
KV_EMU_FN static inline kv_emu_block& kv_emu_block_of(kv_saddr addr)
{
    auto* c = kv_emu_cur->cluster;
    for (int r = 0; c && r < c->size; r++)
    {
        auto& b = c->blocks[r];
        if (addr >= (kv_saddr)(uintptr_t)b.dyn && addr < (kv_saddr)(uintptr_t)b.dyn + b.dynBytes) return b;
    }
    return *kv_emu_cur;
}
// The plain (shared::cta) operations take only the running block's own addresses: a mapa address of another block of
// the cluster there is a bug on the device (the cluster forms, kv_mbar_arrive_cluster and the multicast, take those).
KV_EMU_FN static inline void kv_emu_own(kv_saddr addr, const char* what)
{
    if (&kv_emu_block_of(addr) != kv_emu_cur) { std::fprintf(stderr, "%s on another block's shared memory\n", what); std::abort(); }
}
KV_EMU_FN static inline kv_emu_mbar& kv_emu_mb(kv_saddr bar)
{
    auto& m = kv_emu_block_of(bar).mbars[bar];
    if (bar % 8) { std::fprintf(stderr, "mbarrier at a shared address that is not 8-byte aligned\n"); std::abort(); }
    return m;
}
KV_EMU_FN static inline void kv_emu_mbar_check(kv_emu_mbar& m)
{
    if (m.pending == 0 && m.tx == 0) { m.phase++; m.pending = m.count; KV_RC(kv_rc::mbar_complete(m.rc);) }
}
KV_EMU_FN static inline void kv_mbar_init(kv_saddr bar, unsigned count)
{
    kv_emu_own(bar, "mbarrier init");
    KV_RC(kv_rc::plain(bar, 8, true, false, KV_RC_PC, "mbarrier init");)
    auto& m = kv_emu_mb(bar);
    m = {};
    m.init = true;
    m.count = m.pending = (int)count;
}
KV_EMU_FN static inline void kv_fence_mbar_init() {}
KV_EMU_FN static inline void kv_emu_mbar_arrive(kv_saddr bar, long long tx)
{
    auto& m = kv_emu_mb(bar);
    if (!m.init) { std::fprintf(stderr, "arrival on an mbarrier that was not initialised\n"); std::abort(); }
    m.tx += tx;
    KV_RC(kv_rc::release_into(m.rc.acc);)
    if (--m.pending < 0) { std::fprintf(stderr, "more arrivals on an mbarrier than its count\n"); std::abort(); }
    kv_emu_mbar_check(m);
}
KV_EMU_FN static inline void kv_mbar_arrive(kv_saddr bar)
{
    kv_emu_own(bar, "mbarrier arrive");
    KV_RC(kv_rc::plain(bar, 8, true, true, KV_RC_PC, "mbarrier arrive");)
    kv_emu_mbar_arrive(bar, 0);
}
KV_EMU_FN static inline void kv_mbar_arrive_expect_tx(kv_saddr bar, unsigned bytes)
{
    kv_emu_own(bar, "mbarrier arrive.expect_tx");
    KV_RC(kv_rc::plain(bar, 8, true, true, KV_RC_PC, "mbarrier arrive.expect_tx");)
    kv_emu_mbar_arrive(bar, bytes);
}
// One TMA copy lands: the box, the 128B swizzle applied to the destination's address bits (4-6 ^= 7-9), zeros where the
// coordinates fall outside the tensor; its bytes complete on the barrier.
KV_EMU_FN static inline void kv_emu_tma_land(kv_emu_mbar& m, const kv_emu_tma& c)
{
    kv_emu_tensor_map t;
    std::memcpy(&t, c.map, sizeof t);
    for (unsigned z = 0; z < t.box[2]; z++)
        for (unsigned r = 0; r < t.box[1]; r++)
            for (unsigned e = 0; e < t.box[0]; e++)
            {
                long long x = (long long)c.c0 + e, y = (long long)c.c1 + r, w = (long long)c.c2 + z;
                uint32_t v = 0;
                if (x >= 0 && y >= 0 && w >= 0 && (unsigned long long)x < t.dims[0] && (unsigned long long)y < t.dims[1] && (unsigned long long)w < t.dims[2])
                    std::memcpy(&v, t.base + w * t.strides[1] + y * t.strides[0] + t.elem * x, t.elem);
                unsigned long long a = c.dst + ((unsigned long long)z * t.box[1] + r) * 128 + t.elem * e;
                a ^= ((a >> 7) & 7) << 4;
                KV_RC(kv_rc::tma_write(a, (int)t.elem, c.bar, m.rc, c.snap, c.pc);)
                std::memcpy((void*)(uintptr_t)a, &v, t.elem);
            }
    m.tx -= (long long)t.elem * t.box[0] * t.box[1] * t.box[2];
    kv_emu_mbar_check(m);
}
// Ordered mode: a copy lands when some thread first waits on its barrier (as late as it can); race mode: at once.
KV_EMU_FN static inline void kv_tma_load_3d(kv_saddr dst, const kv_tensor_map* map, int c0, int c1, int c2, kv_saddr bar)
{
    kv_emu_own(dst, "TMA load's destination");
    kv_emu_own(bar, "TMA load's mbarrier");
    if ((dst - (kv_saddr)(uintptr_t)kv_emu_cur->dyn) % 1024) { std::fprintf(stderr, "TMA destination not 1024-aligned (128B swizzle)\n"); std::abort(); }
    auto& m = kv_emu_mb(bar);
    kv_emu_tma c{dst, map, c0, c1, c2};
    KV_RC(c.bar = bar; c.snap = kv_rc::snapshot(); c.pc = KV_RC_PC;)
    if (kv_emu_eager) kv_emu_tma_land(m, c);
    else m.copies.push_back(c);
}
KV_EMU_FN static inline void kv_mbar_wait(kv_saddr bar, unsigned parity)
{
    kv_emu_own(bar, "mbarrier wait");
    for (long long spins = 0;; spins++)
    {
        auto& m = kv_emu_mb(bar);
        if (!m.init) { std::fprintf(stderr, "wait on an mbarrier that was not initialised\n"); std::abort(); }
        auto copies = std::move(m.copies);
        m.copies.clear();
        for (auto& c : copies) kv_emu_tma_land(m, c);
        if ((m.phase & 1) != parity)
        {
            KV_RC(kv_rc::plain(bar, 8, false, true, KV_RC_PC, "mbarrier wait"); kv_rc::acquire_from(m.rc.released);)
            return;
        }
        if (spins > 0 && copies.empty()) kv_emu_idle = true;   // (a wait that never completes: the scheduler's deadlock test)
        kv_emu_yield();
    }
}

// ---- sm_90: thread block clusters ----
KV_EMU_FN static inline unsigned kv_cluster_ctarank() { return (unsigned)kv_emu_cur->rank; }
// A block of the cluster that is still running: a remote access to one that has exited (its shared memory may already
// belong to another block on the device) aborts.
KV_EMU_FN static inline kv_emu_block& kv_emu_live_block(unsigned rank, const char* what)
{
    auto* c = kv_emu_cur->cluster;
    if (rank >= (unsigned)c->size) { std::fprintf(stderr, "%s: rank %u outside the cluster of %d\n", what, rank, c->size); std::abort(); }
    auto& b = c->blocks[rank];
    if (b.live == 0) { std::fprintf(stderr, "%s: block of rank %u of the cluster has exited\n", what, rank); std::abort(); }
    return b;
}
KV_EMU_FN static inline kv_saddr kv_mapa(kv_saddr addr, unsigned rank)
{
    unsigned long long off = addr - (kv_saddr)(uintptr_t)kv_emu_cur->dyn;
    if (off >= kv_emu_cur->dynBytes) { std::fprintf(stderr, "mapa of an address outside this block's dynamic shared memory\n"); std::abort(); }
    return (kv_saddr)(uintptr_t)kv_emu_live_block(rank, "mapa").dyn + off;
}
KV_EMU_FN static inline void kv_mbar_arrive_cluster(kv_saddr remote)
{
    auto& b = kv_emu_block_of(remote);
    if (b.live == 0) { std::fprintf(stderr, "remote mbarrier arrival on a block of the cluster that has exited\n"); std::abort(); }
    KV_RC(kv_rc::plain(remote, 8, true, true, KV_RC_PC, "remote mbarrier arrive");)
    kv_emu_mbar_arrive(remote, 0);
}
KV_EMU_FN static inline void kv_mbar_wait_cluster(kv_saddr bar, unsigned parity) { kv_mbar_wait(bar, parity); }
KV_EMU_FN static inline void kv_cluster_sync() { kv_emu_arrive(kv_emu_cur->cluster->bar); }
// The copy lands in every block of `mask` at dst's offset and completes on each one's barrier at bar's offset (each
// such copy as kv_tma_load_3d's: at the first wait on that barrier in ordered mode, at once in race mode).
KV_EMU_FN static inline void kv_tma_load_3d_multicast(kv_saddr dst, const kv_tensor_map* map, int c0, int c1, int c2, kv_saddr bar, unsigned short mask)
{
    if (mask == 0 || mask >> kv_emu_cur->cluster->size) { std::fprintf(stderr, "TMA multicast mask 0x%x outside the cluster\n", mask); std::abort(); }
    const kv_saddr dst0 = dst - (kv_saddr)(uintptr_t)kv_emu_cur->dyn, bar0 = bar - (kv_saddr)(uintptr_t)kv_emu_cur->dyn;
    if (dst0 % 1024) { std::fprintf(stderr, "TMA destination not 1024-aligned (128B swizzle)\n"); std::abort(); }
    if (dst0 >= kv_emu_cur->dynBytes || bar0 >= kv_emu_cur->dynBytes) { std::fprintf(stderr, "TMA multicast outside dynamic shared memory\n"); std::abort(); }
    for (unsigned r = 0; r < (unsigned)kv_emu_cur->cluster->size; r++)
        if (mask >> r & 1)
        {
            auto& b = kv_emu_live_block(r, "TMA multicast");
            const kv_saddr d = (kv_saddr)(uintptr_t)b.dyn + dst0, br = (kv_saddr)(uintptr_t)b.dyn + bar0;
            auto& m = b.mbars[br];
            if (!m.init) { std::fprintf(stderr, "TMA multicast onto an mbarrier that was not initialised (block %u)\n", r); std::abort(); }
            kv_emu_tma c{d, map, c0, c1, c2};
            KV_RC(c.bar = br; c.snap = kv_rc::snapshot(); c.pc = KV_RC_PC;)
            if (kv_emu_eager) kv_emu_tma_land(m, c);
            else m.copies.push_back(c);
        }
}

// Runs body() as every thread of every block of the grid: clusters of `cluster` blocks along x (1: none) one after
// another, the threads of a cluster's blocks as fibers switched at every barrier.
struct kv_emu_fiber
{
    void* sp;
    std::unique_ptr<char[]> stack;
    bool done;
    kv_emu_copies copies;
    kv_emu_wgmmas wgmmas;
};
inline void (*kv_emu_body)(void*);
inline void* kv_emu_arg;
inline kv_emu_fiber* kv_emu_running;
[[noreturn]] KV_EMU_FN static void kv_emu_entry()
{
    kv_emu_body(kv_emu_arg);
    kv_emu_running->done = true;
    kv_emu_leave(kv_emu_w().bar);
    kv_emu_leave(kv_emu_cur->groups[threadIdx.x >> 7].bar);
    kv_emu_leave(kv_emu_cur->bar);
    kv_emu_leave(kv_emu_cur->cluster->bar);
    kv_emu_cur->live--;
#if defined(KV_RACECHECK)
    if (kv_emu_cur->live == 0)
    {
        const int perBlock = (int)((blockDim.x + 31) / 32);
        kv_rc::block_exit((uintptr_t)kv_emu_cur->dyn, kv_emu_cur->rank * perBlock, perBlock);
    }
#endif
    kv_emu_yield();   // never resumed
    std::abort();
}

// The blocks of a cluster (cluster > 1) run together and each has its own dynamic shared memory, but the static
// __shared__ section is the program's one: a cluster kernel must keep all its shared memory dynamic (gemm_sm90.cu's
// do: it declares no static __shared__), else its blocks would share what the device gives each its own copy of.
template <class F>
KV_EMU_FN static void kv_emu_launch(kv_dim3 grid, unsigned threads, size_t dynamicShared, F body, unsigned cluster = 1)
{
    if (cluster == 0 || grid.x % cluster) { std::fprintf(stderr, "kv_emu_launch: grid x %u is not a multiple of the cluster's %u blocks\n", grid.x, cluster); std::abort(); }
    const size_t stackBytes = 128 * 1024, dynBytes = (dynamicShared + 1023) / 1024 * 1024 + 1024;
    const unsigned total = threads * cluster;   // the cluster's threads: fiber f is thread f % threads of block f / threads
    std::vector<std::unique_ptr<unsigned char, decltype(&std::free)>> dyns;
    for (unsigned r = 0; r < cluster; r++) dyns.emplace_back((unsigned char*)std::aligned_alloc(1024, dynBytes), &std::free);
    std::unique_ptr<kv_emu_fiber[]> fibers(new kv_emu_fiber[total]);
    for (unsigned t = 0; t < total; t++) fibers[t].stack.reset(new char[stackBytes]);
    const unsigned warpsPerBlock = (threads + 31) / 32;
    (void)warpsPerBlock;
#if defined(KV_RACECHECK)
    {
        std::vector<std::pair<uintptr_t, size_t>> regions;
        for (unsigned r = 0; r < cluster; r++) regions.push_back({(uintptr_t)dyns[r].get(), dynamicShared});
        const bool statics = cluster == 1 && __start_kv_shared;
        kv_rc::begin_launch((int)(warpsPerBlock * cluster), (int)(warpsPerBlock * 32), regions,
                            statics ? (uintptr_t)__start_kv_shared : 0, statics ? (uintptr_t)__stop_kv_shared : 0);
    }
    struct EndLaunch { ~EndLaunch() { kv_rc::end_launch(); } } endLaunch;
#endif
    kv_emu_body = [](void* p) { (*(F*)p)(); };
    kv_emu_arg = &body;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x0 = 0; x0 < grid.x; x0 += cluster)
            {
                // Garbage, as on the device; a different pattern per mode: 0xcd (floats -4e-8, ints -8e8), 0x7f (floats
                // 3.4e38: a stale threshold read from it rejects everything), 0xff (NaN, index -1).
                const int poison = kv_emu_starve ? 0xff : kv_emu_shuffle ? 0x7f : 0xcd;
                if (__start_kv_shared) std::memset(__start_kv_shared, poison, (size_t)(__stop_kv_shared - __start_kv_shared));
                std::unique_ptr<kv_emu_block[]> blocks(new kv_emu_block[cluster]);
                std::vector<std::unique_ptr<kv_emu_warp[]>> warps;
                std::vector<std::unique_ptr<kv_emu_group[]>> groups;
                kv_emu_cluster cl;
                cl.bar.alive = (int)total;
                cl.blocks = blocks.get();
                cl.size = (int)cluster;
                const unsigned ngroups = (threads + 127) / 128;
                for (unsigned r = 0; r < cluster; r++)
                {
                    warps.emplace_back(new kv_emu_warp[threads / 32]);
                    for (unsigned w = 0; w < threads / 32; w++) warps[r][w].bar.alive = 32;
                    groups.emplace_back(new kv_emu_group[ngroups]);
                    for (unsigned w = 0; w < ngroups; w++) groups[r][w].bar.alive = (int)std::min(128u, threads - 128 * w);
                    for (unsigned w = 0; w < ngroups; w++) KV_RC(groups[r][w].bar.rcSync = false;)   // wgmma's exchange: .sync is per warp
                    std::memset(dyns[r].get(), poison, dynamicShared);
                    kv_emu_block& block = blocks[r];
                    block.bar.alive = (int)threads;
                    block.warps = warps[r].get();
                    block.groups = groups[r].get();
                    block.dyn = dyns[r].get();
                    block.dynBytes = dynamicShared;
                    block.rank = (int)r;
                    block.live = (int)threads;
                    block.cluster = &cl;
                }
                blockDim = {threads, 1, 1};
                gridDim = grid;
                KV_RC(kv_rc::begin_cluster();)
                for (unsigned t = 0; t < total; t++)
                {
                    // A fresh stack whose first switch "returns" into kv_emu_entry as if called (rsp % 16 == 8 there).
                    kv_emu_fiber& f = fibers[t];
                    f.done = false;
                    f.copies = {};
                    f.wgmmas = {};
                    auto top = (uintptr_t)(f.stack.get() + stackBytes) & ~(uintptr_t)15;
                    void** sp = (void**)top;
                    *--sp = nullptr;                       // the entry's (never used) return address
                    *--sp = (void*)&kv_emu_entry;          // popped by kv_emu_switch's ret
                    for (int r = 0; r < 6; r++) *--sp = nullptr;   // rbp rbx r12 r13 r14 r15
                    f.sp = sp;
                }
                std::vector<unsigned> order(total);
                for (unsigned t = 0; t < total; t++) order[t] = t;
                // idle[t]: fiber t has been resumed and found nothing to do since the last progress of any fiber.
                // Every live fiber idle = none can ever go on (their state changes only through each other): deadlock.
                std::vector<char> idle(total, 0), victim(total, 0);
                unsigned idleCount = 0, victimTurns = 0;
                auto drawVictim = [&] {   // a warp, a warpgroup, or every warp but one, of any block of the cluster
                    const unsigned warpsN = total / 32, w = kv_emu_rand() % warpsN, kind = kv_emu_rand() % 3;
                    for (unsigned t = 0; t < total; t++)
                        victim[t] = kind == 0 ? t / 32 == w : kind == 1 ? (t / threads == w * 32 / threads && t % threads / 128 == w * 32 % threads / 128)
                                                                        : t / 32 != w;
                    victimTurns = 1 + kv_emu_rand() % 6;
                };
                if (kv_emu_starve) drawVictim();
                for (unsigned left = total; left > 0;)
                {
                    left = 0;
                    if (kv_emu_shuffle)
                        for (unsigned i = total - 1; i > 0; i--) std::swap(order[i], order[kv_emu_rand() % (i + 1)]);
                    bool othersStuck = true;   // starve mode: the victim runs only when no other fiber can
                    if (kv_emu_starve)
                        for (unsigned t = 0; t < total; t++) othersStuck &= victim[t] || fibers[t].done || idle[t];
                    for (unsigned i = 0; i < total; i++)
                    {
                        unsigned t = order[i];
                        kv_emu_fiber& f = fibers[t];
                        if (f.done) continue;
                        // race mode: a fiber sits out a quarter of the passes, holding its warp back while others go on
                        if (kv_emu_shuffle && !kv_emu_starve && kv_emu_rand() % 4 == 0) { left++; continue; }
                        if (kv_emu_starve && victim[t] && !othersStuck) { left++; continue; }
                        kv_emu_cur = &blocks[t / threads];
                        threadIdx = {t % threads, 0, 0};
                        blockIdx = {x0 + t / threads, y, z};
                        kv_emu_running = &f;
                        kv_emu_pending = &f.copies;
                        kv_emu_wpending = &f.wgmmas;
                        kv_emu_selfSp = &f.sp;
                        kv_emu_idle = false;
                        KV_RC(kv_rc::cur = (int)((t / threads) * warpsPerBlock + t % threads / 32);)
                        kv_emu_switch(&kv_emu_mainSp, f.sp);
                        KV_RC(kv_rc::cur = -1;)
                        if (!f.done) left++;
                        if (!kv_emu_idle) { std::fill(idle.begin(), idle.end(), 0); idleCount = 0; }
                        if (kv_emu_idle && !idle[t]) { idle[t] = 1; idleCount++; }
                    }
                    if (left > 0 && idleCount == left)
                    {
                        std::fprintf(stderr, "deadlock: the %u live threads of block (%u, %u, %u)%s all wait (a barrier, a named barrier, an mbarrier or the cluster's barrier) and none can go on\n",
                                     left, x0, y, z, cluster > 1 ? " and the rest of its cluster" : "");
                        std::abort();
                    }
                    if (kv_emu_starve && othersStuck && --victimTurns == 0) drawVictim();
                }
            }
}
