"""verl side of scripts/check-export-loaders.sh (run in its verl venv).

Usage: verl_check.py EXPORT_DIR POLICY_DIR
EXPORT_DIR holds the `gateway-train export` files and verl-sft.parquet / verl-rl.parquet made
with the conversion in docs/export.md; POLICY_DIR is the checkpoint with the exported template as
chat_template.jinja. Every check raises on failure.
"""
import json
import os
import sys

import pandas as pd
import torch
import transformers
import verl
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset
from verl.utils.dataset.rl_dataset import RLHFDataset

export_dir, policy_dir = sys.argv[1:3]
with open(os.path.join(export_dir, "jsonl.jsonl"), encoding="utf-8") as f:
    by_id = {r["id"]: r for r in map(json.loads, f)}
tok = AutoTokenizer.from_pretrained(policy_dir)
longest = max(len(r["input_ids"]) for r in by_id.values())

# --- MultiTurnSFTDataset on --format verl-sft (data.messages_key=messages). ---
sft_file = os.path.join(export_dir, "verl-sft.parquet")
sft_ids = pd.read_parquet(sft_file)["id"].tolist()
config = OmegaConf.create({"messages_key": "messages", "max_length": longest + 8, "truncation": "error", "pad_mode": "no_padding"})
sft = MultiTurnSFTDataset(sft_file, tok, config)
assert len(sft) == len(sft_ids) > 0
extra_trained = {}
for i, episode_id in enumerate(sft_ids):
    item = sft[i]  # runs verl's own check: one message at a time == the whole conversation
    want = by_id[episode_id]
    ids = item["input_ids"].tolist()
    assert ids == want["input_ids"], f"{episode_id}: verl's ids differ from the logged ids"
    mask = item["loss_mask"].tolist()
    assert all(m >= w for m, w in zip(mask, want["loss_mask"])), f"{episode_id}: verl drops policy tokens"
    for t, (m, w) in enumerate(zip(mask, want["loss_mask"])):
        if m != w:
            key = tok.decode([ids[t]])
            extra_trained[key] = extra_trained.get(key, 0) + 1
print(f"verl MultiTurnSFTDataset: {len(sft)} rows, input_ids == the logged ids on all; it also trains on "
      f"{sum(extra_trained.values())} injected tokens the policy did not write: {extra_trained}")
# Whole assistant messages: only the protocol's injected <|im_end|> after a call and <think>\n.
assert set(extra_trained) <= {"<|im_end|>", "<think>", "\n"}, extra_trained

# --- RLHFDataset on --format verl-rl (data.prompt_key=prompt). ---
rl_file = os.path.join(export_dir, "verl-rl.parquet")
rl_ids = pd.read_parquet(rl_file)["id"].tolist()
prompt_len = max(r["loss_mask"].index(1) for r in by_id.values())
rl_config = OmegaConf.create({"prompt_key": "prompt", "max_prompt_length": prompt_len, "filter_overlong_prompts": True,
                              "truncation": "error", "cache_dir": os.path.join(export_dir, "verl-cache")})
rl = RLHFDataset(rl_file, tok, rl_config)
assert len(rl) == len(rl_ids) > 0, f"RLHFDataset kept {len(rl)} of {len(rl_ids)} prompts"
with_truth = 0
for i, episode_id in enumerate(rl_ids):
    item = rl[i]
    want = by_id[episode_id]
    # verl >= 0.8 tokenises in the agent loop: apply_chat_template(raw_prompt, add_generation_prompt=True).
    ids = tok.apply_chat_template(list(item["raw_prompt"]), add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    first = want["loss_mask"].index(1)
    assert ids == want["input_ids"][:first], f"{episode_id}: verl's prompt ids are not the policy's first input"
    assert item["data_source"] == want["data_source"]
    truth = item["reward_model"]["ground_truth"]
    expected = want["reward_model"]["ground_truth"]
    assert (truth is None and expected is None) or list(truth) == expected, (truth, expected)
    with_truth += truth is not None
    assert item["extra_info"]["episode_id"] == episode_id
print(f"verl RLHFDataset: {len(rl)} prompts, prompt ids == the policy's first input on all, "
      f"reward_model.ground_truth on every row ({with_truth} with references, the rest null)")
print("versions: verl", verl.__version__, "transformers", transformers.__version__, "torch", torch.__version__,
      "pandas", pd.__version__)
