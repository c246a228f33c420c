using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace KernelVL.Backends.Cpu;

/// <summary>
/// C = alpha * op(A) @ op(B) (+ C when accumulate) (+ bias[j] per column), fp32.
/// Packed, blocked GEMM (BLIS-style): op(B) is packed into NR-wide column panels [K][NR] (lazily, per KC block, by the
/// first worker that needs a block); the register-blocked micro-kernel (Vector512 8x32, or Vector256 6x16 fallback)
/// broadcasts A straight from A in memory (either layout), or from a packed [KC][MR] panel at the ragged edge / for a
/// transposed A whose row stride is a multiple of 1024 floats. Parallel work = (row block x column group): each worker
/// owns a column group (its B panels stay in its own caches) and takes guided-size row blocks, stealing from the other
/// groups when its own run out. Edge tiles go through a small local tile. No per-call large allocations: packing
/// buffers are 64-byte aligned native thread-static scratch that only grows.
/// </summary>
internal static unsafe class CpuGemm
{

    private const int KcMax = 256;                   // k-block depth: a B micro-panel (KC x NR x 4 B = 32 KB) stays in L1
    private const int McTarget = 128;                // max rows per work block: the A block (MC x KC) stays in L2
    private const long BChunkFloats = 1 << 22;       // cap on one packed B chunk (16 MB)
    private const long SerialFlops = 64L * 64 * 64;  // below this m*n*k, never go parallel

    /// <summary>
    /// op(A) is [M, K]: A is [M, K] with row stride lda, or [K, M] (row stride lda) when transA.
    /// op(B) is [K, N]: B is [K, N] with row stride ldb, or [N, K] (row stride ldb) when transB.
    /// C is [M, N] with row stride ldc. bias may be null (length N). When parallel is true it may use all cores;
    /// when false it runs on the calling thread only.
    /// </summary>
    public static void Gemm(int m, int n, int k, float* a, int lda, bool transA, float* b, int ldb, bool transB,
                            float* c, int ldc, float alpha, bool accumulate, float* bias, bool parallel)
    {
        if (m <= 0 || n <= 0) return;
        if (k <= 0)
        {
            for (int i = 0; i < m; i++)
            {
                float* row = c + (long)i * ldc;
                for (int j = 0; j < n; j++)
                {
                    float v = accumulate ? row[j] : 0f;
                    if (bias != null) v += bias[j];
                    row[j] = v;
                }
            }
            return;
        }

        // Micro-kernel: 8x32 on Vector512, 6x16 on Vector256 (chosen per call: tests switch the wide path off).
        bool v512 = CpuMath.Use512;
        int mr = v512 ? 8 : 6, nr = v512 ? 32 : 16;
        int threads = 1;
        if (parallel && (long)m * n * k >= SerialFlops)
            threads = Math.Max(1, Environment.ProcessorCount);

        // K blocking: equal-sized blocks no deeper than KcMax.
        int kBlocks = (k + KcMax - 1) / KcMax;
        int kc = (k + kBlocks - 1) / kBlocks;

        // N chunking so that one packed B chunk (all of K) stays bounded.
        long ncMax = Math.Max(nr, BChunkFloats / k / nr * nr);
        int nChunks = (int)((n + ncMax - 1) / ncMax);
        int ncChunk = (n + nChunks - 1) / nChunks;
        ncChunk = (ncChunk + nr - 1) / nr * nr;
        long bFloats = (long)Math.Min(ncChunk, (n + nr - 1) / nr * nr) * k;

        float* bp = Scratch.Get(ref t_bScratch, bFloats);
        int mPanels = (m + mr - 1) / mr;
        for (int jc = 0; jc < n; jc += ncChunk)
        {
            int ncur = Math.Min(ncChunk, n - jc);
            int nPanels = (ncur + nr - 1) / nr;

            // Work: row blocks (multiples of MR rows, at most McTarget) x column groups of panels. With enough columns
            // every worker owns one column group (it packs and keeps its own B panels: cross-core traffic is
            // expensive), and steals row blocks from the other groups once its own group is exhausted.
            int colItems = threads > 1 && nPanels >= 2 * threads ? threads : 1;
            int maxBlock = McTarget / mr;
            int minBlock = threads > 1 ? Math.Max(1, Math.Min(maxBlock, 32 / mr)) : maxBlock;
            int workers = Math.Min(threads, colItems * ((mPanels + minBlock - 1) / minBlock));

            // A fresh job per parallel chunk: a helper that starts late only ever sees its own (finished) job.
            Job job = workers == 1 ? (t_job ??= new Job()) : new Job();
            job.M = m; job.K = k; job.A = a; job.Lda = lda; job.TransA = transA;
            job.B = b; job.Ldb = ldb; job.TransB = transB; job.C = c; job.Ldc = ldc;
            job.Alpha = alpha; job.Accumulate = accumulate; job.Bias = bias; job.Kc = kc; job.KBlocks = kBlocks; job.Bp = bp;
            job.Jc = jc; job.Ncur = ncur; job.NPanels = nPanels;
            job.MPanels = mPanels; job.MinBlockPanels = minBlock; job.MaxBlockPanels = maxBlock; job.ColItems = colItems;
            job.Workers = workers; job.V512 = v512; job.Mr = mr; job.Nr = nr;
            job.DonePanels = 0; job.NextWorker = 0;
            if (job.GroupNext == null || job.GroupNext.Length < colItems) job.GroupNext = new int[Math.Max(colItems, 4)];
            else Array.Clear(job.GroupNext, 0, colItems);
            int nStates = nPanels * kBlocks;
            if (job.PanelState == null || job.PanelState.Length < nStates) job.PanelState = new int[Math.Max(nStates, 16)];
            else Array.Clear(job.PanelState, 0, nStates);

            if (workers == 1)
            {
                job.Work(0);
                continue;
            }
            for (int w = 1; w < workers; w++) ThreadPool.UnsafeQueueUserWorkItem(job, preferLocal: false);
            job.Work(0);
            // Wait only for blocks other workers have claimed (they are running), never for a helper to start.
            int total = mPanels * colItems;
            if (Volatile.Read(ref job.DonePanels) < total)
            {
                SpinWait sw = default;
                while (Volatile.Read(ref job.DonePanels) < total) sw.SpinOnce(-1);
            }
        }
    }

