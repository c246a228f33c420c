// Project header for the CUDA kernels. Three parts:
//  1. under clang without the CUDA toolkit (the build's PTX step) it supplies what nvcc/NVRTC would: the builtin
//     variables, the qualifiers, and the few intrinsics the kernels use;
//  2. the primitives, written as inline PTX so that clang and NVRTC compile exactly the same instructions (no
//     libdevice, no CUDA math headers on either path); with KV_EMU defined (kernels/emu/, the host emulator that
//     tests the kernels' index arithmetic on a machine without a GPU) kernels/emu/kv_emu.h supplies them instead;
//  3. composites built only from the primitives (the same code on the device and in the emulator).
#pragma once
// cuTensorMapEncodeTiled's output (CUtensorMap: 128 bytes, 64-aligned), opaque to the kernels; the host emulator reads
// its own encoding from the same bytes (kernels/emu/kv_emu.h: kv_emu_tensor_map).
struct __attribute__((aligned(64))) kv_tensor_map { unsigned long long opaque[16]; };
#if defined(KV_EMU)
#include "emu/kv_emu.h"
#else
#if defined(__clang__) && !defined(__CUDACC_RTC__) && !defined(__NVCC__)
#include <__clang_cuda_builtin_vars.h>
#define __global__ __attribute__((global))
#define __device__ __attribute__((device))
#define __shared__ __attribute__((shared))
#define __forceinline__ __attribute__((always_inline))
#define __launch_bounds__(...) __attribute__((launch_bounds(__VA_ARGS__)))
static __device__ __forceinline__ float __shfl_xor_sync(unsigned mask, float v, int lane) { return __nvvm_shfl_sync_bfly_f32(mask, v, lane, 0x1f); }
static __device__ __forceinline__ int __shfl_xor_sync(unsigned mask, int v, int lane) { return __nvvm_shfl_sync_bfly_i32(mask, v, lane, 0x1f); }
static __device__ __forceinline__ float fmaxf(float a, float b) { return __builtin_fmaxf(a, b); }
extern "C" __device__ void __syncthreads() __asm__("llvm.nvvm.barrier0");
#endif

// ---- 2. primitives ----

// A shared-memory address as cp.async, ldmatrix, st.shared and atom.shared take it (32 bits on the device).
typedef unsigned kv_saddr;
// Dynamic shared memory of a kernel: KV_DYNAMIC_SHARED(float, qs); declares float qs[].
#define KV_DYNAMIC_SHARED(type, name) extern __shared__ __attribute__((aligned(128))) type name[]

