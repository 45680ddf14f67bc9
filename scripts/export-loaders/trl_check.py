"""TRL side of scripts/check-export-loaders.sh (run in its TRL venv).

Usage: trl_check.py EXPORT_DIR POLICY_DIR ORIGINAL_POLICY_DIR OUT_DIR
EXPORT_DIR holds the four `gateway-train export` files; POLICY_DIR is the checkpoint with the
exported template as chat_template.jinja; ORIGINAL_POLICY_DIR the checkpoint with its own
(Qwen3-style) template. Every check raises on failure.
"""
import json
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import datasets  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

export_dir, policy_dir, original_dir, out_dir = sys.argv[1:5]
torch.manual_seed(0)


def rows(name):
    with open(os.path.join(export_dir, name), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


full = rows("jsonl.jsonl")
by_id = {r["id"]: r for r in full}
print(f"export: {len(full)} episodes, {sum(len(r['input_ids']) for r in full)} tokens, "
      f"{sum(sum(r['loss_mask']) for r in full)} policy tokens")

# --- 1. The written template re-renders the logged ids and the policy's tokens exactly. ---
tok = AutoTokenizer.from_pretrained(policy_dir)
with open(os.path.join(export_dir, "trl-sft.chat_template.jinja"), encoding="utf-8") as f:
    assert tok.chat_template == f.read(), "transformers did not load chat_template.jinja from the policy folder"
for r in full:
    msgs = [{"role": m["role"], "content": m["content"]} for m in r["messages"]]
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert out["input_ids"] == r["input_ids"], f"{r['id']}: template ids differ from the logged ids"
    assert out["assistant_masks"] == r["loss_mask"], f"{r['id']}: generation markers differ from loss_mask"
    prompt = tok.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in r["prompt"]],
                                     tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert prompt == r["input_ids"][:len(prompt)] and r["loss_mask"][len(prompt)] == 1 and sum(r["loss_mask"][:len(prompt)]) == 0, \
        f"{r['id']}: prompt + generation prompt is not the policy's first input"
print(f"template: {len(full)}/{len(full)} episodes re-render to the logged ids, generation masks == loss_mask")

# The checkpoint's own template (Qwen3's rule: earlier turns lose their reasoning) does not.
own = AutoTokenizer.from_pretrained(original_dir)
mismatched = sum(
    own.apply_chat_template([{"role": m["role"], "content": m["content"]} for m in r["messages"]], tokenize=True,
                            return_dict=True)["input_ids"] != r["input_ids"] for r in full)
multi_turn = sum(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in full)
print(f"template pitfall: the checkpoint's own template gives other ids on {mismatched}/{len(full)} episodes "
      f"({multi_turn} are multi-turn)")
assert mismatched >= multi_turn > 0

# --- 2. Two SFT steps on --format trl-sft: the trained tokens are exactly the policy's. ---
sft = datasets.load_dataset("json", data_files=os.path.join(export_dir, "trl-sft.jsonl"), split="train")
assert "messages" not in sft.column_names and {"input_ids", "assistant_masks"} <= set(sft.column_names)
for r in sft:
    assert r["input_ids"] == by_id[r["id"]]["input_ids"] and r["assistant_masks"] == by_id[r["id"]]["loss_mask"]
model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
seen = {"trained": 0, "batches": 0, "label_mask": 0}


def count_labels(module, args, kwargs, output):
    labels = kwargs.get("labels")
    if labels is not None and module.training:
        # The model shifts: position t's label is predicted from t-1, position 0 is never scored.
        seen["trained"] += int((labels[:, 1:] != -100).sum())
        seen["batches"] += 1
        mask = getattr(output, "label_mask", None)  # TRL's fused loss reports the positions it scored
        if mask is not None:
            seen["label_mask"] += int(mask.sum())


model.register_forward_hook(count_labels, with_kwargs=True)
batch = (len(sft) + 1) // 2
cfg = trl.SFTConfig(output_dir=os.path.join(out_dir, "sft"), max_steps=2, per_device_train_batch_size=batch,
                    gradient_accumulation_steps=1, learning_rate=1e-4, max_length=None, logging_steps=1,
                    save_strategy="no", report_to=[], use_cpu=True, dataloader_drop_last=False, seed=0)
trainer = trl.SFTTrainer(model=model, args=cfg, train_dataset=sft, processing_class=tok)
result = trainer.train()
want = sum(sum(r["loss_mask"]) for r in full)
print(f"TRL SFT: {trainer.state.global_step} steps, loss {result.training_loss:.4f}, trained tokens {seen['trained']}, "
      f"TRL's own label_mask count {seen['label_mask']}, sum of loss_mask {want}, tokens in the data {sum(len(r['input_ids']) for r in full)}")
assert trainer.state.global_step == 2 and seen["batches"] == 2
assert seen["trained"] == want, "TRL trained on other tokens than the policy's"
assert seen["label_mask"] in (0, want), "TRL's scored positions differ from the policy's tokens"

# --- 3. One GRPO step on --format verl-rl; the reward function reads ground_truth. ---
rl = datasets.load_dataset("json", data_files=os.path.join(export_dir, "verl-rl.jsonl"), split="train")
calls = []


def prompt_r1_reward(prompts, completions, reward_model, extra_info, data_source, **kwargs):
    out = []
    for c, rm, info in zip(completions, reward_model, extra_info):
        truth = rm["ground_truth"]  # present on every row: a list of references or None
        text = c[0]["content"] if isinstance(c, list) else c
        calls.append((info["episode_id"], truth))
        out.append(1.0 if truth and any(t in text for t in truth) else 0.0)
    return out


grpo_cfg = trl.GRPOConfig(output_dir=os.path.join(out_dir, "grpo"), max_steps=1, per_device_train_batch_size=2,
                          num_generations=2, max_completion_length=8, learning_rate=1e-5, logging_steps=1,
                          save_strategy="no", report_to=[], use_cpu=True, seed=0, temperature=1.0)
grpo = trl.GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32),
                       reward_funcs=[prompt_r1_reward], args=grpo_cfg, train_dataset=rl, processing_class=tok)
grpo.train()
print(f"TRL GRPO: {grpo.state.global_step} step, reward function called on {len(calls)} completions, "
      f"ground truths seen: {sorted({json.dumps(t) for _, t in calls})}")
assert grpo.state.global_step == 1 and len(calls) >= 2
assert all(i in by_id for i, _ in calls)
assert all(t == by_id[i]["reward_model"]["ground_truth"] for i, t in calls)
print("versions: trl", trl.__version__, "transformers", transformers.__version__, "datasets", datasets.__version__,
      "torch", torch.__version__)