    [ThreadStatic] private static Job? t_job;

    private sealed class Job : IThreadPoolWorkItem
    {
        public int M, K, Lda, Ldb, Ldc, Kc, KBlocks, Jc, Ncur, NPanels;
        public int MPanels, MinBlockPanels, MaxBlockPanels, ColItems, Workers;
        public int[]? GroupNext;
        public float* A, B, C, Bias, Bp;
        public bool TransA, TransB, Accumulate, V512;
        public int Mr, Nr;
        public float Alpha;
        public int[]? PanelState; // 0 = not packed, 1 = being packed, 2 = packed
        public int DonePanels, NextWorker;

        void IThreadPoolWorkItem.Execute() => Work(Interlocked.Increment(ref NextWorker));

        /// <summary>
        /// Claims B block (panel jp, k-block kb) for packing: returns true if the caller must pack it (and then call
        /// <see cref="Publish"/>); returns false once it is packed (waiting while another worker packs it).
        /// </summary>
        public bool ClaimOrWait(int idx)
        {
            ref int st = ref PanelState![idx];
            if (Volatile.Read(ref st) == 2) return false;
            if (Interlocked.CompareExchange(ref st, 1, 0) == 0) return true;
            SpinWait sw = default;
            while (Volatile.Read(ref st) != 2) sw.SpinOnce(-1);
            return false;
        }

