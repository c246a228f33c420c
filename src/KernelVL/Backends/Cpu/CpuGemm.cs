namespace KernelVL.Backends.Cpu;

/// <summary>Interim straightforward GEMM (row-by-row axpy); replaced by the packed, blocked micro-kernel.</summary>
internal static unsafe class CpuGemm
{
    public static void Gemm(int m, int n, int k, float* a, int lda, bool transA, float* b, int ldb, bool transB,
                            float* c, int ldc, float alpha, bool accumulate, float* bias, bool parallel)
    {
        if (m == 0 || n == 0) return;
        long aa = (long)a, bb = (long)b, cc = (long)c, bi = (long)bias;
        void Row(int i)
        {
            float* A = (float*)aa, B = (float*)bb, C = (float*)cc, Bias = (float*)bi;
            var acc = new float[n];
            for (int p = 0; p < k; p++)
            {
                float av = transA ? A[(long)p * lda + i] : A[(long)i * lda + p];
                for (int j = 0; j < n; j++) acc[j] += av * (transB ? B[(long)j * ldb + p] : B[(long)p * ldb + j]);
            }
            for (int j = 0; j < n; j++)
            {
                float v = alpha * acc[j] + (Bias != null ? Bias[j] : 0f);
                C[(long)i * ldc + j] = accumulate ? C[(long)i * ldc + j] + v : v;
            }
        }
        if (parallel) Parallel.For(0, m, Row);
        else for (int i = 0; i < m; i++) Row(i);
    }
}