static __device__ __forceinline__ float kv_int_as_float(int i) { float f; asm("mov.b32 %0, %1;" : "=f"(f) : "r"(i)); return f; }
static __device__ __forceinline__ float kv_max(float a, float b) { float r; asm("max.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b)); return r; }
static __device__ __forceinline__ float kv_sqrt(float x) { float r; asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(x)); return r; }
static __device__ __forceinline__ float kv_rcp(float x) { float r; asm("rcp.rn.f32 %0, %1;" : "=f"(r) : "f"(x)); return r; }
// a b + c rounded once (fma.rn): what a chain of products must use where two kernels have to agree bit for bit.
static __device__ __forceinline__ float kv_fma(float a, float b, float c) { float r; asm("fma.rn.f32 %0, %1, %2, %3;" : "=f"(r) : "f"(a), "f"(b), "f"(c)); return r; }
// The device's nanosecond clock (%globaltimer): kv_spin's (layernorm.cu) only use, the timing harness's busy wait.
static __device__ __forceinline__ unsigned long long kv_globaltimer() { unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
// The SM's cycle counter (%clock64): kv_spin's bound should %globaltimer stall.
static __device__ __forceinline__ unsigned long long kv_clock64() { unsigned long long t; asm volatile("mov.u64 %0, %%clock64;" : "=l"(t)); return t; }
// 2^x and log2(x): the hardware's approximations (max relative error ~2^-22); ex2(-inf) = 0, lg2(0) = -inf.
static __device__ __forceinline__ float kv_exp2(float x) { float r; asm("ex2.approx.f32 %0, %1;" : "=f"(r) : "f"(x)); return r; }
static __device__ __forceinline__ float kv_log2(float x) { float r; asm("lg2.approx.f32 %0, %1;" : "=f"(r) : "f"(x)); return r; }

// Two f32 -> one register of two bf16 (round to nearest even): lo in bits 0..15, hi in 16..31 (the mma operand order:
// the lower-indexed element in the lower half). cvt.rn.bf16x2.f32 d, a, b puts a in the upper half.
static __device__ __forceinline__ unsigned kv_pack_bf16(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// D = A B + D on the tensor cores: A 16x16 bf16 (row), B 16x8 bf16 (col), D 16x8 f32. Fragment layout (g = lane / 4,
// t = lane % 4): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..); b0 (k 2t..2t+1, n g),
// b1 (k 2t+8.., n g); d0, d1 (g, 2t..2t+1), d2, d3 (g+8, 2t..2t+1).
static __device__ __forceinline__ void kv_mma_bf16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// kv_mma_bf16 with f16 operands (same fragment layout): the products of two halves are exact in f32.
static __device__ __forceinline__ void kv_mma_f16(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// f32 -> tf32 (round to nearest, ties away: cvt.rna), the 19-bit value in a 32-bit register (low 13 bits zero).
static __device__ __forceinline__ unsigned kv_tf32(float x) { unsigned r; asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x)); return r; }

// D = A B + D, m16n8k8 with tf32 operands: a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4); b0 (k t, n g),
// b1 (k t+4, n g); D as kv_mma_bf16.
static __device__ __forceinline__ void kv_mma_tf32(float* d, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// The shared-space address of a pointer into shared memory.
static __device__ __forceinline__ kv_saddr kv_smem(const void* p)
{
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (kv_saddr)a;
}

// 16 bytes global -> shared without registers (L2 only, .cg); bytes = 0 writes 16 zero bytes and reads nothing.
static __device__ __forceinline__ void kv_cp_async16(kv_saddr dst, const void* src, int bytes)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(bytes) : "memory");
}
static __device__ __forceinline__ void kv_cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most N of this thread's committed groups are still in flight.
template <int N>
static __device__ __forceinline__ void kv_cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

// Four 8x8 b16 matrices from shared memory: lane l gives the address of row l % 8 of matrix l / 8; register j of
// lane l receives row l / 4, columns 2 (l % 4) .. +1 of matrix j (the mma fragment layout).
static __device__ __forceinline__ void kv_ldmatrix_x4(kv_saddr addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}
// The same, transposed: register j of lane l receives rows 2 (l % 4) and 2 (l % 4) + 1 of column l / 4 of matrix j.
static __device__ __forceinline__ void kv_ldmatrix_x4_trans(kv_saddr addr, unsigned& r0, unsigned& r1, unsigned& r2, unsigned& r3)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr) : "memory");
}

// 16 bytes into shared memory at a shared address.
static __device__ __forceinline__ void kv_st_shared16(kv_saddr addr, unsigned a, unsigned b, unsigned c, unsigned d)
{
    asm volatile("st.shared.v4.u32 [%0], {%1, %2, %3, %4};" :: "r"(addr), "r"(a), "r"(b), "r"(c), "r"(d) : "memory");
}

// f32 -> f16 bits (round to nearest even) and back (exact).
static __device__ __forceinline__ unsigned short kv_f16_bits(float x) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x)); return h; }
static __device__ __forceinline__ float kv_f16_to_f32(unsigned short h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }

// 16 read-only bytes from global memory (16-byte aligned): four words, or four floats.
static __device__ __forceinline__ void kv_ld_nc_v4(const void* p, unsigned& a, unsigned& b, unsigned& c, unsigned& d)
{
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(a), "=r"(b), "=r"(c), "=r"(d) : "l"(p));
}
static __device__ __forceinline__ void kv_ld_nc_f4(const float* p, float* v)
{
    asm volatile("ld.global.nc.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3]) : "l"(p));
}

// atomicAdd on a shared-memory int by its shared address; returns the old value.
static __device__ __forceinline__ int kv_atomic_add_shared(kv_saddr addr, int v)
{
    int old;
    asm volatile("atom.shared.add.u32 %0, [%1], %2;" : "=r"(old) : "r"(addr), "r"(v) : "memory");
    return old;
}

// Sets a shared-memory flag that several threads may set at once, all to 1 (a list overflowed): a plain store, since the
// PTX memory model lets a read after the next barrier see one of the racing writes, all of them 1. The emulator's
// racecheck (kernels/emu/kv_racecheck.h) records it as atomic, so that these benign stores are not reported.
static __device__ __forceinline__ void kv_set_flag_shared(int* p) { *p = 1; }

// atomicMax on a global float known to be >= 0 (its bits order as ints).
static __device__ __forceinline__ void kv_atomic_max_nonneg(float* p, float v)
{
    int bits;
    asm("mov.b32 %0, %1;" : "=r"(bits) : "f"(v));
    asm volatile("red.global.max.s32 [%0], %1;" :: "l"(p), "r"(bits) : "memory");
}

static __device__ __forceinline__ void kv_syncwarp() { asm volatile("bar.warp.sync 0xffffffff;" ::: "memory"); }

// ---- sm_90a only (wgmma): used by kernels/gemm_sm90.cu inside #if KERNELVL_SM90A ----

// Orders this thread's earlier shared-memory writes (cp.async included) before later reads by the async proxy (wgmma).
static __device__ __forceinline__ void kv_fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }
static __device__ __forceinline__ void kv_wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
static __device__ __forceinline__ void kv_wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void kv_wgmma_wait() { asm volatile("wgmma.wait_group.sync.aligned %0;" :: "n"(N) : "memory"); }
// Pins registers that wgmma reads or writes to this point of the program (an empty asm reading and writing each, as
// CUTLASS's warpgroup_fence_operand): wgmma.fence and wgmma.wait_group name no registers, so without it the compiler
// may move ordinary arithmetic on the accumulators above a wait (reading them while the tensor cores still write) or
// writes of an operand below a fence. Called on the accumulators (and register A operands) before each fence and after
// each wait.
template <int N>
static __device__ __forceinline__ void kv_wgmma_fence_operand(float* r)
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i]) :: "memory");
}
template <int N>
static __device__ __forceinline__ void kv_wgmma_fence_operand(unsigned* r)
{
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+r"(r[i]) :: "memory");
}

// Shared-memory matrix descriptor of a K-major bf16 tile with 128-byte rows in the 128B swizzle (16-byte chunk c of
// row r stored at chunk c ^ (r % 8), tile base 1024-aligned): start address >> 4 (bits 0-13), leading-dimension
// offset 16 B (unused by swizzled K-major, 1 by convention; bits 16-29), 8-row group stride 1024 B (bits 32-45),
// swizzle mode 1 = 128B (bits 62-63).
static __device__ __forceinline__ unsigned long long kv_wgmma_desc(kv_saddr addr)
{
    return (unsigned long long)((addr & 0x3ffffu) >> 4) | (1ull << 16) | (64ull << 32) | (1ull << 62);
}

// The 128 f32 accumulator registers of an m64n256 wgmma: the operand list and its constraints.
#define KV_WGMMA_D128 "{" \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127} "
#define KV_WGMMA_D128_OUT(d) \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), \
    "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]), "+f"(d[71]), \
    "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]), "+f"(d[79]), \
    "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]), "+f"(d[87]), \
    "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]), "+f"(d[95]), \
    "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]), "+f"(d[103]), \
    "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]), "+f"(d[110]), "+f"(d[111]), \
    "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]), "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), \
    "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]), "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])

// d[128] = A (64 x 16, K-major, descriptor a) B^T (B 256 x 16, K-major, descriptor b) (+ d when accumulate != 0), the
// warpgroup's 64 x 256 f32 accumulator: warp w of the warpgroup holds rows 16 w .. 16 w + 15; lane (g = lane / 4,
// t = lane % 4) holds d[4 i + 2 h + e] = (row 16 w + g + 8 h, column 8 i + 2 t + e), i < 32 (the m16n8 layout
// repeated along N). accumulate = 0 (wgmma's scale-d predicate) starts a tile without zeroing d: ordinary
// instructions writing the accumulators inside a pipeline make ptxas serialise the wgmma (its warning C7515).
static __device__ __forceinline__ void kv_wgmma_m64n256k16_bf16(float* d, unsigned long long a, unsigned long long b, int accumulate)
{
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %130, 0; "
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 " KV_WGMMA_D128 ", %128, %129, p, 1, 1, 0, 0; }"
                 : KV_WGMMA_D128_OUT(d) : "l"(a), "l"(b), "r"(accumulate) : "memory");
}

// kv_wgmma_m64n256k16_bf16 with f16 operands (the same layouts and descriptors).
static __device__ __forceinline__ void kv_wgmma_m64n256k16_f16(float* d, unsigned long long a, unsigned long long b, int accumulate)
{
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %130, 0; "
                 "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16 " KV_WGMMA_D128 ", %128, %129, p, 1, 1, 0, 0; }"
                 : KV_WGMMA_D128_OUT(d) : "l"(a), "l"(b), "r"(accumulate) : "memory");
}

