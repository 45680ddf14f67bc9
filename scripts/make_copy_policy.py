#!/usr/bin/env python3
"""Pre-train the tiny base policy of the learning experiments: Tests/Fixtures/models/promptr1-copy/.

Why it exists (docs/learning.md): the experiments' environment (Sources/GatewayTrainer/
LookupWorld.swift) rewards a policy only when its prompt restates the question's subject and
property ("the P of the S"). The protocol fixture promptr1-tiny was trained on six fixed questions
and cannot copy a word from its question into its prompt, so after a warm start it names random
subjects and RL has nothing to select. This base brings what a pre-trained LLM brings to such a
task: it knows the words of its world, reads the question in the Prompt-R1 first prompt, writes a
prompt with the question's own words, and copies a value from the upstream's reply into <answer>.
It does NOT know what the experiments' literal upstream wants or any answer:

- its words are those of WORLD_CONFIG's world (experiments/toy-ci.json), with the config's
  question wording; every pair is seen with RANDOM values drawn per episode, so no answer table
  is learned (the experiments' held-out pairs are new as (pair, answer), not as words);
- its prompt style is drawn uniformly from STYLES for every episode (two of the seven state
  "the P of the S"), and its pre-training upstream answers at random (P_ANSWER) whatever the
  prompt says, so the base has no preference for the style a literal upstream answers: that is
  what the experiments' RL has to find.

Each pre-training episode is an episode of the protocol built exactly as the gateway builds the
policy's context (piecewise tokenisation, protocol.md sections 1, 2, 4; the helpers of
scripts/make_protocol_policy.py): first prompt with the question, a turn with a fixed thought and a
call with the styled prompt, the injected reply, and a final turn whose answer is the value or
"unknown". The thoughts are the ones LookupWorld's demonstrations use. Loss: cross-entropy on the
policy's tokens, with the tokens that must be copied weighted COPY_WEIGHT. Curriculum: the
question alone as first prompt, then the full one. Fresh random episodes every step.

What did not work (docs/learning.md, "The copy-pre-trained base"): the same-shape Qwen3 as
promptr1-tiny, 83 generic names disjoint from the worlds, four question wordings, unweighted loss,
full first prompt from the start: copy accuracy at chance after 1050 steps. Measured here: with
unweighted loss even a 60-token context needs ~900 steps before the subject is copied, and the
value is not copied while only 2 of 7 episodes carry one; the copy weight, the answer-at-random
upstream and the short-context stage make all three copies exact within 700 steps.

    python3 scripts/make_copy_policy.py             # ~4 min on one CPU thread; writes the fixture
    python3 scripts/make_copy_policy.py --out /tmp/x   # elsewhere

Outputs:
  Tests/Fixtures/models/promptr1-copy/           config.json, model.safetensors, generation_config.json,
                                                 tokenizer.json, tokenizer_config.json (qwen3-tiny's)
  Tests/Fixtures/reference/promptr1-copy-pretraining.json   world, styles, schedule and the measured
                                                 copy accuracy (teacher-forced, and greedy against
                                                 the literal upstream)

Deterministic for a thread count (fixed seeds, torch.use_deterministic_algorithms).
Needs torch, transformers (5.x), tokenizers, safetensors, numpy.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import make_protocol_policy as mpp  # noqa: E402

REPO = mf.REPO
FIXTURES = REPO / "Tests" / "Fixtures"
MODEL_NAME = "promptr1-copy"
SEED = 4242

# A Qwen2 (no per-head q/k normalisation, which caps how sharply a head can pick one token out of a
# 650-token first prompt) with 8 heads of 16 in 2 layers: 0.46 M parameters, 1.8 MB in float32,
# cheap for the Swift engine in the debug builds the CI-sized experiment runs in.
DIMS = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=8,
            intermediate_size=256, max_position_embeddings=4096)

# Curriculum: SHORT_STEPS with the question alone as first prompt (the copy heads form in cheap
# 60-token contexts), then FULL_STEPS with the real Prompt-R1 first prompt (the heads carry over).
SHORT_STEPS = 450
FULL_STEPS = 250
SHORT_BATCH = 16
FULL_BATCH = 8
WARMUP = 30
PEAK_LR = 3e-3
MIN_LR = 3e-4
EVAL_EVERY = 50
# Loss weight of the tokens that must be copied (subject and property in the call's prompt, the
# value in <answer>) relative to the other policy tokens. With weight 1 they are ~3 of ~60 tokens
# per episode and the copy heads formed only after ~900 steps on short contexts (the value never
# within the time measured); with 10 they form within ~200-400.
COPY_WEIGHT = 10.0
# The pre-training upstream answers "The P of the S is V." with this probability WHATEVER the prompt
# says (a generic, helpful upstream), else "I am not sure ...": the base learns to copy a value from
# a reply (dense value targets) and to say "unknown" otherwise, and learns nothing about which
# prompt the experiments' literal upstream answers.
P_ANSWER = 0.9
# The world whose words the base learns (a pre-trained LLM knows the words of its world): subjects,
# properties, value lists and question wording of this config. Values are drawn at random per
# episode, so no answer table is learned.
WORLD_CONFIG = REPO / "experiments" / "toy-ci.json"

STYLES = [
    "What is the {property} of the {subject}?",
    "Tell me the {property} of the {subject}.",
    "{question}",
    "Please answer my question about the {subject}.",
    "What {property} does the {subject} have?",
    "I need the {property}.",
    "The {subject} {property}?",
]
NOT_SURE = "I am not sure what you are asking about."
THINK1 = "<think>I will ask the large language model.</think>\n"
THINK2 = "I have its response.</think>\n"


def load_world() -> dict:
    w = json.loads(WORLD_CONFIG.read_text())["world"]
    return {"subjects": w["subjects"], "properties": w["properties"],
            "question_template": w.get("question_template", "The {subject}: what {property} is it?")}


def check_world_tokens(tok, world: dict) -> None:
    """Every subject and property is one token after a space, before any punctuation the styles put
    after it, and occurs nowhere in the Prompt-R1 first prompt; every value is one token both after
    a space (the reply) and after <answer>. So a copy is one token and the token is the same id in
    question, prompt, reply and answer."""
    fp = set(mpp.enc(tok, mpp.first_prompt("x")))
    for w in world["subjects"] + list(world["properties"]):
        for c in ["", "?", ":", ".", ","]:
            assert len(mpp.enc(tok, " " + w + c)) == (2 if c else 1), f"{w!r}{c} is not one token"
        assert mpp.enc(tok, " " + w)[0] not in fp, f"{w!r} occurs in the first prompt"
    for vals in world["properties"].values():
        for v in vals:
            assert mpp.enc(tok, "<answer>" + v + "</answer>")[2:3] == mpp.enc(tok, v), v
            assert mpp.enc(tok, " is " + v + ".")[-2:-1] == mpp.enc(tok, v), v


def upstream(prompt: str, subject: str, prop: str, value: str) -> str:
    """The experiments' literal upstream (LookupWorld.answer), for the greedy check."""
    if f"the {prop} of the {subject}".lower() in prompt.lower():
        return f"The {prop} of the {subject} is {value}."
    return NOT_SURE


