"""PyTorch baselines on the GPU machine, timed with CUDA events (median after warm-up), on random data.

These are the numbers the project's CUDA kernels are measured against (as ratios, same card, same run):
bf16 GEMM at 4096^3 and the model's shapes, SDPA at T = 256..1024 with D = 64, top-k search over
1M x 768 f16 with 1024 queries and k = 10, the bidirectional InfoNCE loss over 4096 x 4096, and the
card's ceilings (a device-to-device copy and the bf16 matrix rate).
"""
import argparse, json, statistics, torch
import torch.nn.functional as F


def bench(fn, warmup=5, reps=30):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    rows = []

    def add(op, shape, ms, flops=0.0, nbytes=0.0, **extra):
        r = {"op": op, "shape": shape, "median_ms": round(ms, 5),
             "tflops": round(flops / ms / 1e9, 2) if flops else None,
             "gbps": round(nbytes / ms / 1e6, 1) if nbytes else None, **extra}
        rows.append(r)
        print(f'{op:28} {shape:32} {ms:9.4f} ms  {r["tflops"] or "":>8} TFLOP/s  {r["gbps"] or "":>8} GB/s')

    n = 1 << 28  # 1 GiB of f32 each way
    src = torch.randn(n, device=dev); dst = torch.empty_like(src)
    add("copy_d2d", "256M f32", bench(lambda: dst.copy_(src)), nbytes=2 * 4 * n)
    del src, dst

    for (m, nn, k) in [(8192, 8192, 8192), (4096, 4096, 4096), (1024, 768, 768), (1024, 3072, 768), (1024, 768, 3072), (8192, 768, 768)]:
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16); b = torch.randn(k, nn, device=dev, dtype=torch.bfloat16)
        add("matmul_bf16", f"{m}x{nn}x{k}", bench(lambda: a @ b), flops=2.0 * m * nn * k)
        a32 = a.float(); b32 = b.float()
        torch.backends.cuda.matmul.allow_tf32 = False
        add("matmul_f32", f"{m}x{nn}x{k}", bench(lambda: a32 @ b32), flops=2.0 * m * nn * k)

    for t in (256, 512, 1024):
        b, h, d = 8, 12, 64
        q, k, v = (torch.randn(b, h, t, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        mask = torch.ones(b, 1, 1, t, device=dev, dtype=torch.bool); mask[1:, ..., t // 2:] = False
        add("sdpa_bf16", f"B{b} H{h} T{t} D{d}", bench(lambda: F.scaled_dot_product_attention(q, k, v)), flops=4.0 * b * h * t * t * d)
        add("sdpa_bf16_mask", f"B{b} H{h} T{t} D{d}", bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)), flops=4.0 * b * h * t * t * d)

    corpus = torch.randn(1 << 20, 768, device=dev, dtype=torch.float16)
    queries = torch.randn(1024, 768, device=dev, dtype=torch.float16)
    add("topk_search_f16", "Q1024 N1M D768 k10", bench(lambda: torch.topk(queries @ corpus.T, 10, dim=1), warmup=2, reps=10),
        flops=2.0 * 1024 * (1 << 20) * 768, nbytes=2.0 * (1 << 20) * 768)
    del corpus

    nn_ = 4096
    t_ = F.normalize(torch.randn(nn_, 768, device=dev), dim=1).requires_grad_()
    v_ = F.normalize(torch.randn(nn_, 768, device=dev), dim=1).requires_grad_()
    labels = torch.arange(nn_, device=dev)

    def infonce():
        s = t_ @ v_.T / 0.005
        loss = F.cross_entropy(s, labels) + F.cross_entropy(s.T, labels)
        loss.backward()
    add("infonce_fwd_bwd_f32", "N4096 D768", bench(infonce), flops=3 * 2.0 * nn_ * nn_ * 768, nbytes=4.0 * nn_ * nn_ * 4)

    doc = {"machine": {"gpu": props.name, "sm_count": props.multi_processor_count,
                       "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda},
           "results": rows}
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)


if __name__ == "__main__":
    main()