// kv_wgmma_m64n256k16_bf16's tile and layouts for tf32 operands (f32 bit patterns of which the tensor cores read the
// top 19 bits): A 64 x 8, B 256 x 8, K-major rows of 32 tf32 = 128 bytes, 128B swizzle, a k8 step 32 bytes along them.
static __device__ __forceinline__ void kv_wgmma_m64n256k8_tf32(float* d, unsigned long long a, unsigned long long b, int accumulate)
{
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %130, 0; "
                 "wgmma.mma_async.sync.aligned.m64n256k8.f32.tf32.tf32 " KV_WGMMA_D128 ", %128, %129, p, 1, 1; }"
                 : KV_WGMMA_D128_OUT(d) : "l"(a), "l"(b), "r"(accumulate) : "memory");
}

// d[32] = A B^T (+ d when accumulate != 0) for one warpgroup: A 64 x 16 bf16 from registers (each warp its 16 rows,
// the m16n8k16 A fragment a[0..3] of kv_mma_bf16), B 64 x 16 K-major from shared memory (descriptor b, 128B swizzle),
// d the m64n64 accumulator (warp w rows 16 w + g + 8 h, columns 8 i + 2 t + e at d[4 i + 2 h + e], i < 8: the layout
// of kv_mma_bf16's accumulators over 8 column blocks).
static __device__ __forceinline__ void kv_wgmma_m64n64k16_bf16_rs(float* d, const unsigned* a, unsigned long long b, int accumulate)
{
    asm volatile("{ .reg .pred p; setp.ne.b32 p, %37, 0; "
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0; }"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b), "r"(accumulate) : "memory");
}

// Warp-specialised register budgets (every thread of a warpgroup executes it): a producer warpgroup gives registers
// back, the consumers take them, within the block's 64K.
template <int N>
static __device__ __forceinline__ void kv_setmaxnreg_dec() { asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" :: "n"(N)); }
template <int N>
static __device__ __forceinline__ void kv_setmaxnreg_inc() { asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" :: "n"(N)); }

// Barrier `id` (1..15; 0 is __syncthreads') among `count` threads (a multiple of 32): the consumer warpgroups of a
// warp-specialised kernel synchronise without the producer warp.
static __device__ __forceinline__ void kv_named_barrier(int id, int count) { asm volatile("bar.sync %0, %1;" :: "r"(id), "r"(count) : "memory"); }

// TMA and mbarriers (gemm_sm90.cu version 4). A kv_tensor_map is cuTensorMapEncodeTiled's 128 opaque bytes passed by
// value; KV_GRID_CONSTANT (__grid_constant__ under NVRTC) keeps it in the parameter space, whose generic address is
// what cp.async.bulk.tensor reads (a by-value copy in local memory would not do).
#if defined(__CUDACC_RTC__) || defined(__NVCC__)
#define KV_GRID_CONSTANT __grid_constant__
#else
#define KV_GRID_CONSTANT
#endif
static __device__ __forceinline__ void kv_mbar_init(kv_saddr bar, unsigned count)
{
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" :: "r"(bar), "r"(count) : "memory");
}
// Makes the barriers' initialisation visible to the async proxy (TMA's complete_tx); a __syncthreads follows it.
static __device__ __forceinline__ void kv_fence_mbar_init() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); }
static __device__ __forceinline__ void kv_mbar_arrive(kv_saddr bar)
{
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];" :: "r"(bar) : "memory");
}
// One arrival that also expects `bytes` more of transactions (the TMA copies that complete on this barrier).
static __device__ __forceinline__ void kv_mbar_arrive_expect_tx(kv_saddr bar, unsigned bytes)
{
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" :: "r"(bar), "r"(bytes) : "memory");
}
// Waits until the barrier's phase of parity `parity` has completed (returns at once for the phase before the current one).
static __device__ __forceinline__ void kv_mbar_wait(kv_saddr bar, unsigned parity)
{
    unsigned done;
    do
    {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}
// The box of `map` at coordinates (c0 innermost, c1, c2) into shared memory at dst (1024-aligned for the 128B swizzle);
// out-of-bounds elements arrive as zeros; the bytes complete on barrier bar.
static __device__ __forceinline__ void kv_tma_load_3d(kv_saddr dst, const kv_tensor_map* map, int c0, int c1, int c2, kv_saddr bar)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4}], [%5];"
                 :: "r"(dst), "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"(bar) : "memory");
}