        public void Publish(int idx) => Volatile.Write(ref PanelState![idx], 2);

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Work(int worker)
        {
            int[] groupNext = GroupNext!;
            int mPanels = MPanels, mr = Mr;
            for (int gi = 0; gi < ColItems; gi++)
            {
                int g = (worker + gi) % ColItems;
                int np0 = (int)((long)NPanels * g / ColItems), np1 = (int)((long)NPanels * (g + 1) / ColItems);
                while (true)
                {
                    // Guided self-scheduling over row panels: big blocks first, smaller ones near the end so the
                    // workers finish together.
                    int cur = Volatile.Read(ref groupNext[g]);
                    if (cur >= mPanels) break;
                    int take = Math.Clamp((mPanels - cur) / (2 * Workers), MinBlockPanels, MaxBlockPanels);
                    take = Math.Min(take, mPanels - cur);
                    if (Interlocked.CompareExchange(ref groupNext[g], cur + take, cur) != cur) continue;
                    int r0 = cur * mr, r1 = Math.Min(M, (cur + take) * mr);
                    if (np0 < np1) ComputeBlock(this, r0, r1, np0, np1);
                    Interlocked.Add(ref DonePanels, take);
                }
            }
        }
    }

    // ---------------------------------------------------------------- scratch memory

    [ThreadStatic] private static Scratch? t_aScratch;
    [ThreadStatic] private static Scratch? t_bScratch;
    [ThreadStatic] private static Scratch? t_tileScratch;

    /// <summary>64-byte aligned native buffer that only grows; freed when its thread dies (finalizer).</summary>
    private sealed class Scratch
    {
        private float* _p;
        private long _cap;

        public static float* Get(ref Scratch? slot, long floats)
        {
            slot ??= new Scratch();
            if (slot._cap < floats)
            {
                long cap = Math.Max(floats, slot._cap * 3 / 2);
                if (slot._p != null) NativeMemory.AlignedFree(slot._p);
                slot._p = null; slot._cap = 0;
                slot._p = (float*)NativeMemory.AlignedAlloc((nuint)(cap * sizeof(float)), 64);
                slot._cap = cap;
            }
            return slot._p;
        }

        ~Scratch()
        {
            if (_p != null) NativeMemory.AlignedFree(_p);
        }
    }

    // ---------------------------------------------------------------- driver

