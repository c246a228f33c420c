"""PyTorch baselines on the GPU machine, timed with CUDA events on random data: the device's time per call.

These are the numbers the project's CUDA kernels are measured against (as ratios, same card, same run):
bf16 GEMM at 4096^3 and the model's shapes, SDPA at T = 256..1024 with D = 64, top-k search over
1M x 768 f16 with 1024 queries and k = 10, the bidirectional InfoNCE loss over 4096 x 4096, and the
card's ceilings (a device-to-device copy, the bf16 matrix rate, the tensor cores' dense peak).

Timing (the same method as CudaBackend.MedianMs on our side): one event pair around a call on an idle stream would time
Python's dispatch too (10-40 us, more than a model-sized GEMM or SDPA takes), so each batch first puts a busy wait
(torch.cuda._sleep) on the stream, enqueues `calls` calls behind it, and times those with one event pair; the wait must
still be running when the last call is enqueued (else the batch is redone with a longer wait, and after the longest
the op is timed one call at a time, marked "per-call"). The median over batches is reported.

--subset headline: only what issue 4's ratios divide by (the copy, the bf16 GEMMs, SDPA), e.g. a second time after our
kernels ran, to see the card's drift within the run. The JSON is rewritten (to a temporary name, then renamed) after
every row, so a run stopped by its time limit keeps what it measured.
"""
import argparse, json, math, os, statistics, subprocess, time, torch
import torch.nn.functional as F

MAX_SPIN_MS = 50.0


def cycles_per_ms():
    """torch.cuda._sleep counts SM clock cycles: measured once (a sleep of 10^7 cycles timed with events, after one
    that wakes the clock up), not taken from a device property whose unit varies; the adaptive wait in bench corrects
    what the clock does later."""
    torch.cuda._sleep(10**7)
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); torch.cuda._sleep(10**7); b.record()
    torch.cuda.synchronize()
    ms = a.elapsed_time(b)
    return min(5.0e6, max(1.0e5, 1e7 / ms)) if ms > 0 else 2.0e6   # (an SM clock between 0.1 and 5 GHz)


def per_call(fn, reps):
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def bench(fn, cpm, warmup=5, reps=30):
    """(median ms a call on the device, "queued" | "per-call")."""
    fn()                                                # the first call (library set-up, lazy loading) not in the estimate
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(max(warmup - 1, 1)):
        fn()
    host_ms = (time.perf_counter() - t0) * 1e3 / max(warmup - 1, 1)
    torch.cuda.synchronize()
    span = per_call(fn, 3)                              # an upper bound of the device's time
    calls = int(min(64, max(1, round(1.0 / max(span, 1e-3)))))
    batches = max(5, math.ceil(reps / calls))
    spin = min(MAX_SPIN_MS, max(0.2, 2 * calls * host_ms + 0.2))
    times = []
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    while len(times) < batches:
        torch.cuda._sleep(int(spin * cpm))
        a.record()
        for _ in range(calls):
            fn()
        b.record()
        queued = not a.query()
        torch.cuda.synchronize()
        if queued:
            times.append(a.elapsed_time(b) / calls)
        elif spin < MAX_SPIN_MS:
            spin = min(MAX_SPIN_MS, spin * 4)
        else:
            return per_call(fn, reps), "per-call"
    return statistics.median(times), "queued"


