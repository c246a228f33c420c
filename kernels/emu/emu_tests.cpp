// Every kernel of kernels/*.cu runs on the host emulator (kv_emu.h) against f64 references on small random shapes that
// hit every edge: partial tiles, K not a multiple of the tile, transposes, batches, masks, fully masked rows, ties.
// Version 1 kernels passed the parity registry on an H100: their passing here checks the emulator itself; version 2
// kernels have not yet run on a GPU, and this is what checks their fragment layouts and index arithmetic meanwhile.
// Prints one line per case and "N passed, N failed"; exits 1 on any failure. Build and run: kernels/emu/run.sh (both modes).
#define KV_EMU 1
#include <algorithm>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include "../gemm.cu"
#include "../gemm_sm90.cu"
#include "../attention.cu"
#include "../topk.cu"
#include "../layernorm.cu"
#include "../infonce.cu"

static int passed = 0, failed = 0;
static std::mt19937_64 rng(12345);
static float uni() { return std::uniform_real_distribution<float>(-1.f, 1.f)(rng); }
static std::vector<float> rand_vec(size_t n) { std::vector<float> v(n); for (auto& x : v) x = uni(); return v; }
static float bf16r(float x) { return kv_emu_bf16_to_f32(kv_emu_bf16(x)); }

// The racecheck build (KV_EMU_MODE=racecheck): the shared-memory hazards found since the last case fail this one.
static bool races(const std::string& name)
{
#if defined(KV_RACECHECK)
    auto lines = kv_rc::take_reports();
    for (auto& l : lines) std::printf("%s: %s\n", name.c_str(), l.c_str());
    return !lines.empty();
#else
    (void)name;
    return false;
#endif
}
static void report(const std::string& name, double err, double budget)
{
    const bool raced = races(name);
    bool ok = err <= budget && !raced;   // false for NaN
    std::printf("%-72s %s (error %.2e, budget %.1e)%s\n", name.c_str(), ok ? "ok" : "FAIL", err, budget, raced ? ", shared-memory races" : "");
    (ok ? passed : failed)++;
}
static void report_bool(const std::string& name, bool ok, const std::string& why)
{
    const bool raced = races(name);
    ok = ok && !raced;
    std::printf("%-72s %s%s\n", name.c_str(), ok ? "ok" : "FAIL ", ok ? "" : raced ? (why + " shared-memory races").c_str() : why.c_str());
    (ok ? passed : failed)++;
}

static double gelu_ref(double x) { return 0.5 * x * (1 + std::erf(x / std::sqrt(2.0))); }

// C = act(op(A) op(B) + bias) (+ C0) in f64 from bf16-rounded operands; returns max |C - ref| / max |ref - C0|.
static double gemm_error(int M, int N, int K, int batch, bool tA, bool tB, bool bias, bool gelu, bool acc,
                         const std::vector<float>& A, const std::vector<float>& B, const std::vector<float>& bs,
                         const std::vector<float>& C0, const std::vector<float>& C, bool exact = false)
{
    double err = 0, mx = 0;
    for (int z = 0; z < batch; z++)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
            {
                double s = 0;
                for (int k = 0; k < K; k++)
                {
                    float a = tA ? A[(size_t)z * M * K + (size_t)k * M + i] : A[(size_t)z * M * K + (size_t)i * K + k];
                    float b = tB ? B[(size_t)z * K * N + (size_t)j * K + k] : B[(size_t)z * K * N + (size_t)k * N + j];
                    s += exact ? (double)a * b : (double)bf16r(a) * bf16r(b);
                }
                if (bias) s += bs[j];
                if (gelu) s = gelu_ref(s);
                size_t o = (size_t)z * M * N + (size_t)i * N + j;
                double want = (acc ? C0[o] : 0.0) + s, got = C[o];
                err = std::max(err, std::fabs(got - want));
                mx = std::max(mx, std::fabs(s));
            }
    return err / mx;
}