// Thread block clusters (gemm_sm90.cu version 4 with two blocks a cluster, launched by cuLaunchKernelEx with a cluster
// dimension). This block's rank in its cluster:
static __device__ __forceinline__ unsigned kv_cluster_ctarank()
{
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
// The address in the cluster's shared window of the variable at `addr` (a shared::cta address) in block `rank`.
static __device__ __forceinline__ kv_saddr kv_mapa(kv_saddr addr, unsigned rank)
{
    kv_saddr r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
    return r;
}
// One arrival (release at cluster scope) on an mbarrier of another block of the cluster (its kv_mapa address).
static __device__ __forceinline__ void kv_mbar_arrive_cluster(kv_saddr remote)
{
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" :: "r"(remote) : "memory");
}
// kv_mbar_wait that acquires at cluster scope: for a barrier that other blocks of the cluster arrive on.
static __device__ __forceinline__ void kv_mbar_wait_cluster(kv_saddr bar, unsigned parity)
{
    unsigned done;
    do
    {
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(done) : "r"(bar), "r"(parity) : "memory");
    } while (!done);
}
// Every thread of every block of the cluster (not .aligned: a warp's lanes may arrive from different paths).
static __device__ __forceinline__ void kv_cluster_sync()
{
    asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
}
// kv_tma_load_3d into the same shared offset of every block of the cluster whose bit is set in `mask` (this one's
// included), completing on each one's barrier at bar's offset: one read of L2 for the blocks that share the box.
static __device__ __forceinline__ void kv_tma_load_3d_multicast(kv_saddr dst, const kv_tensor_map* map, int c0, int c1, int c2, kv_saddr bar,
                                                                unsigned short mask)
{
    asm volatile("cp.async.bulk.tensor.3d.shared::cluster.global.mbarrier::complete_tx::bytes.multicast::cluster [%0], [%1, {%2, %3, %4}], [%5], %6;"
                 :: "r"(dst), "l"((unsigned long long)map), "r"(c0), "r"(c1), "r"(c2), "r"(bar), "h"(mask) : "memory");
}
#endif   // KV_EMU

// ---- 3. composites ----

#define KV_INF kv_int_as_float(0x7f800000)
#define KV_LOG2E 1.4426950408889634f
#define KV_LN2 0.6931471805599453f
static __device__ __forceinline__ int kv_imin(int a, int b) { return a < b ? a : b; }
static __device__ __forceinline__ int kv_imax(int a, int b) { return a > b ? a : b; }
// x rounded to bf16 (nearest even) and back: the value a bf16 tensor-core operand holds.
static __device__ __forceinline__ float kv_round_bf16(float x) { return kv_int_as_float((int)(kv_pack_bf16(x, 0.f) << 16)); }
static __device__ __forceinline__ float kv_exp(float x) { return kv_exp2(x * KV_LOG2E); }
static __device__ __forceinline__ float kv_log(float x) { return kv_log2(x) * KV_LN2; }

static __device__ __forceinline__ float kv_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

