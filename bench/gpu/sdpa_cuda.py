#!/usr/bin/env python3
"""PyTorch scaled_dot_product_attention on CUDA on the attention shape of flashring_cuda_bench (b1 s2048 h32 d128
causal), fp32 and bf16: median ms and TFLOP/s, for the ratio the issue asks (goal: flashring's kernel >= 0.7x)."""
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    print("sdpa_cuda.py: PyTorch is not installed here; skipping the SDPA baseline")
    sys.exit(0)
if not torch.cuda.is_available():
    print("sdpa_cuda.py: no CUDA device for PyTorch; skipping")
    sys.exit(0)

B, S, H, D = 1, 2048, 32, 128
flops = 4.0 * H * D * S * (S + 1) / 2
for dtype in (torch.float32, torch.bfloat16):
    q, k, v = (torch.randn(B, H, S, D, device="cuda", dtype=dtype) for _ in range(3))
    for _ in range(3):
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.cuda.synchronize()
    times = []
    for _ in range(20):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        F.scaled_dot_product_attention(q, k, v, is_causal=True)
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    ms = sorted(times)[len(times) // 2]
    print(f"sdpa {str(dtype).split('.')[-1]:8s} b{B} s{S} h{H} d{D} causal: {ms:.3f} ms, {flops / (ms * 1e9):.2f} TFLOP/s")