    /// <summary>C rows [r0, r1) x panels [np0, np1) of the current chunk, all of K.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ComputeBlock(Job job, int r0, int r1, int np0, int np1)
    {
        int mr = job.Mr, nr = job.Nr;
        int k = job.K, kcMax = job.Kc;
        int mrows = r1 - r0;
        float* ap = Scratch.Get(ref t_aScratch, (long)((mrows + mr - 1) / mr * mr) * kcMax);
        float* tile = Scratch.Get(ref t_tileScratch, (long)mr * nr);
        float* bp = job.Bp;
        long ldc = job.Ldc, lda = job.Lda;
        float alpha = job.Alpha;
        int jEnd = job.Jc + job.Ncur;
        bool v512 = job.V512;
        bool direct = !job.TransA;
        // Transposed A can also be read in place (8 contiguous floats per k step, k stride lda) unless lda is a
        // multiple of 1024 floats, where every k step lands in the same L1 set and packing is faster.
        bool directT = job.TransA && v512 && lda % 1024 != 0;

        for (int pc = 0; pc < k; pc += kcMax)
        {
            int kcur = Math.Min(kcMax, k - pc);
            bool first = pc == 0;
            bool load = !first || job.Accumulate;
            float* bias = first ? job.Bias : null;

            // Pack what the kernel cannot read directly: everything when transA, only the ragged tail panel otherwise.
            int fullRows = mrows / mr * mr;
            if (direct)
            {
                if (fullRows < mrows) PackA(job, ap + (long)fullRows * kcur, r0 + fullRows, mrows - fullRows, pc, kcur);
            }
            else if (directT)
            {
                if (fullRows < mrows) PackA(job, ap + (long)fullRows * kcur, r0 + fullRows, mrows - fullRows, pc, kcur);
            }
            else
            {
                PackA(job, ap, r0, mrows, pc, kcur);
            }

            int kb = pc / kcMax;
            for (int jp = np0; jp < np1; jp++)
            {
                int j0 = job.Jc + jp * nr;
                int ncols = Math.Min(nr, jEnd - j0);
                float* bpp = bp + (long)jp * k * nr + (long)pc * nr;
                float* biasj = bias != null ? bias + j0 : null;

                // B block (jp, kb) is packed lazily by the first worker that needs it (normally the column group's owner).
                int sidx = jp * job.KBlocks + kb;
                if (job.ClaimOrWait(sidx))
                {
                    PackBPanel(job, jp, pc, pc + kcur);
                    job.Publish(sidx);
                }
                for (int ii = 0; ii < mrows; ii += mr)
                {
                    int rows = Math.Min(mr, mrows - ii);
                    float* cij = job.C + (long)(r0 + ii) * ldc + j0;
                    bool full = rows == mr && ncols == nr;
                    TileOut o;
                    o.C = full ? cij : tile; o.Ldc = full ? ldc : nr; o.Alpha = full ? alpha : 1f;
                    o.Load = full && load; o.Bias = full ? biasj : null;
                    bool dir = direct && rows == mr;
                    bool dirT = directT && rows == mr;
                    float* aptr = dir ? job.A + (r0 + ii) * lda + pc : dirT ? job.A + pc * lda + (r0 + ii) : ap + (long)ii * kcur;
                    if (v512)
                    {
                        if (dir) Kernel8x32Direct(aptr, lda, bpp, bpp + (long)kcur * nr, &o);
                        else Kernel8x32Packed(aptr, dirT ? lda : 8, bpp, bpp + (long)kcur * nr, &o);
                    }
                    else
                    {
                        Kernel6x16(kcur, aptr, dir ? lda : 1, dir ? 1 : mr, bpp, o.C, o.Ldc, o.Alpha, o.Load, o.Bias);
                    }
                    if (!full)
                    {
                        for (int r = 0; r < rows; r++)
                        {
                            float* crow = cij + r * ldc;
                            float* trow = tile + r * nr;
                            for (int q = 0; q < ncols; q++)
                            {
                                float v = alpha * trow[q];
                                if (load) v += crow[q];
                                if (biasj != null) v += biasj[q];
                                crow[q] = v;
                            }
                        }
                    }
                }
            }
        }
    }

    // ---------------------------------------------------------------- packing

    /// <summary>Packs rows [i0, i0+rows) x depth [pc, pc+kcur) of op(A) into MR-row panels [kcur][MR], zero padded.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackA(Job job, float* dst, int i0, int rows, int pc, int kcur)
    {
        int mr = job.Mr;
        long lda = job.Lda;
        if (!job.TransA)
        {
            // op(A)[i, p] = a[i*lda + p]
            for (int ii = 0; ii < rows; ii += mr)
            {
                int pr = Math.Min(mr, rows - ii);
                float* d = dst + (long)ii * kcur;
                float* src = job.A + (i0 + ii) * lda + pc;
                if (pr == 8 && mr == 8 && Avx.IsSupported)
                {
                    int p = 0;
                    for (; p + 8 <= kcur; p += 8)
                        Transpose8x8(src + p, lda, d + p * 8, 8);
                    for (; p < kcur; p++)
                        for (int r = 0; r < 8; r++)
                            d[p * 8 + r] = src[r * lda + p];
                }
                else
                {
                    for (int r = 0; r < mr; r++)
                    {
                        if (r < pr)
                        {
                            float* s = src + r * lda;
                            for (int p = 0; p < kcur; p++) d[p * mr + r] = s[p];
                        }
                        else
                        {
                            for (int p = 0; p < kcur; p++) d[p * mr + r] = 0f;
                        }
                    }
                }
            }
        }
        else
        {
            // op(A)[i, p] = a[p*lda + i]: walk each source row once, scattering into all panels.
            int fullPanels = rows / mr;
            int tail = rows - fullPanels * mr;
            long panelStride = (long)mr * kcur;
            for (int p = 0; p < kcur; p++)
            {
                float* s = job.A + (pc + p) * lda + i0;
                float* d = dst + p * mr;
                if (mr == 8)
                {
                    for (int q = 0; q < fullPanels; q++)
                        Vector256.Load(s + q * 8).Store(d + q * panelStride);
                }
                else
                {
                    for (int q = 0; q < fullPanels; q++)
                        for (int r = 0; r < mr; r++) d[q * panelStride + r] = s[q * mr + r];
                }
                if (tail > 0)
                {
                    float* dd = d + fullPanels * panelStride;
                    float* ss = s + fullPanels * mr;
                    int r = 0;
                    for (; r < tail; r++) dd[r] = ss[r];
                    for (; r < mr; r++) dd[r] = 0f;
                }
            }
        }
    }