def make_episode(rng: random.Random, world: dict) -> dict:
    subject = rng.choice(world["subjects"])
    prop = rng.choice(sorted(world["properties"]))
    value = rng.choice(world["properties"][prop])
    question = world["question_template"].format(subject=subject, property=prop)
    prompt = rng.choice(STYLES).format(subject=subject, property=prop, question=question)
    reply = f"The {prop} of the {subject} is {value}." if rng.random() < P_ANSWER else NOT_SURE
    final = value if reply != NOT_SURE else "unknown"
    return {"kind": "copy", "question": question,
            "turns": [THINK1 + mpp.json_call(prompt), THINK2 + f"<answer>{final}</answer>"],
            "upstream_answers": [reply], "upstream_prompts": [prompt], "final_answer": final,
            "subject": subject, "property": prop, "value": value, "prompt": prompt}


def copy_positions(tok, seq: dict, ep: dict) -> list[tuple[int, str]]:
    """(position in ids, kind) of the tokens that must be copied: the subject and property in the
    call's prompt, and the value in <answer>."""
    out = []
    start = len(seq["prompt_ids"])
    t1 = seq["turn_ids"][0]
    sid = mpp.enc(tok, " " + ep["subject"])
    pid = mpp.enc(tok, " " + ep["property"])
    for j, t in enumerate(t1):
        if [t] == sid:
            out.append((start + j, "subject"))
        elif [t] == pid:
            out.append((start + j, "property"))
    start2 = start + len(t1) + len(seq["injections"][0]["ids"])
    t2 = seq["turn_ids"][1]
    if ep["final_answer"] != "unknown":
        vid = mpp.enc(tok, ep["value"])
        for j in range(len(t2) - len(vid) + 1):
            if t2[j:j + len(vid)] == vid and tok.decode(t2[:j]).endswith("<answer>"):
                out.append((start2 + j, "value"))
    return out