static void test_gemm(int M, int N, int K, int batch, bool tA, bool tB, bool bias, bool gelu, bool acc)
{
    auto A = rand_vec((size_t)batch * M * K), B = rand_vec((size_t)batch * K * N), bs = rand_vec(N), C0 = rand_vec((size_t)batch * M * N);
    int lda = tA ? M : K, ldb = tB ? K : N;
    char tag[160];
    std::snprintf(tag, sizeof tag, "%dx%dx%d b%d%s%s%s%s%s", M, N, K, batch, tA ? " tA" : "", tB ? " tB" : "", bias ? " bias" : "", gelu ? " gelu" : "", acc ? " acc" : "");
    // version 1: f32 operands
    {
        auto C = C0;
        kv_emu_launch({(unsigned)((N + 127) / 128), (unsigned)((M + 127) / 128), (unsigned)batch}, 256, 0, [&] {
            gemm_bf16(A.data(), B.data(), bias ? bs.data() : nullptr, C.data(), M, N, K, lda, ldb, N, tA, tB,
                      (long long)M * K, (long long)K * N, (long long)M * N, 1.f, acc, gelu);
        });
        report(std::string("gemm v1 ") + tag, gemm_error(M, N, K, batch, tA, tB, bias, gelu, acc, A, B, bs, C0, C), 2e-4);
    }
    // 3xTF32 (f32-accurate): against the f32 operands themselves; error budget 2e-6 of max |C| (f32 accumulation)
    if (!gelu)
    {
        auto C = C0;
        kv_emu_launch({(unsigned)((N + 127) / 128), (unsigned)((M + 127) / 128), (unsigned)batch}, 256, 0, [&] {
            gemm_f32x3(A.data(), B.data(), bias ? bs.data() : nullptr, C.data(), M, N, K, lda, ldb, N, tA, tB,
                       (long long)M * K, (long long)K * N, (long long)M * N, 1.f, acc);
        });
        report(std::string("gemm f32x3 ") + tag, gemm_error(M, N, K, batch, tA, tB, bias, gelu, acc, A, B, bs, C0, C, true), 2e-6);
    }
    // version 2: convert_bf16_kmajor (A as [M, Kp], op(B) as [N, Kp]), then gemm_bf16_tn
    {
        int kp = (K + 7) / 8 * 8;
        std::vector<unsigned short> a16((size_t)batch * M * kp, 0x7777), b16((size_t)batch * N * kp, 0x7777);
        kv_emu_launch({(unsigned)((kp + 31) / 32), (unsigned)((M + 31) / 32), (unsigned)batch}, 256, 0, [&] {
            convert_bf16_kmajor(A.data(), M, K, lda, tA, (long long)M * K, a16.data(), kp);
        });
        kv_emu_launch({(unsigned)((kp + 31) / 32), (unsigned)((N + 31) / 32), (unsigned)batch}, 256, 0, [&] {
            convert_bf16_kmajor(B.data(), N, K, ldb, !tB, (long long)K * N, b16.data(), kp);
        });
        auto C = C0;
        kv_emu_launch({(unsigned)((M + G2_BM - 1) / G2_BM), (unsigned)((N + G2_BN - 1) / G2_BN), (unsigned)batch}, G2_THREADS,
                      G2_STAGES * (G2_A_STAGE + G2_B_STAGE), [&] {
            gemm_bf16_tn(a16.data(), b16.data(), bias ? bs.data() : nullptr, C.data(), M, N, kp, kp, kp, N,
                         (long long)M * kp, (long long)N * kp, (long long)M * N, 1.f, acc, gelu);
        });
        report(std::string("gemm v2 ") + tag, gemm_error(M, N, K, batch, tA, tB, bias, gelu, acc, A, B, bs, C0, C), 2e-4);
        // version 3 (wgmma) on the same bf16 operands
        auto C3 = C0;
        kv_emu_launch({(unsigned)((M + G3_BM - 1) / G3_BM), (unsigned)((N + G3_BN - 1) / G3_BN), (unsigned)batch}, G3_THREADS, G3_SMEM_BYTES, [&] {
            gemm_bf16_wgmma(a16.data(), b16.data(), bias ? bs.data() : nullptr, C3.data(), M, N, kp, kp, kp, N,
                            (long long)M * kp, (long long)N * kp, (long long)M * N, 1.f, acc, gelu);
        });
        report(std::string("gemm v3 (wgmma) ") + tag, gemm_error(M, N, K, batch, tA, tB, bias, gelu, acc, A, B, bs, C0, C3), 2e-4);
        // version 4 (TMA, warp-specialised) on the same operands through 3-D tensor maps {Kp, rows, batch}
        auto v4 = [&](bool sharedB, const std::vector<float>& Bref, const char* what) {
            kv_tensor_map ta, tb;
            const unsigned long long da[3] = {(unsigned long long)kp, (unsigned long long)M, (unsigned long long)batch};
            const unsigned long long sa[2] = {2ull * kp, 2ull * M * kp};
            const unsigned long long db[3] = {(unsigned long long)kp, (unsigned long long)N, sharedB ? 1ull : (unsigned long long)batch};
            const unsigned long long sb[2] = {2ull * kp, 2ull * N * kp};
            const unsigned boxA[3] = {64, G3_BM, 1}, boxB[3] = {64, G3_BN, 1};
            kv_emu_encode_tensor_map(&ta, a16.data(), da, sa, boxA);
            kv_emu_encode_tensor_map(&tb, b16.data(), db, sb, boxB);
            // one item a block (grid = items), and persistent: 2 blocks taking turns over the items (when there are more)
            const unsigned tiles = (unsigned)(((M + G3_BM - 1) / G3_BM) * ((N + G3_BN - 1) / G3_BN)), items = tiles * (unsigned)batch;
            for (bool persistent : {false, true})
            {
                if (persistent && items <= 2u) continue;
                const unsigned grid = persistent ? 2u : items;
                auto C4 = C0;
                kv_emu_launch({grid, 1, 1}, G4_THREADS, G4_SMEM_BYTES, [&] {
                    gemm_bf16_wgmma_tma(ta, tb, bias ? bs.data() : nullptr, C4.data(), M, N, kp, N, 1, sharedB ? 0 : 1,
                                        (long long)M * N, 1.f, acc, gelu, 0, batch);
                });
                report(std::string("gemm v4 (TMA + wgmma") + what + (persistent ? ", persistent 2 blocks" : "") + ") " + tag,
                       gemm_error(M, N, K, batch, tA, tB, bias, gelu, acc, A, Bref, bs, C0, C4), 2e-4);
            }
            // clusters of two blocks sharing B (gemm_bf16_wgmma_tma_x2, tmB's box half a tile's rows): a cluster an item
            // (a pair of row tiles), and persistent: 2 clusters taking turns; then split-K in clusters
            {
                kv_tensor_map tbh;
                const unsigned boxBh[3] = {64, G3_BN / 2, 1};
                kv_emu_encode_tensor_map(&tbh, b16.data(), db, sb, boxBh);
                const unsigned pairs = (unsigned)(((M + G3_BM - 1) / G3_BM + 1) / 2 * ((N + G3_BN - 1) / G3_BN)), pitems = pairs * (unsigned)batch;
                for (bool persistent : {false, true})
                {
                    if (persistent && pitems <= 2u) continue;
                    const unsigned clusters = persistent ? 2u : pitems;
                    auto C4 = C0;
                    kv_emu_launch({2 * clusters, 1, 1}, G4_THREADS, G4_SMEM_BYTES, [&] {
                        gemm_bf16_wgmma_tma_x2(ta, tbh, bias ? bs.data() : nullptr, C4.data(), M, N, kp, N, 1, sharedB ? 0 : 1,
                                               (long long)M * N, 1.f, acc, gelu, 0, batch);
                    }, 2);
                    report(std::string("gemm v4 clusters of 2 (") + (persistent ? "persistent 2 clusters" : "a cluster an item") + what + ") " + tag,
                           gemm_error(M, N, K, batch, tA, tB, bias, gelu, acc, A, Bref, bs, C0, C4), 2e-4);
                }
                const int KT = (kp + G3_BK - 1) / G3_BK;
                if (batch == 1 && KT >= 2)
                {
                    const int ksteps = (KT + 1) / 2, splits = (KT + ksteps - 1) / ksteps;
                    std::vector<float> W((size_t)splits * M * N, std::numeric_limits<float>::quiet_NaN());
                    auto C5 = C0;
                    kv_emu_launch({2 * std::min(2u, pairs * (unsigned)splits), 1, 1}, G4_THREADS, G4_SMEM_BYTES, [&] {
                        gemm_bf16_wgmma_tma_x2(ta, tbh, nullptr, W.data(), M, N, kp, N, 1, 1, (long long)M * N, 1.f, 0, 0, ksteps, splits);
                    }, 2);
                    kv_emu_launch({(unsigned)std::min<long long>(((long long)M * N + 255) / 256, 64), 1, 1}, 256, 0, [&] {
                        gemm_splitk_reduce(W.data(), splits, bias ? bs.data() : nullptr, C5.data(), M, N, N, acc, gelu);
                    });
                    report(std::string("gemm v4 clusters of 2, split-K ") + std::to_string(splits) + "x" + std::to_string(ksteps) + " " + tag,
                           gemm_error(M, N, K, batch, tA, tB, bias, gelu, acc, A, Bref, bs, C0, C5), 2e-4);
                }
            }
            // split-K as the backend plans it (one batch): slices of ksteps K steps into a NaN-filled workspace, then
            // gemm_splitk_reduce with the bias, GELU and accumulate
            const int KT = (kp + G3_BK - 1) / G3_BK;
            if (batch == 1 && KT >= 2)
                for (int ksteps : {1, (KT + 2) / 3})
                {
                    if (ksteps == 1 && KT >= 6) continue;   // (one step a split: only on the short K; the other is 3 splits)
                    const int splits = (KT + ksteps - 1) / ksteps;
                    std::vector<float> W((size_t)splits * M * N, std::numeric_limits<float>::quiet_NaN());
                    auto C5 = C0;
                    kv_emu_launch({std::min(3u, tiles * (unsigned)splits), 1, 1}, G4_THREADS, G4_SMEM_BYTES, [&] {   // persistent, 3 blocks
                        gemm_bf16_wgmma_tma(ta, tb, nullptr, W.data(), M, N, kp, N, 1, 1, (long long)M * N, 1.f, 0, 0, ksteps, splits);
                    });
                    kv_emu_launch({(unsigned)std::min<long long>(((long long)M * N + 255) / 256, 64), 1, 1}, 256, 0, [&] {
                        gemm_splitk_reduce(W.data(), splits, bias ? bs.data() : nullptr, C5.data(), M, N, N, acc, gelu);
                    });
                    report(std::string("gemm v4 split-K ") + std::to_string(splits) + "x" + std::to_string(ksteps) + " " + tag,
                           gemm_error(M, N, K, batch, tA, tB, bias, gelu, acc, A, Bref, bs, C0, C5), 2e-4);
                }
        };
        v4(false, B, "");
        if (batch > 1)   // B shared by every batch (batchB 0): the reference repeats B's first batch
        {
            std::vector<float> Brep((size_t)batch * K * N);
            for (int z = 0; z < batch; z++) std::copy(B.begin(), B.begin() + (size_t)K * N, Brep.begin() + (size_t)z * K * N);
            v4(true, Brep, ", B shared");
        }
    }
}