def tc_peak(props):
    """The card's dense bf16/f16 tensor-core peak (TFLOP/s) and where it comes from: NVIDIA's figure for the known
    Hopper parts, else SMs x the highest SM clock x 4096 FLOP a clock (sm_90's dense rate), else None."""
    name = props.name
    table = [("H100 NVL", 835.5), ("H200 NVL", 835.5), ("H100 PCIe", 756.5), ("H100", 989.4), ("H200", 989.4), ("GH200", 989.4)]
    for key, tflops in table:
        if key in name:
            return tflops, f"NVIDIA's dense bf16 figure for {key}"
    try:
        mhz = float(subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits", "-i", "0"],
                                   capture_output=True, text=True, timeout=10).stdout.split()[0])
        if props.major == 9:
            return props.multi_processor_count * mhz * 1e6 * 4096 / 1e12, f"{props.multi_processor_count} SMs x {mhz:.0f} MHz x 4096 FLOP/clk"
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        pass
    return None, "unknown card: no tensor-core peak"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--subset", choices=["all", "headline"], default="all")
    args = ap.parse_args()
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    cpm = cycles_per_ms()
    peak, peak_source = tc_peak(props)
    rows = []
    doc = {"machine": {"gpu": props.name, "sm_count": props.multi_processor_count,
                       "memory_gib": round(props.total_memory / 2**30, 1), "torch": torch.__version__, "cuda": torch.version.cuda,
                       "tc_peak_tflops": peak, "tc_peak_source": peak_source, "subset": args.subset, "sleep_cycles_per_ms": round(cpm),
                       "timing": "device time a call: calls queued behind a busy wait, one event pair a batch, median of batches"},
           "results": rows}

    def save():
        tmp = f"{args.out}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2)
        os.replace(tmp, args.out)

    def add(op, shape, timed, flops=0.0, nbytes=0.0, **extra):
        ms, how = timed
        r = {"op": op, "shape": shape, "median_ms": round(ms, 5), "timing": how,
             "tflops": round(flops / ms / 1e9, 2) if flops else None,
             "gbps": round(nbytes / ms / 1e6, 1) if nbytes else None, **extra}
        rows.append(r)
        save()
        print(f'{op:28} {shape:32} {ms:9.4f} ms  {r["tflops"] or "":>8} TFLOP/s  {r["gbps"] or "":>8} GB/s  ({how})', flush=True)

    save()
    n = 1 << 28  # 1 GiB of f32 each way
    src = torch.randn(n, device=dev); dst = torch.empty_like(src)
    add("copy_d2d", "256M f32", bench(lambda: dst.copy_(src), cpm), nbytes=2 * 4 * n)
    del src, dst

    gemm_shapes = [(8192, 8192, 8192), (4096, 4096, 4096), (1024, 768, 768), (1024, 3072, 768), (1024, 768, 3072), (8192, 768, 768)]
    for (m, nn, k) in gemm_shapes:
        a = torch.randn(m, k, device=dev, dtype=torch.bfloat16); b = torch.randn(k, nn, device=dev, dtype=torch.bfloat16)
        add("matmul_bf16", f"{m}x{nn}x{k}", bench(lambda: a @ b, cpm), flops=2.0 * m * nn * k)

    for t in (256, 512, 1024):
        b, h, d = 8, 12, 64
        q, k, v = (torch.randn(b, h, t, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
        add("sdpa_bf16", f"B{b} H{h} T{t} D{d}", bench(lambda: F.scaled_dot_product_attention(q, k, v), cpm), flops=4.0 * b * h * t * t * d)
        if args.subset == "all":
            # A boolean mask keeps SDPA off its flash kernel: supplementary rows (issue 4's target is the unmasked one).
            mask = torch.ones(b, 1, 1, t, device=dev, dtype=torch.bool); mask[1:, ..., t // 2:] = False
            add("sdpa_bf16_mask", f"B{b} H{h} T{t} D{d}", bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), cpm), flops=4.0 * b * h * t * t * d)
    if args.subset == "headline":
        return

    rows_n = 1_000_000   # the corpus, as our top-k bench has it
    corpus = torch.randn(rows_n, 768, device=dev, dtype=torch.float16)
    queries = torch.randn(1024, 768, device=dev, dtype=torch.float16)
    add("topk_search_f16", "Q1024 N1000000 D768 k10", bench(lambda: torch.topk(queries @ corpus.T, 10, dim=1), cpm, warmup=2, reps=10),
        flops=2.0 * 1024 * rows_n * 768, nbytes=2.0 * rows_n * 768)
    del corpus, queries

    nn_ = 4096
    t_ = F.normalize(torch.randn(nn_, 768, device=dev), dim=1).requires_grad_()
    v_ = F.normalize(torch.randn(nn_, 768, device=dev), dim=1).requires_grad_()
    labels = torch.arange(nn_, device=dev)

    def infonce():
        s = t_ @ v_.T / 0.005
        loss = F.cross_entropy(s, labels) + F.cross_entropy(s.T, labels)
        loss.backward()
    add("infonce_fwd_bwd_f32", "N4096 D768", bench(infonce, cpm), flops=3 * 2.0 * nn_ * nn_ * 768, nbytes=4.0 * nn_ * nn_ * 4)

    # f32 GEMMs last (no ratio divides by them: the cuBLAS f32 comparison of the summary).
    torch.backends.cuda.matmul.allow_tf32 = False
    for (m, nn, k) in gemm_shapes:
        a32 = torch.randn(m, k, device=dev); b32 = torch.randn(k, nn, device=dev)
        add("matmul_f32", f"{m}x{nn}x{k}", bench(lambda: a32 @ b32, cpm), flops=2.0 * m * nn * k)


if __name__ == "__main__":
    main()
