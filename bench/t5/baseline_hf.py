#!/usr/bin/env python3
"""Baseline for issue 5: Hugging Face transformers' T5EncoderModel on the same weights and the
same token-id rows as `ingest/examples/t5_bench.rs`, the same three batching strategies, real
tokens/s. Also checks that HF's last hidden states match ours on the rows the example dumped.

    python bench/t5/baseline_hf.py --model-dir DIR --rows ROWS.json [--hidden OURS.safetensors]
        [--batch 32] [--threads 1] [--window 1024] [--device cpu|cuda] [--dtype f32|bf16]
        [--repeat 1] [--tol 1e-4]

DIR, ROWS.json and OURS.safetensors come from
`t5_bench --model-dir DIR --rows-out ROWS.json --hidden-out OURS.safetensors`.
Exit status 1 when the hidden states differ by more than --tol (f32), or, in bf16, when ours
are further from an f32 run of the same weights than max(--tol, 1.5x HF bf16's own distance).
"""

import argparse
import json
import sys
import time

import torch
import transformers
from safetensors.numpy import load_file
from transformers import T5EncoderModel


def load_model(model_dir, dtype, device):
    """SDPA when this transformers version supports it for T5, eager otherwise."""
    kw = {}
    # transformers >= 4.56 names it `dtype`, older versions `torch_dtype`.
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    kw["dtype" if (major, minor) >= (4, 56) else "torch_dtype"] = dtype
    try:
        m = T5EncoderModel.from_pretrained(model_dir, attn_implementation="sdpa", **kw)
    except (ValueError, ImportError) as e:
        print(f"hf: sdpa not supported for T5 here ({str(e).splitlines()[0]}); using eager")
        m = T5EncoderModel.from_pretrained(model_dir, attn_implementation="eager", **kw)
    impl = getattr(m.config, "_attn_implementation", "?")
    return m.to(device).eval(), impl


def pad_batch(rows, t, device):
    ids = torch.zeros((len(rows), t), dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[r, : len(row)] = 1
    return ids.to(device), mask.to(device)


def run(model, rows, batch, device, pad):
    """Runs `rows` in batches of `batch`, each padded to pad(batch_rows); returns seconds.
    Reading one scalar of each output synchronises, as the Rust side does."""
    t0 = time.perf_counter()
    for i in range(0, len(rows), batch):
        chunk = rows[i : i + batch]
        ids, mask = pad_batch(chunk, pad(chunk), device)
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out.float().sum().item()
    return time.perf_counter() - t0


def batch_max(c):
    return max(len(r) for r in c)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--hidden", help="our hidden states (t5_bench --hidden-out) to compare")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: default)")
    ap.add_argument("--window", type=int, default=1024)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--tol", type=float, default=None, help="default 1e-4 (f32), 1e-2 (bf16)")
    ap.add_argument("--check-only", action="store_true")
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.dtype == "f32" else torch.bfloat16
    tol = a.tol if a.tol is not None else (1e-4 if a.dtype == "f32" else 1e-2)
    model, impl = load_model(a.model_dir, dtype, a.device)
    rows = json.load(open(a.rows))["rows"]
    real = sum(len(r) for r in rows)
    lens = sorted(len(r) for r in rows)
    cfg = model.config
    print(
        f"hf: transformers {transformers.__version__} torch {torch.__version__}; d_model "
        f"{cfg.d_model} layers {cfg.num_layers} heads {cfg.num_heads} d_ff {cfg.d_ff}; device "
        f"{a.device} dtype {a.dtype} threads {torch.get_num_threads()} attention {impl}; "
        f"{len(rows)} captions, batch {a.batch}, mean {real / len(rows):.1f} tokens "
        f"(median {lens[len(lens) // 2]}, max {lens[-1]})"
    )

    ok = True
    with torch.inference_mode():
        if a.hidden:
            ours = load_file(a.hidden)
            ids = torch.from_numpy(ours["ids"]).to(a.device)
            mask = torch.from_numpy(ours["mask"]).to(a.device)
            hf = model(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu()
            want = torch.from_numpy(ours["hidden"])
            real_pos = mask.cpu().bool()
            diff = (hf - want).abs()[real_pos]
            d = diff.max().item()
            scale = want[real_pos].abs().max().item()
            if a.dtype == "f32":
                ok = d <= tol
                verdict = f"tolerance {tol:g}"
            else:
                # bf16 rounding through the stack differs between any two implementations;
                # judge ours by its distance to an f32 run of the same (upcast) weights,
                # against HF bf16's own distance to it.
                ref32, _ = load_model(a.model_dir, torch.float32, a.device)
                ref = ref32(input_ids=ids, attention_mask=mask).last_hidden_state.float().cpu()
                del ref32
                e_ours = (want - ref).abs()[real_pos].max().item()
                e_hf = (hf - ref).abs()[real_pos].max().item()
                ok = e_ours <= max(tol, 1.5 * e_hf)
                verdict = (
                    f"against HF f32 on the same weights: ours bf16 {e_ours:.3e}, HF bf16 "
                    f"{e_hf:.3e}; pass if ours <= max({tol:g}, 1.5x HF's)"
                )
            print(
                f"hf check: {ids.shape[0]} rows (padded to {ids.shape[1]}), max |hf - ours| over "
                f"real tokens = {d:.3e} (max |ours| {scale:.2f}; {verdict}): "
                f"{'OK' if ok else 'MISMATCH'}"
            )
        if a.check_only:
            sys.exit(0 if ok else 1)

        w = rows[: a.batch]
        run(model, w, a.batch, a.device, lambda _: 128)
        run(model, w, a.batch, a.device, batch_max)
        srt = []
        for i in range(0, len(rows), a.window):
            srt.extend(sorted(rows[i : i + a.window], key=len))

        def best(f):
            return min(f() for _ in range(max(1, a.repeat)))

        res = [
            ("padded-128", best(lambda: run(model, rows, a.batch, a.device, lambda _: 128))),
            ("batch-max", best(lambda: run(model, rows, a.batch, a.device, batch_max))),
            (
                f"length-sorted (window {a.window})",
                best(lambda: run(model, srt, a.batch, a.device, batch_max)),
            ),
        ]
    for name, s in res:
        print(f"hf   {name:>28}: {real / s:>9.0f} real tokens/s  ({s:.2f} s)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
