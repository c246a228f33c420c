// Fused layer norm (+ residual) for the Cuda backend. One block per row; warp shuffles, then one value per warp
// through shared memory. The reference is ReferenceBackend.LayerNorm; the parity registry checks it on a GPU.
//
// versions
//   1  one block per row, two-pass mean/variance from registers-free strided loops (this file)   not yet timed
#include "kernelvl_cuda.h"

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
static __device__ __forceinline__ float block_sum(float v, float* red)
{
    v = kv_warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float s = 0.f;
    for (int w = 0; w < (int)(blockDim.x >> 5); w++) s += red[w];
    __syncthreads();
    return s;
}

// h = x + residual (when residual is not null; h written to h_out when that is not null), y = (h - mean) * rstd * g + b.
// x, residual, h_out, y: [rows, c]; g, b: [c]; mean, rstd: [rows].
extern "C" __global__ void layernorm_forward(const float* __restrict__ x, const float* __restrict__ residual,
                                             const float* __restrict__ g, const float* __restrict__ b,
                                             float* __restrict__ h_out, float* __restrict__ y,
                                             float* __restrict__ mean, float* __restrict__ rstd, int c, float eps)
{
    __shared__ float red[32];
    long long o = (long long)blockIdx.x * c;
    float s = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x)
    {
        float h = x[o + j] + (residual ? residual[o + j] : 0.f);
        if (h_out) h_out[o + j] = h;
        s += h;
    }
    float m = block_sum(s, red) / c;
    float v = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x)
    {
        float d = x[o + j] + (residual ? residual[o + j] : 0.f) - m;
        v += d * d;
    }
    float r = 1.f / kv_sqrt(block_sum(v, red) / c + eps);
    for (int j = threadIdx.x; j < c; j += blockDim.x)
    {
        float h = x[o + j] + (residual ? residual[o + j] : 0.f);
        y[o + j] = (h - m) * r * g[j] + b[j];
    }
    if (threadIdx.x == 0) { mean[blockIdx.x] = m; rstd[blockIdx.x] = r; }
}

// ======================================================================================================================
// Backward (the contract accumulates: dx += , dgamma += , dbeta +=), with xhat = (x - mean) rstd:
//   dx = rstd (dy g - mean_j(dy g) - xhat mean_j(dy g xhat))   one block per row, as the forward;
//   dgamma = sum_rows dy xhat, dbeta = sum_rows dy             32 columns x a chunk of rows per block (8 row lanes),
//                                                              partial sums per chunk, then summed in chunk order
//                                                              (deterministic; the ILGPU kernel it replaces runs one
//                                                              thread per column over every row).
// Not yet run on a GPU: the host emulator (kernels/emu) checks it against f64; opt-in (KERNELVL_CUDA_LAYERNORM_BACKWARD=2).
// ======================================================================================================================

// x, dy, dx [rows, c]; g [c]; mean, rstd [rows]. Grid rows, 256 threads.
extern "C" __global__ void layernorm_backward_dx(const float* __restrict__ x, const float* __restrict__ g, const float* __restrict__ mean,
                                                 const float* __restrict__ rstd, const float* __restrict__ dy, int c, float* __restrict__ dx)
{
    __shared__ float red[32];
    const long long o = (long long)blockIdx.x * c;
    const float m = mean[blockIdx.x], rs = rstd[blockIdx.x];
    float sg = 0.f, sgx = 0.f;
    for (int j = threadIdx.x; j < c; j += blockDim.x)
    {
        float gj = dy[o + j] * g[j];
        sg += gj;
        sgx += gj * (x[o + j] - m) * rs;
    }
    sg = block_sum(sg, red) / c;
    sgx = block_sum(sgx, red) / c;
    for (int j = threadIdx.x; j < c; j += blockDim.x)
    {
        float xh = (x[o + j] - m) * rs;
        dx[o + j] += rs * (dy[o + j] * g[j] - sg - xh * sgx);
    }
}