// The Hopper 3xTF32 GEMM (gemm_tf32x3_wgmma_tma) as the backend runs it: split_tf32_kmajor of op(A) [M, K] and of
// op(B)^T [N, K] into hi / lo (K rounded up to 4), four f32 TMA maps, then C = alpha A B (+ C): against f64 of the
// f32 operands themselves, the f32 budget of gemm_f32x3.
static void test_gemm_tf32x3(int M, int N, int K, bool tA, bool tB, bool acc, float alpha)
{
    auto A = rand_vec((size_t)M * K), B = rand_vec((size_t)K * N), C0 = rand_vec((size_t)M * N);
    const std::vector<float> none;
    int lda = tA ? M : K, ldb = tB ? K : N, kp = (K + 3) / 4 * 4;
    std::vector<float> ah((size_t)M * kp, 7.f), al((size_t)M * kp, 7.f), bh((size_t)N * kp, 7.f), bl((size_t)N * kp, 7.f);
    kv_emu_launch({(unsigned)((kp + 31) / 32), (unsigned)((M + 31) / 32), 1}, 256, 0, [&] {
        split_tf32_kmajor(A.data(), M, K, lda, tA, ah.data(), al.data(), kp);
    });
    kv_emu_launch({(unsigned)((kp + 31) / 32), (unsigned)((N + 31) / 32), 1}, 256, 0, [&] {
        split_tf32_kmajor(B.data(), N, K, ldb, !tB, bh.data(), bl.data(), kp);
    });
    kv_tensor_map tah, tal, tbh, tbl;
    const unsigned long long da[3] = {(unsigned long long)kp, (unsigned long long)M, 1}, sa[2] = {4ull * kp, 4ull * kp * M};
    const unsigned long long db[3] = {(unsigned long long)kp, (unsigned long long)N, 1}, sb[2] = {4ull * kp, 4ull * kp * N};
    const unsigned boxA[3] = {32, G3_BM, 1}, boxB[3] = {32, G3_BN, 1};
    kv_emu_encode_tensor_map(&tah, ah.data(), da, sa, boxA, 4);
    kv_emu_encode_tensor_map(&tal, al.data(), da, sa, boxA, 4);
    kv_emu_encode_tensor_map(&tbh, bh.data(), db, sb, boxB, 4);
    kv_emu_encode_tensor_map(&tbl, bl.data(), db, sb, boxB, 4);
    auto C = C0;
    kv_emu_launch({(unsigned)((M + G3_BM - 1) / G3_BM), (unsigned)((N + G3_BN - 1) / G3_BN), 1}, G4_THREADS, G4_SMEM_BYTES, [&] {
        gemm_tf32x3_wgmma_tma(tah, tal, tbh, tbl, C.data(), M, N, kp, N, alpha, acc);
    });
    // gemm_error's reference is C0 (when acc) + op(A) op(B): fold alpha in by comparing (C - C0) / alpha + C0.
    auto Cs = C;
    for (size_t i = 0; i < Cs.size(); i++) Cs[i] = (float)(((double)C[i] - (acc ? C0[i] : 0.0)) / alpha + (acc ? C0[i] : 0.0));
    char tag[120];
    std::snprintf(tag, sizeof tag, "gemm tf32x3 (wgmma + TMA) %dx%dx%d%s%s%s alpha %g", M, N, K, tA ? " tA" : "", tB ? " tB" : "", acc ? " acc" : "", alpha);
    report(tag, gemm_error(M, N, K, 1, tA, tB, false, false, acc, A, B, none, C0, Cs, true), 2e-6);
}

// Attention at D 64 against f64 softmax over bf16-rounded q, k, v; P is rounded to bf16 on the tensor cores, hence
// the bf16 budget (2e-2 of max |o|, as the registry's). Checks o, lse, and the fully masked batch.
static void test_attention(int B, int H, int Tq, int Tk, bool mask)
{
    const int D = 64;
    auto q = rand_vec((size_t)B * H * Tq * D), k = rand_vec((size_t)B * H * Tk * D), v = rand_vec((size_t)B * H * Tk * D);
    std::vector<int> m((size_t)B * Tk, 1);
    if (mask)
        for (int b = 0; b < B; b++)
            for (int j = 0; j < Tk; j++) m[(size_t)b * Tk + j] = (b == B - 1) ? 0 : (j % 3 != 1);   // the last batch fully masked
    float scale = 0.125f;
    for (int ver = 1; ver <= 3; ver++)
    {
        std::vector<float> o((size_t)B * H * Tq * D, 7.f), lse((size_t)B * H * Tq, 7.f);
        if (ver == 1)
            kv_emu_launch({(unsigned)((Tq + ATT_Q - 1) / ATT_Q), (unsigned)(B * H), 1}, ATT_WARPS * 32, 0, [&] {
                attention_forward_d64(q.data(), k.data(), v.data(), mask ? m.data() : nullptr, H, Tq, Tk, scale, o.data(), lse.data());
            });
        else if (ver == 2)
            kv_emu_launch({(unsigned)((Tq + ATT2_Q - 1) / ATT2_Q), (unsigned)(B * H), 1}, ATT2_WARPS * 32, 0, [&] {
                attention_forward_d64_v2(q.data(), k.data(), v.data(), mask ? m.data() : nullptr, H, Tq, Tk, scale, o.data(), lse.data());
            });
        else   // version 3: wgmma with register A (gemm_sm90.cu)
            kv_emu_launch({(unsigned)((Tq + 127) / 128), (unsigned)(B * H), 1}, 256, ATT3_SMEM_BYTES, [&] {
                attention_forward_d64_wgmma(q.data(), k.data(), v.data(), mask ? m.data() : nullptr, H, Tq, Tk, scale, o.data(), lse.data());
            });
        double err = 0, mx = 0, lerr = 0;
        bool masked_ok = true;
        for (int b = 0; b < B; b++)
            for (int h = 0; h < H; h++)
                for (int i = 0; i < Tq; i++)
                {
                    size_t bh = (size_t)b * H + h, row = bh * Tq + i;
                    std::vector<double> s(Tk);
                    double smax = -INFINITY;
                    for (int j = 0; j < Tk; j++)
                    {
                        if (mask && !m[(size_t)b * Tk + j]) { s[j] = -INFINITY; continue; }
                        double dot = 0;
                        for (int d = 0; d < D; d++) dot += (double)bf16r(q[row * D + d]) * bf16r(k[(bh * Tk + j) * D + d]);
                        s[j] = dot * scale;
                        smax = std::max(smax, s[j]);
                    }
                    if (smax == -INFINITY)
                    {
                        for (int d = 0; d < D; d++) masked_ok &= o[row * D + d] == 0.f;
                        masked_ok &= std::isinf(lse[row]) && lse[row] < 0;
                        continue;
                    }
                    double sum = 0;
                    for (int j = 0; j < Tk; j++) sum += std::exp(s[j] - smax);
                    for (int d = 0; d < D; d++)
                    {
                        double acc = 0;
                        for (int j = 0; j < Tk; j++) acc += std::exp(s[j] - smax) / sum * bf16r(v[(bh * Tk + j) * D + d]);
                        err = std::max(err, std::fabs(o[row * D + d] - acc));
                        mx = std::max(mx, std::fabs(acc));
                    }
                    lerr = std::max(lerr, std::fabs(lse[row] - (smax + std::log(sum))));
                }
        char tag[160];
        std::snprintf(tag, sizeof tag, "attention v%d B%d H%d Tq%d Tk%d%s", ver, B, H, Tq, Tk, mask ? " mask (last batch all masked)" : "");
        report(std::string(tag) + " o", err / mx, 2e-2);
        report(std::string(tag) + " lse", lerr, 1e-3);
        if (mask) report_bool(std::string(tag) + " masked rows: o = 0, lse = -inf", masked_ok, "");
    }
}