    /// <summary>Packs panel jp of the current N chunk (all of K) into a [K][NR] panel, zero padded.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackBPanel(Job job, int jp, int k0, int kEnd)
    {
        if (job.TransB) { PackBTransPanel(job, jp, k0, kEnd); return; }
        int nr = job.Nr;
        long ldb = job.Ldb;
        int j0 = job.Jc + jp * nr;
        int cols = Math.Min(nr, job.Jc + job.Ncur - j0);
        float* d = job.Bp + jp * (long)job.K * nr;
        float* src = job.B + j0;
        // op(B)[p, j] = b[p*ldb + j]. Rows are usually > 4 KB apart, so the hardware prefetcher cannot follow: prefetch ahead.
        const int Ahead = 8;
        if (cols == nr && nr == 32)
        {
            for (int p = k0; p < kEnd; p++)
            {
                float* s = src + p * ldb;
                if (p + Ahead < kEnd) { Sse.Prefetch0(s + Ahead * ldb); Sse.Prefetch0(s + Ahead * ldb + 16); }
                float* dd = d + (long)p * 32;
                Vector512.Store(Vector512.Load(s), dd);
                Vector512.Store(Vector512.Load(s + 16), dd + 16);
            }
        }
        else if (cols == nr)
        {
            for (int p = k0; p < kEnd; p++)
            {
                float* s = src + p * ldb;
                float* dd = d + (long)p * nr;
                for (int x = 0; x < nr; x += 8) Vector256.Store(Vector256.Load(s + x), dd + x);
            }
        }
        else
        {
            for (int p = k0; p < kEnd; p++)
            {
                float* s = src + p * ldb;
                float* dd = d + (long)p * nr;
                int x = 0;
                for (; x < cols; x++) dd[x] = s[x];
                for (; x < nr; x++) dd[x] = 0f;
            }
        }
    }

    /// <summary>Packs panel jp of transposed B (stored [N, K]) into a [K][NR] panel, zero padded.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void PackBTransPanel(Job job, int jp, int k0, int kEnd)
    {
        int nr = job.Nr;
        int k = job.K;
        long ldb = job.Ldb;
        int j0 = job.Jc + jp * nr;
        int cols = Math.Min(nr, job.Jc + job.Ncur - j0);
        float* d = job.Bp + jp * (long)k * nr;
        float* src = job.B + j0 * ldb;
        // op(B)[p, j] = b[j*ldb + p]
        if (cols == nr && Avx.IsSupported)
        {
            for (int q = 0; q < nr; q += 8)
            {
                float* s = src + q * ldb;
                int p = k0;
                for (; p + 8 <= kEnd; p += 8)
                    Transpose8x8(s + p, ldb, d + (long)p * nr + q, nr);
                for (; p < kEnd; p++)
                    for (int r = 0; r < 8; r++)
                        d[(long)p * nr + q + r] = s[r * ldb + p];
            }
        }
        else
        {
            for (int q = 0; q < nr; q++)
            {
                if (q < cols)
                {
                    float* s = src + q * ldb;
                    for (int p = k0; p < kEnd; p++) d[(long)p * nr + q] = s[p];
                }
                else
                {
                    for (int p = k0; p < kEnd; p++) d[(long)p * nr + q] = 0f;
                }
            }
        }
    }