// Partial column sums over rows [chunk rowsPerChunk, +rowsPerChunk): pg[chunk][j] = sum dy xhat, pb[chunk][j] = sum dy.
// Grid (ceil(c / 32), chunks), 256 threads = 32 columns x 8 row lanes.
extern "C" __global__ void layernorm_backward_params_partial(const float* __restrict__ x, const float* __restrict__ mean,
                                                             const float* __restrict__ rstd, const float* __restrict__ dy,
                                                             long long rows, int c, int rowsPerChunk,
                                                             float* __restrict__ pg, float* __restrict__ pb)
{
    __shared__ float sg[8][33], sb[8][33];
    const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5, j = blockIdx.x * 32 + tx;
    const long long r0 = (long long)blockIdx.y * rowsPerChunk;
    const long long r1 = r0 + rowsPerChunk < rows ? r0 + rowsPerChunk : rows;
    float ag = 0.f, ab = 0.f;
    if (j < c)
        for (long long r = r0 + ty; r < r1; r += 8)
        {
            float d = dy[r * c + j];
            ag += d * (x[r * c + j] - mean[r]) * rstd[r];
            ab += d;
        }
    sg[ty][tx] = ag;
    sb[ty][tx] = ab;
    __syncthreads();
    if (ty == 0 && j < c)
    {
        float tg = 0.f, tb = 0.f;
        for (int k = 0; k < 8; k++) { tg += sg[k][tx]; tb += sb[k][tx]; }
        pg[(long long)blockIdx.y * c + j] = tg;
        pb[(long long)blockIdx.y * c + j] = tb;
    }
}

// dgamma[j] += sum over chunks of pg[chunk][j], dbeta likewise (either may be null). Grid ceil(c / 256), 256 threads.
extern "C" __global__ void layernorm_backward_params_combine(const float* __restrict__ pg, const float* __restrict__ pb, int chunks, int c,
                                                             float* __restrict__ dgamma, float* __restrict__ dbeta)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= c) return;
    float tg = 0.f, tb = 0.f;
    for (int k = 0; k < chunks; k++) { tg += pg[(long long)k * c + j]; tb += pb[(long long)k * c + j]; }
    if (dgamma) dgamma[j] += tg;
    if (dbeta) dbeta[j] += tb;
}

// Not a layer norm: the timing harness's busy wait (CudaBackend.MedianMs), kept here to need no module of its own. One
// thread holds the stream for `ns` nanoseconds of the device's clock, so that the calls enqueued behind it are all
// waiting on the device before the first starts: the events around them then time the device's work without the host's
// launch gaps. Writes the loop's iterations to *spins. One block of one warp, whose lane 0 waits.
extern "C" __global__ void kv_spin(long long ns, unsigned long long* spins)
{
    if (threadIdx.x != 0) return;
    // Bounded by the cycle counter too (4 ns cycles: at most 4 GHz, so never before ns nanoseconds), should the
    // global timer stall: a wait that never ends would hold the stream, and every later timing, forever.
    unsigned long long t0 = kv_globaltimer(), c0 = kv_clock64(), n = 0;
    while ((long long)(kv_globaltimer() - t0) < ns && (long long)(kv_clock64() - c0) < 4 * ns) n++;
    *spins = n;
}

// Also the timing harness's: reads p[0..n) (a buffer several times the L2's size, filled once) so that what the L2
// held is evicted before a timed pass, and evicted clean: a write (a memset) would leave the L2 full of dirty lines that
// the timed pass then writes back to memory, bytes it is not charged with. The XOR of what it read is stored only if it
// equals a value a buffer of zeros never gives, which keeps the loads. Any grid; 256 threads a block.
extern "C" __global__ void kv_l2_flush(const unsigned* __restrict__ p, long long n, unsigned* sink)
{
    unsigned x = 0;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) x ^= p[i];
    if (x == 0x7fc00001u) *sink = x;
}