// Exact top-k (f64 scores), ties to the lower index: the reference for both versions.
static std::vector<int> topk_ref(const std::vector<float>& qs, const std::vector<unsigned short>& c, int n, int d, int qi, int k, std::vector<double>& ex)
{
    ex.assign(n, 0);
    for (int r = 0; r < n; r++)
    {
        double s = 0;
        for (int j = 0; j < d; j++) s += (double)qs[(size_t)qi * d + j] * kv_f16_to_f32(c[(size_t)r * d + j]);
        ex[r] = s;
    }
    std::vector<int> idx(n);
    for (int r = 0; r < n; r++) idx[r] = r;
    std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return ex[a] > ex[b]; });
    idx.resize(k);
    return idx;
}

// A reported list is right when its scores match f64 to 1e-5 d, descend, have no duplicates, and no unreported row
// beats the k-th (tie-aware: equal rows may stand in for each other).
static std::string topk_check(const std::vector<float>& qs, const std::vector<unsigned short>& c, int n, int d, int Q, int k,
                              const std::vector<float>& S, const std::vector<int>& I, const std::vector<int>* fail)
{
    for (int qi = 0; qi < Q; qi++)
    {
        if (fail && (*fail)[qi]) continue;   // rerun with version 1 on the host side
        std::vector<double> ex;
        topk_ref(qs, c, n, d, qi, k, ex);
        std::vector<char> seen(n, 0);
        double tol = 1e-5 * d;
        for (int j = 0; j < k; j++)
        {
            int id = I[(size_t)qi * k + j];
            if (id < 0 || id >= n) return "query " + std::to_string(qi) + ": index out of range";
            if (seen[id]++) return "query " + std::to_string(qi) + ": duplicate index";
            if (std::fabs(ex[id] - S[(size_t)qi * k + j]) > tol) return "query " + std::to_string(qi) + ": wrong score at rank " + std::to_string(j);
            if (j && S[(size_t)qi * k + j] > S[(size_t)qi * k + j - 1]) return "query " + std::to_string(qi) + ": not descending";
        }
        double kth = S[(size_t)qi * k + k - 1];
        for (int r = 0; r < n; r++)
            if (!seen[r] && ex[r] > kth + tol) return "query " + std::to_string(qi) + ": row " + std::to_string(r) + " missing";
    }
    return "";
}

// topk.cu versions 1 and 2 on an f16 corpus. dupes > 1 repeats each row that many times: with dupes >= kp the tie
// at the k-th reaches the kp-th candidate, where the certificate must fail and version 2 must flag the query rather
// than return a list it cannot prove (ties inside the kp candidates are resolved exactly by the rescoring).
// rising: positive queries and rows that grow with their index, so that most of every tile beats the lists'
// thresholds and every tile's epilogue overflows and merges (the path whose barriers the starve mode tests).
static void test_topk(int Q, int n, int d, int k, int dupes, int sms, bool rising = false)
{
    std::vector<unsigned short> c((size_t)n * d);
    std::vector<unsigned short> base((size_t)((n + dupes - 1) / dupes) * d);
    for (size_t i = 0; i < base.size(); i++) base[i] = kv_f16_bits(rising ? 0.75f * (float)(i / d) / n + 0.25f * uni() : uni());
    for (int r = 0; r < n; r++) std::memcpy(&c[(size_t)r * d], &base[(size_t)(r / dupes) * d], (size_t)d * 2);
    auto qs = rand_vec((size_t)Q * d);
    if (rising) for (auto& x : qs) x = std::fabs(x);
    char tag[160];
    std::snprintf(tag, sizeof tag, "Q%d N%d D%d k%d%s", Q, n, d, k, dupes > 1 ? " duplicated rows" : rising ? " rising rows (every tile overflows)" : "");

    // version 1, on the first Q1 queries (its block per (query, chunk) is the emulator's slowest case)
    const int Q1 = std::min(Q, 12);
    int k2 = 1;
    while (k2 < k) k2 *= 2;
    int chunks = (n + TOPK_CHUNK - 1) / TOPK_CHUNK;
    std::vector<float> pS((size_t)Q1 * chunks * k2), S1((size_t)Q1 * k);
    std::vector<int> pI((size_t)Q1 * chunks * k2), I1((size_t)Q1 * k);
    kv_emu_launch({(unsigned)Q1, (unsigned)chunks, 1}, TOPK_THREADS, (size_t)d * 4, [&] { topk_chunks_f16(qs.data(), c.data(), n, d, k2, pS.data(), pI.data()); });
    kv_emu_launch({(unsigned)Q1, 1, 1}, TOPK_THREADS, 0, [&] { topk_merge(pS.data(), pI.data(), chunks, k2, k, S1.data(), I1.data()); });
    std::string p1 = topk_check(qs, c, n, d, Q1, k, S1, I1, nullptr);
    report_bool(std::string("topk v1 ") + tag, p1.empty(), p1);

    // version 2, with the host's plan (TopKV2Plan) for `sms` multiprocessors
    int kp = k <= 16 ? 32 : 64, qTiles = (Q + TC_BM - 1) / TC_BM, tiles = (n + TC_BN - 1) / TC_BN;
    int slices = std::clamp((2 * sms + qTiles - 1) / qTiles, 1, tiles), per = (tiles + slices - 1) / slices;
    slices = (tiles + per - 1) / per;
    std::vector<unsigned short> qh((size_t)Q * d);
    std::vector<float> maxNorm(1, 0.f), tS((size_t)Q * slices * kp), cS((size_t)Q * kp), S2((size_t)Q * k);
    std::vector<int> tI((size_t)Q * slices * kp), cI((size_t)Q * kp), I2((size_t)Q * k), fail(Q, 7);
    kv_emu_launch({2, 1, 1}, 256, 0, [&] { topk_f16_queries(qs.data(), (long long)Q * d, qh.data()); });
    kv_emu_launch({2, 1, 1}, 256, 0, [&] { topk_f16_max_norm(c.data(), n, d, maxNorm.data()); });
    kv_emu_launch({(unsigned)qTiles, (unsigned)slices, 1}, TC_THREADS, TC_SMEM_BYTES, [&] {
        topk_tc_f16(qh.data(), c.data(), Q, n, d, per, kp, tS.data(), tI.data());
    });
    double normRef = 0;
    for (int r = 0; r < n; r++)
    {
        double s = 0;
        for (int j = 0; j < d; j++) { double x = kv_f16_to_f32(c[(size_t)r * d + j]); s += x * x; }
        normRef = std::max(normRef, std::sqrt(s));
    }
    report(std::string("topk v2 max row norm ") + tag, std::fabs(maxNorm[0] - normRef) / normRef, 1e-6);
    // The slices' lists -> merge -> exact rescoring with the certificate, then the checks (versions 2 and 3 alike).
    auto finish = [&](const char* version) {
        std::fill(fail.begin(), fail.end(), 7);
        kv_emu_launch({(unsigned)Q, 1, 1}, TOPK_THREADS, 0, [&] { topk_merge(tS.data(), tI.data(), slices, kp, kp, cS.data(), cI.data()); });
        kv_emu_launch({(unsigned)Q, 1, 1}, 256, (size_t)d * 4, [&] {
            topk_f16_rescore(qs.data(), c.data(), n, d, kp, cS.data(), cI.data(), maxNorm.data(), k, S2.data(), I2.data(), fail.data());
        });
        int fails = 0;
        for (int x : fail) fails += x != 0;
        std::string p2 = topk_check(qs, c, n, d, Q, k, S2, I2, &fail);
        // Where the certificate passed, the result is version 1's list exactly (the same f32 rescoring).
        for (int qi = 0; qi < Q1 && p2.empty(); qi++)
            if (!fail[qi])
                for (int j = 0; j < k; j++)
                    if (I2[(size_t)qi * k + j] != I1[(size_t)qi * k + j] || S2[(size_t)qi * k + j] != S1[(size_t)qi * k + j])
                        { p2 = "query " + std::to_string(qi) + " differs from version 1"; break; }
        bool fallbackRight = dupes > 1 ? fails > 0 : fails == 0;   // ties at the k-th must fail the certificate; random data must not
        if (p2.empty() && !fallbackRight) p2 = std::to_string(fails) + " queries failed the certificate";
        report_bool(std::string("topk ") + version + " " + tag + " (" + std::to_string(fails) + " certificate failures)", p2.empty(), p2);
    };
    finish("v2");
    // version 3 (wgmma + TMA, kp 32 only): the same plan, its own scoring kernel
    if (kp == 32)
    {
        kv_tensor_map tq, tc;
        const unsigned long long dq[3] = {(unsigned long long)d, (unsigned long long)Q, 1}, sq[2] = {2ull * d, 2ull * d * Q};
        const unsigned long long dc[3] = {(unsigned long long)d, (unsigned long long)n, 1}, sc[2] = {2ull * d, 2ull * d * n};
        const unsigned boxQ[3] = {64, G3_BM, 1}, boxC[3] = {64, G3_BN, 1};
        kv_emu_encode_tensor_map(&tq, qh.data(), dq, sq, boxQ);
        kv_emu_encode_tensor_map(&tc, c.data(), dc, sc, boxC);
        std::fill(tS.begin(), tS.end(), std::numeric_limits<float>::quiet_NaN());
        kv_emu_launch({(unsigned)qTiles, (unsigned)slices, 1}, T3_THREADS, T3_SMEM_BYTES, [&] {
            topk_tc_f16_wgmma(tq, tc, Q, n, d, per, tS.data(), tI.data());
        });
        finish("v3 (wgmma + TMA)");
        // in clusters of four query tiles sharing the corpus tiles (topk_tc_f16_wgmma_x4, tmC's box a quarter of a
        // tile's rows): the grid's query tiles rounded up to four, the tiles past Q idle but loading their share
        kv_tensor_map tc4;
        const unsigned boxC4[3] = {64, G3_BN / 4, 1};
        kv_emu_encode_tensor_map(&tc4, c.data(), dc, sc, boxC4);
        std::fill(tS.begin(), tS.end(), std::numeric_limits<float>::quiet_NaN());
        kv_emu_launch({(unsigned)(qTiles + 3) / 4 * 4, (unsigned)slices, 1}, T3_THREADS, T3_SMEM_BYTES, [&] {
            topk_tc_f16_wgmma_x4(tq, tc4, Q, n, d, per, tS.data(), tI.data());
        }, 4);
        finish("v3 clusters of 4 (corpus multicast)");
    }
}