def batch(tok, eps: list[dict], pad_id: int):
    """Right-padded ids, labels (-100 off the policy's tokens) and per-token loss weights
    (COPY_WEIGHT at the copy positions, 1 at the other policy tokens)."""
    seqs = [mpp.build_sequence(tok, e) for e in eps]
    n = max(len(s["ids"]) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s["ids"])] = torch.tensor(s["ids"])
        labels[b, :len(s["ids"])] = torch.tensor(s["labels"])
    weights = (labels != -100).float()
    for b, (s, e) in enumerate(zip(seqs, eps)):
        for pos, _ in copy_positions(tok, s, e):
            weights[b, pos] = COPY_WEIGHT
    return seqs, ids, labels, weights


def loss_and_logits(model, ids, labels, weights=None, share_prefix: bool = True):
    """Weighted mean cross-entropy over the policy tokens (plain mean without `weights`). Right
    padding and causal attention: padded positions never influence real ones, so no mask. With
    `share_prefix`, the first prompt's part that every sequence of the batch shares (system message,
    tools, "Question:") is computed once and its keys and values repeated over the batch, as the
    engine's prefix cache does; no label falls in it."""
    tgt = labels[:, 1:]
    w = (labels != -100).float() if weights is None else weights
    w = w[:, 1:]
    if share_prefix:
        same = (ids == ids[:1]).all(0)
        n_shared = int(same.long().cumprod(0).sum())
        n_shared = min(n_shared, int((labels != -100).long().argmax(1).min()) - 1)
        cache = transformers.DynamicCache()
        model.model(input_ids=ids[:1, :n_shared], past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(ids.shape[0])
        pos = torch.arange(n_shared, ids.shape[1])[None].expand(ids.shape[0], -1)
        h = model.model(input_ids=ids[:, n_shared:], past_key_values=cache, position_ids=pos,
                        use_cache=True).last_hidden_state[:, :-1]
        tgt, w = tgt[:, n_shared:], w[:, n_shared:]
    else:
        h = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    sel = tgt != -100
    logits = model.lm_head(h[sel]).float()
    ce = torch.nn.functional.cross_entropy(logits, tgt[sel], reduction="none")
    return (ce * w[sel]).sum() / w[sel].sum(), logits, sel


def make_model(tok) -> Qwen2ForCausalLM:
    v = tok.get_vocab()
    cfg = Qwen2Config(vocab_size=mf.QWEN_MODEL_VOCAB, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      hidden_act="silu", initializer_range=0.02, attention_dropout=0.0, use_cache=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                      use_sliding_window=False, sliding_window=None,
                      max_window_layers=DIMS["num_hidden_layers"],
                      bos_token_id=v["<|endoftext|>"], eos_token_id=v[mpp.IM_END],
                      attn_implementation="sdpa", **DIMS)
    torch.manual_seed(SEED)
    return Qwen2ForCausalLM(cfg).float()


def lr_at(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to MIN_LR at the last step."""
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(1, steps - WARMUP)
    return MIN_LR + 0.5 * (PEAK_LR - MIN_LR) * (1 + math.cos(math.pi * t))


@torch.no_grad()
def teacher_forced(model, tok, eps, pad_id) -> dict:
    """Argmax accuracy at the copy positions, and the mean loss per policy token (unweighted)."""
    model.eval()
    hits = {"subject": [0, 0], "property": [0, 0], "value": [0, 0]}
    losses = []
    for i in range(0, len(eps), 8):
        chunk = eps[i:i + 8]
        seqs, ids, labels, _ = batch(tok, chunk, pad_id)
        h = model.model(input_ids=ids, use_cache=False).last_hidden_state
        for b, (s, e) in enumerate(zip(seqs, chunk)):
            for pos, kind in copy_positions(tok, s, e):
                pred = int(model.lm_head(h[b, pos - 1]).argmax())
                hits[kind][0] += pred == s["ids"][pos]
                hits[kind][1] += 1
        loss, _, _ = loss_and_logits(model, ids, labels)
        losses.append(float(loss))
    model.train()
    out = {k: round(a / max(1, n), 4) for k, (a, n) in hits.items()}
    out["loss"] = round(sum(losses) / len(losses), 5)
    return out


def greedy_check(model, tok, eps) -> dict:
    """Greedy piecewise decoding (as the gateway) with the experiments' LITERAL upstream: how often
    the prompt is one of the styles with the question's own words, how often it restates (so the
    literal upstream answers), and how often the final answer is the value when it did and
    "unknown" when it did not."""
    model.eval()
    same_prompt = restating = correct = 0
    for e in eps:
        got = mpp.run_episode(model, tok, e["question"],
                              lambda k, p, e=e: upstream(p, e["subject"], e["property"], e["value"]))
        prompts = got["upstream_prompts"]
        expected = [s.format(subject=e["subject"], property=e["property"], question=e["question"])
                    for s in STYLES]
        same_prompt += bool(prompts) and prompts[0] in expected
        answered = bool(prompts) and upstream(prompts[0], e["subject"], e["property"], e["value"]) != NOT_SURE
        restating += answered
        correct += got["final_answer"] == (e["value"] if answered else "unknown")
    model.train()
    n = len(eps)
    return {"prompt_is_a_style_with_the_question_words": round(same_prompt / n, 4),
            "restating": round(restating / n, 4),
            "final_answer_consistent_with_reply": round(correct / n, 4), "episodes": n}


def short_first_prompt(question: str) -> str:
    """The curriculum's first stage: the question alone in a user turn."""
    return f"<|im_start|>user\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\n"


def generate(out: Path, threads: int) -> None:
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "models" / "qwen3-tiny"))
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")
    world = load_world()
    check_world_tokens(tok, world)
    full_first_prompt = mpp.first_prompt

    model = make_model(tok)
    mf.log(f"model: {sum(p.numel() for p in model.parameters())} parameters")
    val = [make_episode(random.Random(SEED + 1 + i), world) for i in range(64)]
    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    _, ids, labels, w = batch(tok, val[:4], pad_id)
    with torch.no_grad():
        a = float(loss_and_logits(model, ids, labels, w, share_prefix=True)[0])
        b = float(loss_and_logits(model, ids, labels, w, share_prefix=False)[0])
    assert abs(a - b) < 1e-4 * max(1.0, abs(b)), f"shared-prefix loss {a} != plain loss {b}"
    data_rng = random.Random(SEED + 7)
    steps = SHORT_STEPS + FULL_STEPS
    history = []
    t0 = time.time()
    for step in range(steps):
        short = step < SHORT_STEPS
        mpp.first_prompt = short_first_prompt if short else full_first_prompt
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps)
        eps = [make_episode(data_rng, world) for _ in range(SHORT_BATCH if short else FULL_BATCH)]
        _, ids, labels, w = batch(tok, eps, pad_id)
        loss, _, _ = loss_and_logits(model, ids, labels, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 10 == 0:
            mf.log(f"step {step + 1:4d} {'short' if short else 'full'} loss {loss.item():.4f} "
                   f"lr {lr_at(step, steps):.2e} ({time.time() - t0:.0f} s)")
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == steps:
            mpp.first_prompt = full_first_prompt
            full = teacher_forced(model, tok, val, pad_id)
            history.append({"step": step + 1, "stage": "short" if short else "full",
                            "train_loss": round(loss.item(), 5), "full_context": full})
            mf.log(f"  teacher-forced copy accuracy, full first prompt: {full}")
    mpp.first_prompt = full_first_prompt

    mdir = out / "models" / MODEL_NAME
    mpp.write_checkpoint(model, tok, mdir)
    model = AutoModelForCausalLM.from_pretrained(str(mdir), attn_implementation="eager").float().eval()
    tok = AutoTokenizer.from_pretrained(str(mdir))
    greedy = greedy_check(model, tok, val[:24])
    mf.log(f"greedy, literal upstream: {greedy}")
    mf.write_json_pretty(out / "reference" / f"{MODEL_NAME}-pretraining.json", {
        "model": MODEL_NAME,
        "script": "scripts/make_copy_policy.py",
        "world_config": str(WORLD_CONFIG.relative_to(REPO)),
        "world": world,
        "styles": STYLES,
        "p_answer": P_ANSWER, "copy_weight": COPY_WEIGHT,
        "short_steps": SHORT_STEPS, "full_steps": FULL_STEPS,
        "short_batch": SHORT_BATCH, "full_batch": FULL_BATCH,
        "peak_lr": PEAK_LR, "min_lr": MIN_LR, "warmup": WARMUP,
        "schedule": "linear warm-up, then cosine decay to min_lr",
        "seed": SEED, "threads": threads,
        "history": history,
        "greedy_literal_upstream": greedy,
    })
    size = (mdir / "model.safetensors").stat().st_size
    mf.log(f"done: {steps} steps, model.safetensors {size} bytes, total {time.time() - t_start:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURES)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    generate(args.out, args.threads)


if __name__ == "__main__":
    main()