    /// <summary>dst[c*dstStride + r] = src[r*srcStride + c] for an 8x8 block.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8x8(float* src, long srcStride, float* dst, long dstStride)
    {
        Vector256<float> r0 = Avx.LoadVector256(src);
        Vector256<float> r1 = Avx.LoadVector256(src + srcStride);
        Vector256<float> r2 = Avx.LoadVector256(src + 2 * srcStride);
        Vector256<float> r3 = Avx.LoadVector256(src + 3 * srcStride);
        Vector256<float> r4 = Avx.LoadVector256(src + 4 * srcStride);
        Vector256<float> r5 = Avx.LoadVector256(src + 5 * srcStride);
        Vector256<float> r6 = Avx.LoadVector256(src + 6 * srcStride);
        Vector256<float> r7 = Avx.LoadVector256(src + 7 * srcStride);

        Vector256<float> t0 = Avx.UnpackLow(r0, r1), t1 = Avx.UnpackHigh(r0, r1);
        Vector256<float> t2 = Avx.UnpackLow(r2, r3), t3 = Avx.UnpackHigh(r2, r3);
        Vector256<float> t4 = Avx.UnpackLow(r4, r5), t5 = Avx.UnpackHigh(r4, r5);
        Vector256<float> t6 = Avx.UnpackLow(r6, r7), t7 = Avx.UnpackHigh(r6, r7);

        Vector256<float> s0 = Avx.Shuffle(t0, t2, 0x44), s1 = Avx.Shuffle(t0, t2, 0xEE);
        Vector256<float> s2 = Avx.Shuffle(t1, t3, 0x44), s3 = Avx.Shuffle(t1, t3, 0xEE);
        Vector256<float> s4 = Avx.Shuffle(t4, t6, 0x44), s5 = Avx.Shuffle(t4, t6, 0xEE);
        Vector256<float> s6 = Avx.Shuffle(t5, t7, 0x44), s7 = Avx.Shuffle(t5, t7, 0xEE);

        Avx.Store(dst, Avx.Permute2x128(s0, s4, 0x20));
        Avx.Store(dst + dstStride, Avx.Permute2x128(s1, s5, 0x20));
        Avx.Store(dst + 2 * dstStride, Avx.Permute2x128(s2, s6, 0x20));
        Avx.Store(dst + 3 * dstStride, Avx.Permute2x128(s3, s7, 0x20));
        Avx.Store(dst + 4 * dstStride, Avx.Permute2x128(s0, s4, 0x31));
        Avx.Store(dst + 5 * dstStride, Avx.Permute2x128(s1, s5, 0x31));
        Avx.Store(dst + 6 * dstStride, Avx.Permute2x128(s2, s6, 0x31));
        Avx.Store(dst + 7 * dstStride, Avx.Permute2x128(s3, s7, 0x31));
    }

    // ---------------------------------------------------------------- micro-kernels