// Layer norm (+ residual) against f64: one block per row, rows of odd length.
static void test_layernorm(int rows, int c, bool residual)
{
    auto x = rand_vec((size_t)rows * c), r = rand_vec((size_t)rows * c), gmul = rand_vec(c), badd = rand_vec(c);
    for (auto& v : x) v = 3.f + 2.f * v;   // a mean far from zero: the two-pass variance must not cancel
    std::vector<float> h((size_t)rows * c), y((size_t)rows * c), mean(rows), rstd(rows);
    const float eps = 1e-5f;
    kv_emu_launch({(unsigned)rows, 1, 1}, 256, 0, [&] {
        layernorm_forward(x.data(), residual ? r.data() : nullptr, gmul.data(), badd.data(), residual ? h.data() : nullptr, y.data(),
                          mean.data(), rstd.data(), c, eps);
    });
    double err = 0;
    for (int i = 0; i < rows; i++)
    {
        double m = 0, var = 0;
        for (int j = 0; j < c; j++) m += (double)x[(size_t)i * c + j] + (residual ? r[(size_t)i * c + j] : 0.0);
        m /= c;
        for (int j = 0; j < c; j++) { double d = x[(size_t)i * c + j] + (residual ? r[(size_t)i * c + j] : 0.0) - m; var += d * d; }
        double rs = 1 / std::sqrt(var / c + eps);
        err = std::max(err, std::fabs(mean[i] - m) / std::fabs(m));
        err = std::max(err, std::fabs(rstd[i] - rs) / rs);
        for (int j = 0; j < c; j++)
        {
            double hv = x[(size_t)i * c + j] + (residual ? r[(size_t)i * c + j] : 0.0);
            if (residual) err = std::max(err, std::fabs(h[(size_t)i * c + j] - hv) / 5.0);
            err = std::max(err, std::fabs(y[(size_t)i * c + j] - ((hv - m) * rs * gmul[j] + badd[j])) / 4.0);
        }
    }
    report("layernorm rows " + std::to_string(rows) + " c " + std::to_string(c) + (residual ? " + residual" : ""), err, 5e-6);
}

