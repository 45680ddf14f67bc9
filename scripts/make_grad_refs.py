#!/usr/bin/env python3
"""Reference gradients for PolicyEngine's TrainableModel (Tests/Fixtures/reference/grads.json).

For the committed tiny checkpoints (qwen2-tiny: q/k/v biases; qwen3-tiny: q/k norms, head_dim != hidden/heads;
llama-tiny: untied lm_head, llama3 RoPE scaling; all GQA 4 heads / 2 KV heads), in float64 with transformers'
eager attention:

  logprobs[i] = log_softmax(logits[i])[ids[i+1]],  loss = sum_i w[i] * logprobs[i]

and the gradient of `loss` for every parameter (tied lm_head/embedding: one tensor, both uses summed).
w has zeros at the start (prompt positions) and random normal values after.

A LoRA case (qwen2-tiny, rank 4, alpha 8, all seven projections) implements y = x W^T + b + s (x A^T) B^T directly
with torch (no PEFT); A and B come from closed-form formulas the Swift test repeats (see lora_values).

An AdamW case: torch.optim.AdamW (float32) on an 8-element tensor over 5 steps with formula gradients.

Stored per parameter: shape, L2 norm, max |g|, and up to 48 entries (evenly spaced flat indices plus the
argmax), to keep the fixture small. Floats are written with repr (float64).

    python3 scripts/make_grad_refs.py            # writes Tests/Fixtures/reference/grads.json
    python3 scripts/make_grad_refs.py --check    # recompute and compare with the committed file
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "Tests" / "Fixtures" / "models"
OUT = ROOT / "Tests" / "Fixtures" / "reference" / "grads.json"
SAMPLES = 48
SEQ_LEN = 16
ZERO_PREFIX = 4
LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def case_inputs(seed: int) -> tuple[list[int], list[float]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 1000, (SEQ_LEN,), generator=g).tolist()
    w = torch.randn(SEQ_LEN - 1, generator=g, dtype=torch.float64)
    w[:ZERO_PREFIX] = 0
    return ids, [float(x) for x in w]


def lora_values(kind: str, module_index: int, count: int) -> list[float]:
    """Closed-form adapter values, rounded to float32 (the Swift test computes the same)."""
    out = []
    for j in range(count):
        if kind == "A":
            v = 0.2 * math.sin(0.37 * j + 1.1 * module_index + 0.5)
        else:
            v = 0.2 * math.cos(0.53 * j + 0.7 * module_index + 0.25)
        out.append(float(torch.tensor(v, dtype=torch.float32)))
    return out


def summarize(t: torch.Tensor) -> dict:
    flat = t.detach().reshape(-1).double()
    n = flat.numel()
    idx = sorted(set([round(i * (n - 1) / (SAMPLES - 2)) for i in range(SAMPLES - 1)] + [int(flat.abs().argmax())]))
    return {"shape": list(t.shape), "norm": float(flat.norm()), "max_abs": float(flat.abs().max()),
            "indices": idx, "values": [float(flat[i]) for i in idx]}


def logprobs_and_loss(model, ids, w):
    x = torch.tensor([ids])
    logits = model(input_ids=x).logits[0].double()
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, x[0, 1:, None])[:, 0]
    loss = (lp * torch.tensor(w, dtype=torch.float64)).sum()
    return lp, loss


def load(name: str):
    m = AutoModelForCausalLM.from_pretrained(str(MODELS / name), attn_implementation="eager", dtype=torch.float64)
    m.eval()
    return m


def model_case(name: str, seed: int) -> dict:
    model = load(name)
    ids, w = case_inputs(seed)
    lp, loss = logprobs_and_loss(model, ids, w)
    loss.backward()
    grads = {}
    for pname, p in model.named_parameters():
        grads[pname] = summarize(p.grad)
    return {"model": name, "ids": ids, "weights": w, "logprobs": [float(v) for v in lp.detach()], "loss": float(loss.detach()), "grads": grads}


def lora_case(name: str, seed: int, rank: int, alpha: float) -> dict:
    model = load(name)
    for p in model.parameters():
        p.requires_grad_(False)
    scale = alpha / rank
    adapters = {}
    mi = 0
    for l, layer in enumerate(model.model.layers):
        for mod in LORA_MODULES:
            parent = layer.self_attn if mod in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            lin = getattr(parent, mod)
            out_f, in_f = lin.weight.shape
            a = torch.tensor(lora_values("A", mi, rank * in_f), dtype=torch.float64).reshape(rank, in_f).requires_grad_(True)
            b = torch.tensor(lora_values("B", mi, out_f * rank), dtype=torch.float64).reshape(out_f, rank).requires_grad_(True)
            prefix = f"model.layers.{l}.{'self_attn' if parent is layer.self_attn else 'mlp'}.{mod}"
            adapters[prefix + ".lora_A.weight"] = a
            adapters[prefix + ".lora_B.weight"] = b

            def hook(module, inputs, output, a=a, b=b):
                return output + scale * (inputs[0] @ a.T) @ b.T

            lin.register_forward_hook(hook)
            mi += 1
    ids, w = case_inputs(seed)
    lp, loss = logprobs_and_loss(model, ids, w)
    loss.backward()
    return {"model": name, "rank": rank, "alpha": alpha, "target_modules": LORA_MODULES, "ids": ids, "weights": w,
            "logprobs": [float(v) for v in lp.detach()], "loss": float(loss.detach()),
            "grads": {k: summarize(v.grad) for k, v in adapters.items()}}


def adamw_case() -> dict:
    init = [0.5, -0.25, 1.0, -1.5, 0.125, 2.0, -0.75, 0.0]
    p = torch.nn.Parameter(torch.tensor(init, dtype=torch.float32))
    cfg = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1}
    opt = torch.optim.AdamW([p], lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"],
                            weight_decay=cfg["weight_decay"])
    steps = []
    for t in range(1, 6):
        g = [float(torch.tensor(math.sin(j + 0.7 * t) * (1 + j) * 0.3, dtype=torch.float32)) for j in range(len(init))]
        p.grad = torch.tensor(g, dtype=torch.float32)
        opt.step()
        steps.append({"grad": g, "param": [float(v) for v in p.detach()]})
    return {"init": init, "config": cfg, "steps": steps}


def build() -> dict:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return {"seq_len": SEQ_LEN, "zero_prefix": ZERO_PREFIX,
            "models": [model_case("qwen2-tiny", 1), model_case("qwen3-tiny", 2), model_case("llama-tiny", 3)],
            "lora": lora_case("qwen2-tiny", 4, rank=4, alpha=8.0),
            "adamw": adamw_case(),
            "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__}}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    data = build()
    text = json.dumps(data, separators=(",", ":")) + "\n"
    if args.check:
        old = json.loads(OUT.read_text())
        ok = True
        for a, b in zip(old["models"] + [old["lora"]], data["models"] + [data["lora"]]):
            for k in b["grads"]:
                x, y = a["grads"][k]["values"], b["grads"][k]["values"]
                m = max(abs(u) for u in y) or 1
                if max(abs(u - v) for u, v in zip(x, y)) / m > 1e-9:
                    print("differs:", b["model"], k)
                    ok = False
        print("ok" if ok else "MISMATCH")
        return 0 if ok else 1
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