    /// <summary>
    /// 8x32 tile, A read in place: C[8,32] (=|+=) alpha * A[8,kc] @ Bpanel[kc][32] (+ bias), A(i, p) = a[i*lda + p].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel8x32Direct(float* a, long lda, float* pb, float* pbEnd, TileOut* o)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector512<float> c20 = default, c21 = default, c30 = default, c31 = default;
        Vector512<float> c40 = default, c41 = default, c50 = default, c51 = default;
        Vector512<float> c60 = default, c61 = default, c70 = default, c71 = default;
        {
            float* pc0 = o->C;
            long ldc = o->Ldc;
            for (int r = 0; r < 8; r++) { Sse.Prefetch0(pc0 + r * ldc); Sse.Prefetch0(pc0 + r * ldc + 16); }
        }
        float* a0 = a, a1 = a + lda, a2 = a + 2 * lda, a3 = a + 3 * lda;
        float* a4 = a + 4 * lda, a5 = a + 5 * lda, a6 = a + 6 * lda, a7 = a + 7 * lda;
        nint off = 0;
        while (pb < pbEnd)
        {
            Vector512<float> b0 = Vector512.Load(pb);
            Vector512<float> b1 = Vector512.Load(pb + 16);
            Vector512<float> av = Vector512.Create(a0[off]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00); c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(a1[off]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10); c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(a2[off]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20); c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(a3[off]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30); c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(a4[off]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40); c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(a5[off]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50); c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            av = Vector512.Create(a6[off]);
            c60 = Vector512.FusedMultiplyAdd(av, b0, c60); c61 = Vector512.FusedMultiplyAdd(av, b1, c61);
            av = Vector512.Create(a7[off]);
            c70 = Vector512.FusedMultiplyAdd(av, b0, c70); c71 = Vector512.FusedMultiplyAdd(av, b1, c71);
            off++; pb += 32;
        }
        Epilogue512(o, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71);
    }

    /// <summary>8x32 tile from a packed A panel [kc][8].</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel8x32Packed(float* pa, long ks, float* pb, float* pbEnd, TileOut* o)
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector512<float> c20 = default, c21 = default, c30 = default, c31 = default;
        Vector512<float> c40 = default, c41 = default, c50 = default, c51 = default;
        Vector512<float> c60 = default, c61 = default, c70 = default, c71 = default;
        {
            float* pc0 = o->C;
            long ldc = o->Ldc;
            for (int r = 0; r < 8; r++) { Sse.Prefetch0(pc0 + r * ldc); Sse.Prefetch0(pc0 + r * ldc + 16); }
        }
        while (pb < pbEnd)
        {
            Vector512<float> b0 = Vector512.Load(pb);
            Vector512<float> b1 = Vector512.Load(pb + 16);
            Vector512<float> av = Vector512.Create(pa[0]);
            c00 = Vector512.FusedMultiplyAdd(av, b0, c00); c01 = Vector512.FusedMultiplyAdd(av, b1, c01);
            av = Vector512.Create(pa[1]);
            c10 = Vector512.FusedMultiplyAdd(av, b0, c10); c11 = Vector512.FusedMultiplyAdd(av, b1, c11);
            av = Vector512.Create(pa[2]);
            c20 = Vector512.FusedMultiplyAdd(av, b0, c20); c21 = Vector512.FusedMultiplyAdd(av, b1, c21);
            av = Vector512.Create(pa[3]);
            c30 = Vector512.FusedMultiplyAdd(av, b0, c30); c31 = Vector512.FusedMultiplyAdd(av, b1, c31);
            av = Vector512.Create(pa[4]);
            c40 = Vector512.FusedMultiplyAdd(av, b0, c40); c41 = Vector512.FusedMultiplyAdd(av, b1, c41);
            av = Vector512.Create(pa[5]);
            c50 = Vector512.FusedMultiplyAdd(av, b0, c50); c51 = Vector512.FusedMultiplyAdd(av, b1, c51);
            av = Vector512.Create(pa[6]);
            c60 = Vector512.FusedMultiplyAdd(av, b0, c60); c61 = Vector512.FusedMultiplyAdd(av, b1, c61);
            av = Vector512.Create(pa[7]);
            c70 = Vector512.FusedMultiplyAdd(av, b0, c70); c71 = Vector512.FusedMultiplyAdd(av, b1, c71);
            pa += ks; pb += 32;
        }
        Epilogue512(o, c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71);
    }

    private struct TileOut
    {
        public float* C;
        public long Ldc;
        public float Alpha;
        public bool Load;
        public float* Bias;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Epilogue512(TileOut* o,
        Vector512<float> c00, Vector512<float> c01, Vector512<float> c10, Vector512<float> c11,
        Vector512<float> c20, Vector512<float> c21, Vector512<float> c30, Vector512<float> c31,
        Vector512<float> c40, Vector512<float> c41, Vector512<float> c50, Vector512<float> c51,
        Vector512<float> c60, Vector512<float> c61, Vector512<float> c70, Vector512<float> c71)
    {
        float* c = o->C;
        long ldc = o->Ldc;
        bool load = o->Load;
        float* bias = o->Bias;
        Vector512<float> va = Vector512.Create(o->Alpha);
        Store512(c, c00, c01, va, load, bias); c += ldc;
        Store512(c, c10, c11, va, load, bias); c += ldc;
        Store512(c, c20, c21, va, load, bias); c += ldc;
        Store512(c, c30, c31, va, load, bias); c += ldc;
        Store512(c, c40, c41, va, load, bias); c += ldc;
        Store512(c, c50, c51, va, load, bias); c += ldc;
        Store512(c, c60, c61, va, load, bias); c += ldc;
        Store512(c, c70, c71, va, load, bias);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store512(float* c, Vector512<float> x0, Vector512<float> x1, Vector512<float> va, bool load, float* bias)
    {
        if (load)
        {
            x0 = Vector512.FusedMultiplyAdd(x0, va, Vector512.Load(c));
            x1 = Vector512.FusedMultiplyAdd(x1, va, Vector512.Load(c + 16));
        }
        else
        {
            x0 *= va; x1 *= va;
        }
        if (bias != null) { x0 += Vector512.Load(bias); x1 += Vector512.Load(bias + 16); }
        x0.Store(c); x1.Store(c + 16);
    }

    /// <summary>6x16 tile (Vector256 fallback), same contract as <see cref="Kernel8x32"/> with MR=6, NR=16.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16(int kc, float* a, long rs, long ks, float* pb, float* c, long ldc, float alpha, bool load, float* bias)
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default;
        Vector256<float> c20 = default, c21 = default, c30 = default, c31 = default;
        Vector256<float> c40 = default, c41 = default, c50 = default, c51 = default;

        float* a0 = a, a1 = a + rs, a2 = a + 2 * rs, a3 = a + 3 * rs, a4 = a + 4 * rs, a5 = a + 5 * rs;
        long off = 0;
        for (int p = 0; p < kc; p++)
        {
            Vector256<float> b0 = Vector256.Load(pb);
            Vector256<float> b1 = Vector256.Load(pb + 8);
            Vector256<float> av = Vector256.Create(a0[off]);
            c00 = Vector256.FusedMultiplyAdd(av, b0, c00); c01 = Vector256.FusedMultiplyAdd(av, b1, c01);
            av = Vector256.Create(a1[off]);
            c10 = Vector256.FusedMultiplyAdd(av, b0, c10); c11 = Vector256.FusedMultiplyAdd(av, b1, c11);
            av = Vector256.Create(a2[off]);
            c20 = Vector256.FusedMultiplyAdd(av, b0, c20); c21 = Vector256.FusedMultiplyAdd(av, b1, c21);
            av = Vector256.Create(a3[off]);
            c30 = Vector256.FusedMultiplyAdd(av, b0, c30); c31 = Vector256.FusedMultiplyAdd(av, b1, c31);
            av = Vector256.Create(a4[off]);
            c40 = Vector256.FusedMultiplyAdd(av, b0, c40); c41 = Vector256.FusedMultiplyAdd(av, b1, c41);
            av = Vector256.Create(a5[off]);
            c50 = Vector256.FusedMultiplyAdd(av, b0, c50); c51 = Vector256.FusedMultiplyAdd(av, b1, c51);
            off += ks; pb += 16;
        }

        Vector256<float> va = Vector256.Create(alpha);
        Store256(c, c00, c01, va, load, bias); c += ldc;
        Store256(c, c10, c11, va, load, bias); c += ldc;
        Store256(c, c20, c21, va, load, bias); c += ldc;
        Store256(c, c30, c31, va, load, bias); c += ldc;
        Store256(c, c40, c41, va, load, bias); c += ldc;
        Store256(c, c50, c51, va, load, bias);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store256(float* c, Vector256<float> x0, Vector256<float> x1, Vector256<float> va, bool load, float* bias)
    {
        x0 *= va; x1 *= va;
        if (load) { x0 += Vector256.Load(c); x1 += Vector256.Load(c + 8); }
        if (bias != null) { x0 += Vector256.Load(bias); x1 += Vector256.Load(bias + 8); }
        x0.Store(c); x1.Store(c + 8);
    }
}