// The InfoNCE loss and gradient as CudaBackend runs them against f64, unit rows, N not a multiple of the 64-tile.
// Version 1: diag, tiles (S computed in the tile), combine, f64 sum; backward tiles, diagonal, then dt += G v,
// dv += G^T t on gemm_f32x3. Version 2: S = invT t v^T on gemm_f32x3 into a NaN-filled buffer (a cell read before it is
// written, or never written, shows), diag_of, stats tiles, combine, sum; backward: S again, G over it in place
// (backward_tiles_of), diagonal, the same two GEMMs.
// near > 0: v_i = t_i + near * noise (unit again), so that each row's target dominates and the loss is small (every
// term on the log1p path, where a d that differs from the tiles' S_ii by an ulp would show).
static void test_infonce(int n, int dim, float invT, int version, float near = 0.f)
{
    std::vector<float> base;
    auto unit = [&] {
        auto x = rand_vec((size_t)n * dim);
        if (near > 0.f && !base.empty())
            for (size_t e = 0; e < x.size(); e++) x[e] = base[e] + near * x[e];
        for (int i = 0; i < n; i++)
        {
            double s = 0;
            for (int j = 0; j < dim; j++) s += (double)x[(size_t)i * dim + j] * x[(size_t)i * dim + j];
            for (int j = 0; j < dim; j++) x[(size_t)i * dim + j] = (float)(x[(size_t)i * dim + j] / std::sqrt(s));
        }
        return x;
    };
    auto t = unit();
    base = t;
    auto v = unit();
    const int nb = (n + NCE_T - 1) / NCE_T;
    const size_t slab = (size_t)nb * n;
    std::vector<float> d(n), part(6 * slab), lseR(n), lseC(n), terms(2 * n), loss(1), dl(1, 1.f);
    float* P = part.data();
    const float nan = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> G((size_t)n * n, nan), off(2 * slab), dt((size_t)n * dim, 0.f), dv((size_t)n * dim, 0.f);
    auto scores = [&] {   // G = S = invT t v^T (version 2)
        std::fill(G.begin(), G.end(), nan);
        kv_emu_launch({(unsigned)((n + 127) / 128), (unsigned)((n + 127) / 128), 1}, 256, 0, [&] {
            gemm_f32x3(t.data(), v.data(), nullptr, G.data(), n, n, dim, dim, dim, n, 0, 1, 0, 0, 0, invT, 0);
        });
    };
    if (version == 1)
    {
        kv_emu_launch({(unsigned)((n + 31) / 32), 1, 1}, 32, 0, [&] { infonce_diag(t.data(), v.data(), n, dim, invT, d.data()); });
        kv_emu_launch({(unsigned)nb, (unsigned)nb, 1}, NCE_THREADS, 0, [&] {
            infonce_forward_tiles(t.data(), v.data(), d.data(), n, dim, invT, P, P + slab, P + 2 * slab, P + 3 * slab, P + 4 * slab, P + 5 * slab);
        });
    }
    else
    {
        scores();
        kv_emu_launch({(unsigned)((n + 255) / 256), 1, 1}, 256, 0, [&] { infonce_diag_of(G.data(), n, d.data()); });
        kv_emu_launch({(unsigned)nb, (unsigned)nb, 1}, NCE_THREADS, 0, [&] {
            infonce_stats_tiles(G.data(), d.data(), n, P, P + slab, P + 2 * slab, P + 3 * slab, P + 4 * slab, P + 5 * slab);
        });
    }
    kv_emu_launch({(unsigned)((2 * n + 255) / 256), 1, 1}, 256, 0, [&] {
        infonce_combine(d.data(), P, P + slab, P + 2 * slab, P + 3 * slab, P + 4 * slab, P + 5 * slab, n, nb, lseR.data(), lseC.data(), terms.data());
    });
    kv_emu_launch({1, 1, 1}, 1024, 0, [&] { sum_scaled_f64(terms.data(), 2 * n, 1.f / n, loss.data()); });
    if (version == 1)
    {
        std::fill(G.begin(), G.end(), nan);
        kv_emu_launch({(unsigned)nb, (unsigned)nb, 1}, NCE_THREADS, 0, [&] {
            infonce_backward_tiles(t.data(), v.data(), lseR.data(), lseC.data(), dl.data(), n, dim, invT, G.data(), off.data(), off.data() + slab);
        });
    }
    else
    {
        scores();
        kv_emu_launch({(unsigned)nb, (unsigned)nb, 1}, NCE_THREADS, 0, [&] {
            infonce_backward_tiles_of(G.data(), lseR.data(), lseC.data(), dl.data(), n, invT, off.data(), off.data() + slab);
        });
    }
    kv_emu_launch({(unsigned)((n + 255) / 256), 1, 1}, 256, 0, [&] {
        infonce_backward_diag(off.data(), off.data() + slab, dl.data(), n, nb, invT, G.data());
    });
    kv_emu_launch({(unsigned)((dim + 127) / 128), (unsigned)((n + 127) / 128), 1}, 256, 0, [&] {
        gemm_f32x3(G.data(), v.data(), nullptr, dt.data(), n, dim, n, n, dim, dim, 0, 0, 0, 0, 0, 1.f, 1);
    });
    kv_emu_launch({(unsigned)((dim + 127) / 128), (unsigned)((n + 127) / 128), 1}, 256, 0, [&] {
        gemm_f32x3(G.data(), t.data(), nullptr, dv.data(), n, dim, n, n, dim, dim, 1, 0, 0, 0, 0, 1.f, 1);
    });
    // f64
    std::vector<double> S((size_t)n * n), lr(n), lc(n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < n; j++)
        {
            double s = 0;
            for (int k = 0; k < dim; k++) s += (double)t[(size_t)i * dim + k] * v[(size_t)j * dim + k];
            S[(size_t)i * n + j] = s * invT;
        }
    auto lse = [&](auto at) { double m = -INFINITY; for (int j = 0; j < n; j++) m = std::max(m, at(j)); double s = 0; for (int j = 0; j < n; j++) s += std::exp(at(j) - m); return m + std::log(s); };
    double L = 0;
    for (int i = 0; i < n; i++)
    {
        lr[i] = lse([&](int j) { return S[(size_t)i * n + j]; });
        lc[i] = lse([&](int j) { return S[(size_t)j * n + i]; });
        // lse - S_ii = log1p(sum over j != i of exp(S_ij - S_ii)): no cancellation however small the term
        double offR = 0, offC = 0, sii = S[(size_t)i * n + i];
        for (int j = 0; j < n; j++)
            if (j != i) { offR += std::exp(S[(size_t)i * n + j] - sii); offC += std::exp(S[(size_t)j * n + i] - sii); }
        L += std::log1p(offR) + std::log1p(offC);
    }
    L /= n;
    double lerr = std::fabs(loss[0] - L) / std::fabs(L), serr = 0;
    for (int i = 0; i < n; i++) serr = std::max({serr, std::fabs(lseR[i] - lr[i]) / std::max(1.0, std::fabs(lr[i])), std::fabs(lseC[i] - lc[i]) / std::max(1.0, std::fabs(lc[i]))});
    double gt = 0, gv = 0, mt = 0, mv = 0, g = invT / n;
    for (int i = 0; i < n; i++)
        for (int k = 0; k < dim; k++)
        {
            double at = 0, av = 0;
            for (int j = 0; j < n; j++)
            {
                at += g * (std::exp(S[(size_t)i * n + j] - lr[i]) + std::exp(S[(size_t)i * n + j] - lc[j]) - (i == j ? 2 : 0)) * v[(size_t)j * dim + k];
                av += g * (std::exp(S[(size_t)j * n + i] - lr[j]) + std::exp(S[(size_t)j * n + i] - lc[i]) - (i == j ? 2 : 0)) * t[(size_t)j * dim + k];
            }
            gt = std::max(gt, std::fabs(dt[(size_t)i * dim + k] - at)); mt = std::max(mt, std::fabs(at));
            gv = std::max(gv, std::fabs(dv[(size_t)i * dim + k] - av)); mv = std::max(mv, std::fabs(av));
        }
    std::string tag = "infonce v" + std::to_string(version) + " N" + std::to_string(n) + " D" + std::to_string(dim) + " invT " + std::to_string((int)invT)
        + (near > 0.f ? " near (loss " + std::to_string(L) + ")" : "");
    report(tag + " loss", lerr, 5e-6);
    report(tag + " lse (relative)", serr, 2e-6);
    report(tag + " dt (gemm_f32x3)", gt / mt, 1e-5);
    report(tag + " dv (gemm_f32x3)", gv / mv, 1e-5);
}

// Layer norm backward against f64 (accumulating onto random values): dx per row, dgamma / dbeta over row chunks.
// sum_scaled_f64 alone on more terms than its 1024 threads (each sums several, then the tree over all 1024 slots):
// the InfoNCE tests' 2N <= 400 terms leave the upper half of the tree zero, where a missing barrier cannot show.
static void test_sum_scaled(int count, float scale)
{
    auto x = rand_vec((size_t)count);
    std::vector<float> y(1, std::numeric_limits<float>::quiet_NaN());
    kv_emu_launch({1, 1, 1}, 1024, 0, [&] { sum_scaled_f64(x.data(), count, scale, y.data()); });
    double want = 0, mag = 0;
    for (float v : x) { want += v; mag += std::fabs(v); }
    want *= scale;
    report("infonce sum_scaled_f64 " + std::to_string(count) + " terms", std::fabs(y[0] - want) / (std::fabs(scale) * mag), 1e-7);
}