static __device__ __forceinline__ float kv_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = kv_max(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// x/2 (1 + erf(x / sqrt 2)), the exact-erf GELU of the fused GEMM epilogues. erf by Abramowitz & Stegun 7.1.26
// (absolute error <= 1.5e-7), far below the bf16 rounding of the product it is applied to.
static __device__ __forceinline__ float kv_gelu_erf(float x)
{
    float z = x * 0.70710678118654752f, az = z < 0.f ? -z : z;
    float t = kv_rcp(1.f + 0.3275911f * az);
    float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    float erf_abs = 1.f - poly * kv_exp(-az * az);
    return 0.5f * x * (1.f + (z < 0.f ? -erf_abs : erf_abs));
}

// The GEMM epilogue for one element: C[r, c] (=|+=) act(alpha acc + bias[c]), act the exact-erf GELU when gelu.
static __device__ __forceinline__ void kv_gemm_store(float* __restrict__ C, int ldc, int r, int c, float acc, float alpha,
                                                     const float* __restrict__ bias, int gelu, int accumulate)
{
    float v = alpha * acc + (bias ? bias[c] : 0.f);
    if (gelu) v = kv_gelu_erf(v);
    long long idx = (long long)r * ldc + c;
    C[idx] = accumulate ? C[idx] + v : v;
}

// The two halves packed in a word (low half first) as f32.
static __device__ __forceinline__ void kv_h2_to_f32(unsigned w, float& lo, float& hi)
{
    lo = kv_f16_to_f32((unsigned short)(w & 0xffffu));
    hi = kv_f16_to_f32((unsigned short)(w >> 16));
}

// Sum of squares of the two halves packed in a word, accumulated into s.
static __device__ __forceinline__ float kv_h2_sumsq(unsigned w, float s)
{
    float lo, hi;
    kv_h2_to_f32(w, lo, hi);
    return s + lo * lo + hi * hi;
}

// ---- the version-2 tensor-core tile: stages of 32 K-elements (16-bit) per row, 64 bytes = four 16-byte chunks ----
// Byte offset of (row, chunk c) in a stage: chunks XOR-swizzled by row / 2, so the 8 rows an ldmatrix reads (or a
// warp's cp.async writes) fall on 8 distinct 16-byte bank groups.
static __device__ __forceinline__ unsigned kv_swz64(int row, int c) { return (unsigned)(row * 64 + ((c ^ ((row >> 1) & 3)) << 4)); }

// The same for 128-byte rows (64 16-bit elements, eight chunks): chunks XOR-swizzled by row % 8, which is also the
// layout of Hopper's 128B swizzle when the tile starts on a 1024-byte boundary.
static __device__ __forceinline__ unsigned kv_swz128(int row, int c) { return (unsigned)(row * 128 + ((c ^ (row & 7)) << 4)); }

// Stages ROWS rows x (8 CHUNKS) elements of a K-major 16-bit matrix x (row r at x + r * ld) from element column col,
// rows of CHUNKS 16-byte chunks (4: kv_swz64, 8: kv_swz128): rows >= rowEnd and columns >= colEnd are written as zeros
// (colEnd % 8 == 0). ROWS * CHUNKS / THREADS chunks a thread.
template <int ROWS, int THREADS, int CHUNKS = 4>
static __device__ __forceinline__ void kv_stage_rows(kv_saddr stage, const unsigned short* __restrict__ x, long long row0, long long rowEnd,
                                                     long long ld, int col, int colEnd)
{
#pragma unroll
    for (int i = 0; i < ROWS * CHUNKS / THREADS; i++)
    {
        int e = threadIdx.x + i * THREADS, r = e / CHUNKS, c = e % CHUNKS, cc = col + c * 8;
        long long row = row0 + r;
        bool ok = row < rowEnd && cc < colEnd;
        unsigned off = CHUNKS == 4 ? kv_swz64(r, c) : kv_swz128(r, c);
        kv_cp_async16(stage + off, ok ? (const void*)(x + row * ld + cc) : (const void*)x, ok ? 16 : 0);
    }
}

// acc += A B^T over one stage (32 of K) for a warp's 64 x 64 piece: A rows am.. am+63 of the A stage, B rows
// bn.. bn+63 of the B stage (both K-major, swizzled). acc[mi][ni] is the m16n8 tile (am + 16 mi, bn + 8 ni).
template <bool BF16>
static __device__ __forceinline__ void kv_warp_tile_64x64(kv_saddr aStage, kv_saddr bStage, int am, int bn, float (*acc)[8][4])
{
    const int lane = threadIdx.x & 31, lr = lane & 7, lj = lane >> 3;
#pragma unroll
    for (int ks = 0; ks < 2; ks++)
    {
        unsigned a[4][4], b[8][2];
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
            kv_ldmatrix_x4(aStage + kv_swz64(am + mi * 16 + lr + ((lj & 1) << 3), ks * 2 + (lj >> 1)), a[mi][0], a[mi][1], a[mi][2], a[mi][3]);
#pragma unroll
        for (int np = 0; np < 4; np++)
            kv_ldmatrix_x4(bStage + kv_swz64(bn + np * 16 + lr + ((lj >> 1) << 3), ks * 2 + (lj & 1)),
                           b[2 * np][0], b[2 * np][1], b[2 * np + 1][0], b[2 * np + 1][1]);
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int ni = 0; ni < 8; ni++)
            {
                if (BF16) kv_mma_bf16(acc[mi][ni], a[mi][0], a[mi][1], a[mi][2], a[mi][3], b[ni][0], b[ni][1]);
                else kv_mma_f16(acc[mi][ni], a[mi][0], a[mi][1], a[mi][2], a[mi][3], b[ni][0], b[ni][1]);
            }
    }
}