static void test_layernorm_backward(int rows, int c, int chunks)
{
    auto x = rand_vec((size_t)rows * c), gmul = rand_vec(c), dy = rand_vec((size_t)rows * c);
    std::vector<float> mean(rows), rstd(rows);
    for (int i = 0; i < rows; i++)
    {
        double m = 0, v = 0;
        for (int j = 0; j < c; j++) m += x[(size_t)i * c + j];
        m /= c;
        for (int j = 0; j < c; j++) v += (x[(size_t)i * c + j] - m) * (x[(size_t)i * c + j] - m);
        mean[i] = (float)m;
        rstd[i] = (float)(1 / std::sqrt(v / c + 1e-5));
    }
    auto dx0 = rand_vec((size_t)rows * c), dg0 = rand_vec(c), db0 = rand_vec(c);
    auto dx = dx0, dg = dg0, db = db0;
    int per = (rows + chunks - 1) / chunks;
    chunks = (rows + per - 1) / per;
    std::vector<float> pg((size_t)chunks * c), pb((size_t)chunks * c);
    kv_emu_launch({(unsigned)rows, 1, 1}, 256, 0, [&] { layernorm_backward_dx(x.data(), gmul.data(), mean.data(), rstd.data(), dy.data(), c, dx.data()); });
    kv_emu_launch({(unsigned)((c + 31) / 32), (unsigned)chunks, 1}, 256, 0, [&] {
        layernorm_backward_params_partial(x.data(), mean.data(), rstd.data(), dy.data(), rows, c, per, pg.data(), pb.data());
    });
    kv_emu_launch({(unsigned)((c + 255) / 256), 1, 1}, 256, 0, [&] { layernorm_backward_params_combine(pg.data(), pb.data(), chunks, c, dg.data(), db.data()); });
    double ex = 0, mx = 0, eg = 0, mg = 0, eb = 0, mb = 0;
    std::vector<double> rg(c, 0), rb(c, 0);
    for (int i = 0; i < rows; i++)
    {
        double a = 0, b = 0;
        for (int j = 0; j < c; j++)
        {
            double xh = (x[(size_t)i * c + j] - (double)mean[i]) * rstd[i], gd = (double)dy[(size_t)i * c + j] * gmul[j];
            a += gd; b += gd * xh;
            rg[j] += dy[(size_t)i * c + j] * xh; rb[j] += dy[(size_t)i * c + j];
        }
        a /= c; b /= c;
        for (int j = 0; j < c; j++)
        {
            double xh = (x[(size_t)i * c + j] - (double)mean[i]) * rstd[i];
            double want = rstd[i] * ((double)dy[(size_t)i * c + j] * gmul[j] - a - xh * b);
            ex = std::max(ex, std::fabs(dx[(size_t)i * c + j] - dx0[(size_t)i * c + j] - want)); mx = std::max(mx, std::fabs(want));
        }
    }
    for (int j = 0; j < c; j++)
    {
        eg = std::max(eg, std::fabs(dg[j] - dg0[j] - rg[j])); mg = std::max(mg, std::fabs(rg[j]));
        eb = std::max(eb, std::fabs(db[j] - db0[j] - rb[j])); mb = std::max(mb, std::fabs(rb[j]));
    }
    std::string tag = "layernorm backward rows " + std::to_string(rows) + " c " + std::to_string(c) + " chunks " + std::to_string(chunks);
    report(tag + " dx", ex / mx, 2e-6);
    report(tag + " dgamma", eg / mg, 2e-6);
    report(tag + " dbeta", eb / mb, 2e-6);
}

// Attention backward (D 64) against f64: o and lse from an f64 forward, dq/dk/dv accumulated onto random values,
// bf16 budget (2e-2 of max |gradient|, the registry's for the cuda backend).
static void test_attention_backward(int B, int H, int Tq, int Tk, bool mask)
{
    const int D = 64;
    auto q = rand_vec((size_t)B * H * Tq * D), k = rand_vec((size_t)B * H * Tk * D), v = rand_vec((size_t)B * H * Tk * D);
    auto dO = rand_vec((size_t)B * H * Tq * D);
    std::vector<int> m((size_t)B * Tk, 1);
    if (mask)
        for (int b = 0; b < B; b++)
            for (int j = 0; j < Tk; j++) m[(size_t)b * Tk + j] = (b == B - 1) ? 0 : (j % 4 != 2);
    const float scale = 0.125f;
    size_t nq = (size_t)B * H * Tq, nk = (size_t)B * H * Tk;
    std::vector<float> o(nq * D), lse(nq);
    std::vector<double> P((size_t)B * H * Tq * Tk);
    for (size_t bh = 0; bh < (size_t)B * H; bh++)
        for (int i = 0; i < Tq; i++)
        {
            int b = (int)(bh / H);
            std::vector<double> s(Tk);
            double mx = -INFINITY;
            for (int j = 0; j < Tk; j++)
            {
                if (mask && !m[(size_t)b * Tk + j]) { s[j] = -INFINITY; continue; }
                double dot = 0;
                for (int d = 0; d < D; d++) dot += (double)q[(bh * Tq + i) * D + d] * k[(bh * Tk + j) * D + d];
                s[j] = dot * scale; mx = std::max(mx, s[j]);
            }
            double sum = 0;
            for (int j = 0; j < Tk; j++) sum += mx == -INFINITY ? 0 : std::exp(s[j] - mx);
            lse[bh * Tq + i] = mx == -INFINITY ? -INFINITY : (float)(mx + std::log(sum));
            for (int j = 0; j < Tk; j++) P[(bh * Tq + i) * Tk + j] = mx == -INFINITY ? 0 : std::exp(s[j] - mx) / sum;
            for (int d = 0; d < D; d++)
            {
                double acc = 0;
                for (int j = 0; j < Tk; j++) acc += P[(bh * Tq + i) * Tk + j] * v[(bh * Tk + j) * D + d];
                o[(bh * Tq + i) * D + d] = (float)acc;
            }
        }
    auto dq0 = rand_vec(nq * D), dk0 = rand_vec(nk * D), dv0 = rand_vec(nk * D);
    auto dq = dq0, dk = dk0, dv = dv0;
    std::vector<float> delta(nq);
    kv_emu_launch({(unsigned)((nq + 7) / 8), 1, 1}, 256, 0, [&] { attention_backward_delta(o.data(), dO.data(), (long long)nq, delta.data()); });
    kv_emu_launch({(unsigned)((Tk + 63) / 64), (unsigned)(B * H), 1}, 128, 0, [&] {
        attention_backward_dkdv_d64(q.data(), k.data(), v.data(), mask ? m.data() : nullptr, lse.data(), delta.data(), dO.data(), H, Tq, Tk, scale, dk.data(), dv.data());
    });
    kv_emu_launch({(unsigned)((Tq + 63) / 64), (unsigned)(B * H), 1}, 128, 0, [&] {
        attention_backward_dq_d64(q.data(), k.data(), v.data(), mask ? m.data() : nullptr, lse.data(), delta.data(), dO.data(), H, Tq, Tk, scale, dq.data());
    });
    std::vector<double> rq(nq * D, 0), rk(nk * D, 0), rv(nk * D, 0);
    for (size_t bh = 0; bh < (size_t)B * H; bh++)
        for (int i = 0; i < Tq; i++)
        {
            double di = 0;
            for (int d = 0; d < D; d++) di += (double)dO[(bh * Tq + i) * D + d] * o[(bh * Tq + i) * D + d];
            for (int j = 0; j < Tk; j++)
            {
                double pij = P[(bh * Tq + i) * Tk + j];
                if (pij == 0) continue;
                double dp = 0;
                for (int d = 0; d < D; d++) dp += (double)dO[(bh * Tq + i) * D + d] * v[(bh * Tk + j) * D + d];
                double dsij = pij * (dp - di);
                for (int d = 0; d < D; d++)
                {
                    rv[(bh * Tk + j) * D + d] += pij * dO[(bh * Tq + i) * D + d];
                    rq[(bh * Tq + i) * D + d] += scale * dsij * k[(bh * Tk + j) * D + d];
                    rk[(bh * Tk + j) * D + d] += scale * dsij * q[(bh * Tq + i) * D + d];
                }
            }
        }
    auto rel = [](const std::vector<float>& got, const std::vector<float>& init, const std::vector<double>& want) {
        double e = 0, mx = 0;
        for (size_t i = 0; i < got.size(); i++) { e = std::max(e, std::fabs(got[i] - init[i] - want[i])); mx = std::max(mx, std::fabs(want[i])); }
        return e / mx;
    };
    char tag[160];
    std::snprintf(tag, sizeof tag, "attention backward B%d H%d Tq%d Tk%d%s", B, H, Tq, Tk, mask ? " mask (last batch all masked)" : "");
    report(std::string(tag) + " dq", rel(dq, dq0, rq), 2e-2);
    report(std::string(tag) + " dk", rel(dk, dk0, rk), 2e-2);
    report(std::string(tag) + " dv", rel(dv, dv0, rv), 2e-2);
    // a fully masked batch: its gradients stay exactly the initial values
    if (mask)
    {
        bool same = true;
        size_t first = (size_t)(B - 1) * H;
        for (size_t i = first * Tq * D; i < nq * D; i++) same &= dq[i] == dq0[i];
        for (size_t i = first * Tk * D; i < nk * D; i++) same &= dk[i] == dk0[i] && dv[i] == dv0[i];
        report_bool(std::string(tag) + " fully masked batch untouched", same, "");
    }
}

int main()
{
    // KV_EMU_MODE=race: eager copies and a shuffled, stalling schedule; starve: eager copies, a victim warp (group) held
    // back while the rest of the block runs ahead (kv_emu_set_mode); default: copies land at their wait.
    kv_emu_set_mode(std::getenv("KV_EMU_MODE"));
    if (const char* seed = std::getenv("KV_EMU_SEED")) kv_emu_rng ^= std::strtoull(seed, nullptr, 10) * 0x2545f4914f6cdd1dull;   // other schedules
    std::setvbuf(stdout, nullptr, _IOLBF, 0);   // a run stopped by a deadlock still shows the checks before it
    // KV_EMU_ONLY=family[,family...]: only those tests (gemm, tf32x3, attention, attention_backward, topk, layernorm,
    // layernorm_backward, infonce); kernels/emu/mutate.sh uses it to rerun only the kernels a mutation touches.
    const char* only = std::getenv("KV_EMU_ONLY");
    auto want = [&](const char* family) {
        if (!only || !*only) return true;
        std::string list = std::string(",") + only + ",";
        return list.find(std::string(",") + family + ",") != std::string::npos;
    };
    // GEMM: both versions, every transpose, partial tiles, K not a multiple of 32 (nor, for version 1, of 8), batches.
    if (want("gemm")) test_gemm(150, 300, 72, 1, false, true, true, false, false);
    if (want("gemm")) test_gemm(70, 90, 40, 2, false, false, false, false, true);
    if (want("gemm")) test_gemm(33, 260, 19, 1, true, false, true, true, false);
    if (want("gemm")) test_gemm(130, 20, 50, 2, true, true, false, false, true);
    if (want("gemm")) test_gemm(64, 520, 200, 1, false, true, true, false, false);   // K over several 64-wide stages, N over 2 tiles
    if (want("gemm")) test_gemm(20, 270, 600, 1, false, true, false, true, true);    // 10 K stages: the 4-stage rings wrap twice (v4's barrier phases)
    if (want("gemm")) test_gemm(300, 520, 330, 1, false, true, true, true, true);   // 3 row tiles (clusters of 2: the last pair's second idle), 3 column tiles
    // The Hopper 3xTF32 GEMM: partial tiles, K not a multiple of 32 (nor of 4), transposes, K over several rings.
    if (want("tf32x3")) test_gemm_tf32x3(150, 300, 72, false, true, false, 20.f);
    if (want("tf32x3")) test_gemm_tf32x3(130, 270, 45, true, false, true, 1.f);
    if (want("tf32x3")) test_gemm_tf32x3(70, 100, 300, false, false, true, 1.f);
    if (want("tf32x3")) test_gemm_tf32x3(40, 520, 130, true, true, false, 0.5f);
    // Attention at D 64: partial query and key tiles, one key, masks with a fully masked batch.
    if (want("attention")) test_attention(2, 2, 150, 100, true);
    if (want("attention")) test_attention(1, 2, 70, 1, false);
    if (want("attention")) test_attention(1, 1, 130, 200, false);
    if (want("attention")) test_attention(2, 1, 70, 450, true);   // 8 key tiles: version 3's three K/V buffers wrap twice
    if (want("attention_backward")) test_attention_backward(2, 2, 100, 150, true);
    if (want("attention_backward")) test_attention_backward(1, 1, 70, 3, false);   // (one key: dq = dk = 0 exactly, no relative error to measure)
    // Top-k over f16: partial tiles and query tiles, D 72 (not a multiple of 32), kp 32 and 64, N below kp, ties.
    if (want("topk")) test_topk(150, 3000, 72, 10, 1, 3);
    if (want("topk")) test_topk(130, 1500, 64, 40, 1, 2);
    if (want("topk")) test_topk(9, 20, 16, 7, 1, 4);
    if (want("topk")) test_topk(40, 2000, 32, 10, 64, 2);
    if (want("topk")) test_topk(130, 2100, 200, 16, 1, 2);   // D 200: 4 stages of 64 through version 3's 3-stage ring, several tiles a slice
    if (want("topk")) test_topk(130, 3000, 72, 10, 1, 1, true);   // 12 tiles in one slice, each overflowing the candidate lists
    if (want("topk")) test_topk(520, 1100, 72, 10, 1, 3);   // 5 query tiles: clusters of 4, the second with 3 idle
    // Layer norm and InfoNCE (version 1, which ran on the H100; the gradient's GEMM is the new gemm_f32x3).
    if (want("layernorm")) test_layernorm(3, 777, true);
    if (want("layernorm")) test_layernorm(2, 64, false);
    if (want("layernorm_backward")) test_layernorm_backward(300, 777, 7);
    if (want("layernorm_backward")) test_layernorm_backward(5, 40, 1);
    if (want("infonce")) test_infonce(130, 48, 20.f, 1);
    if (want("infonce")) test_infonce(70, 16, 200.f, 1);
    if (want("infonce")) test_infonce(130, 48, 20.f, 2);   // version 2: S on gemm_f32x3, the tile kernels read it
    if (want("infonce")) test_infonce(70, 16, 200.f, 2);
    if (want("infonce")) test_infonce(200, 40, 50.f, 2);   // 4 x 4 tiles, the last partial; 2 x 2 GEMM tiles
    for (int version = 1; version <= 2; version++)   // small losses: every target its line's max, the log1p terms
    {
        if (want("infonce")) test_infonce(3, 5, 20.f, version, 0.3f);
        if (want("infonce")) test_infonce(70, 24, 20.f, version, 0.1f);
    }
    if (want("infonce")) test_sum_scaled(3000, 0.25f);
    // The dynamic shared memory each kernel is launched with: CudaBackend's constants must equal these (a test compares).
    std::printf("shared gemm_bf16_tn %d\n", G2_STAGES * (G2_A_STAGE + G2_B_STAGE));
    std::printf("shared gemm_bf16_wgmma %d\n", G3_SMEM_BYTES);
    std::printf("shared gemm_bf16_wgmma_tma %d\n", G4_SMEM_BYTES);
    std::printf("shared topk_tc_f16 %d\n", TC_SMEM_BYTES);
    std::printf("shared topk_tc_f16_wgmma %d\n", T3_SMEM_BYTES);
    std::printf("threads gemm_bf16_wgmma_tma %d\n", G4_THREADS);
    std::printf("threads topk_tc_f16_wgmma %d\n", T3_THREADS);
    std::printf("shared attention_forward_d64_wgmma %d\n", ATT3_SMEM_BYTES);
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}
