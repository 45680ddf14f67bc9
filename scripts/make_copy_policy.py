#!/usr/bin/env python3
"""Pre-train the tiny base policy of the learning experiments: Tests/Fixtures/models/promptr1-copy/.

Why it exists (docs/learning.md): the experiments' environment (Sources/GatewayTrainer/
LookupWorld.swift) rewards a policy only when its prompt restates the question's subject and
property. The protocol fixture promptr1-tiny was trained on six fixed questions and cannot copy a
word from its question into its prompt, so after a warm start it names random subjects and RL has
nothing to select. This base learns the GENERIC skill a pre-trained LLM brings: read the question
in the Prompt-R1 first prompt, write a prompt that copies words from it, and copy a value from the
upstream's reply into <answer>. It knows nothing of the experiments' worlds:

- its names (subjects and properties) come from POOL, single tokens of the fixture tokenizer that
  are disjoint from WORLD_WORDS, the words the committed experiments/*.json worlds may use, and
  from every word of every experiments/*.json world (read here); the reference file lists them, so
  a test can check a config against it once the fixture is committed;
- its values are numbers 0-99 drawn at random for every episode (no table to learn);
- its prompt style is drawn uniformly from STYLES for every episode, so the base has no preference
  for the style that a literal upstream answers (two of the seven styles restate "the P of the S",
  as one of the warm start's four demonstrations does).

Each pre-training episode is an episode of the protocol built exactly as the gateway builds the
policy's context (piecewise tokenisation, protocol.md sections 1, 2, 4; the helpers of
scripts/make_protocol_policy.py): first prompt with the question, a turn with a fixed thought and a
call with the styled prompt, the injected reply of a literal upstream (answers "The P of the S is V."
when the prompt states "the P of the S", else "I am not sure what you are asking about."), and a
final turn whose answer is V or "unknown". The thoughts are the ones LookupWorld's demonstrations
use. Loss: cross-entropy on the policy's tokens only. Fresh random episodes every step.

STATUS (2026-12-01): NOT YET A WORKING BASE. Within the 250-500 steps this machine allowed, the
copy accuracy stayed near chance (docs/learning.md, "A copy-pre-trained base"); no weights made by
it are committed and no config uses them. Copying likely needs a few thousand steps.

    python3 scripts/make_copy_policy.py --snapshots /tmp/snap --steps 4000   # train + write
    python3 scripts/make_copy_policy.py --snapshots /tmp/snap --finish-from 1500   # outputs from a snapshot
    python3 scripts/make_copy_policy.py --steps 50 --out /tmp/x   # a quick look

Outputs (to be committed once the base copies; Swift tests would only read them):
  Tests/Fixtures/models/promptr1-copy/           config.json, model.safetensors, generation_config.json,
                                                 tokenizer.json, tokenizer_config.json (qwen3-tiny's)
  Tests/Fixtures/reference/promptr1-copy-pretraining.json   pools, templates, styles, schedule and the
                                                 measured copy accuracy (teacher-forced and greedy) on
                                                 names never seen in pre-training

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
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402
import make_protocol_policy as mpp  # noqa: E402

REPO = mf.REPO
FIXTURES = REPO / "Tests" / "Fixtures"
MODEL_NAME = "promptr1-copy"
SEED = 4242

# Same shape as promptr1-tiny (0.72 M parameters, 2.9 MB in float32): cheap for the Swift engine
# in debug builds, which the CI-sized experiment runs.
DIMS = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=256, max_position_embeddings=4096)

STEPS = 900
BATCH = 8
WARMUP = 50
PEAK_LR = 3e-3
MIN_LR = 3e-4
EVAL_EVERY = 50
QK_GAIN = 3.0

# Words the experiments' worlds may use (subjects, properties): never a pre-training name.
# Single tokens of the fixture tokenizer that do not occur in the Prompt-R1 first prompt.
WORLD_WORDS = ["spider", "rain", "France", "year", "token", "task", "text", "vocab", "merges", "legs",
               "times", "print", "days", "self", "public", "ids", "help", "load", "small", "welcome",
               "answers", "wrote", "cfg", "num", "age", "capital", "humidity"]
# Words of the templates themselves: not names either (a name equal to a template word would make
# the prompt ambiguous).
TEMPLATE_WORDS = {"The", "the", "of", "is", "it", "its", "what", "What", "Wh", "wh", "about", "my",
                  "Please", "answer", "question", "me", "Tell", "which", "has", "need", "does",
                  "have", "know", "want", "an", "and", "are", "as", "be", "by", "in", "on", "or", "to",
                  "you", "You", "We", "will", "ask", "large", "language", "model", "response", "am",
                  "not", "sure", "asking", "unknown", "think"}
# Names of "unseen" checks: never used in training, to measure whether copying generalises to
# tokens the base never copied (as the worlds' words are).
UNSEEN_COUNT = 10

QUESTION_TEMPLATES = [
    "The {subject}: what {property} is it?",
    "{subject}: which {property}?",
    "Tell me what {property} the {subject} has.",
    "About the {subject}, what is its {property}?",
]
STYLES = [
    "What is the {property} of the {subject}?",
    "Tell me the {property} of the {subject}.",
    "{question}",
    "Please answer my question about the {subject}.",
    "What {property} does the {subject} have?",
    "I need the {property}.",
    "{subject} {property}?",
]
NOT_SURE = "I am not sure what you are asking about."
THINK1 = "<think>I will ask the large language model.</think>\n"
THINK2 = "I have its response.</think>\n"


def single_token_words(tok) -> list[str]:
    v = tok.get_vocab()
    out = []
    for t in sorted(v):
        w = t[1:]
        if t.startswith("\u0120") and w.isalpha() and w.isascii() and len(w) >= 2:
            if all(len(mpp.enc(tok, " " + w + c)) == 2 for c in "?:.,"):
                out.append(w)
    return out


def world_words_of_experiments() -> set[str]:
    words = set()
    for f in sorted((REPO / "experiments").glob("*.json")):
        w = json.loads(f.read_text()).get("world", {})
        words.update(w.get("subjects", []))
        words.update(w.get("properties", {}).keys())
    return words


def upstream(prompt: str, subject: str, prop: str, value: str) -> str:
    if f"the {prop} of the {subject}".lower() in prompt.lower():
        return f"The {prop} of the {subject} is {value}."
    return NOT_SURE


def make_episode(rng: random.Random, names: list[str], values: list[str]) -> dict:
    subject, prop = rng.sample(names, 2)
    value = rng.choice(values)
    question = rng.choice(QUESTION_TEMPLATES).format(subject=subject, property=prop)
    prompt = rng.choice(STYLES).format(subject=subject, property=prop, question=question)
    reply = upstream(prompt, subject, prop, value)
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
    seqs = [mpp.build_sequence(tok, e) for e in eps]
    n = max(len(s["ids"]) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, :len(s["ids"])] = torch.tensor(s["ids"])
        labels[b, :len(s["ids"])] = torch.tensor(s["labels"])
    return seqs, ids, labels


def loss_and_logits(model, ids, labels, share_prefix: bool = True):
    """Mean cross-entropy over the policy tokens. Right padding and causal attention: padded
    positions never influence real ones, so no mask. With `share_prefix`, the first prompt's part
    that every sequence of the batch shares (system message, tools, "Question:") is computed once
    and its keys and values repeated over the batch, as the engine's prefix cache does; no label
    falls in it."""
    tgt = labels[:, 1:]
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
        tgt = tgt[:, n_shared:]
    else:
        h = model.model(input_ids=ids, use_cache=False).last_hidden_state[:, :-1]
    sel = tgt != -100
    logits = model.lm_head(h[sel]).float()
    return torch.nn.functional.cross_entropy(logits, tgt[sel]), logits, sel


def make_model(tok) -> Qwen3ForCausalLM:
    v = tok.get_vocab()
    cfg = Qwen3Config(vocab_size=mf.QWEN_MODEL_VOCAB, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      attention_bias=False, hidden_act="silu", initializer_range=0.02,
                      attention_dropout=0.0, use_cache=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                      use_sliding_window=False, sliding_window=None,
                      max_window_layers=DIMS["num_hidden_layers"],
                      bos_token_id=v["<|endoftext|>"], eos_token_id=v[mpp.IM_END],
                      attn_implementation="sdpa", **DIMS)
    torch.manual_seed(SEED)
    model = Qwen3ForCausalLM(cfg).float()
    # Qwen3 normalises queries and keys per head (q_norm, k_norm), which bounds an attention logit
    # by head_dim / sqrt(head_dim) = 5.7 at the default gain of 1: too flat to pick one token of a
    # 700-token first prompt (ln 700 = 6.6), and AdamW grows the gains by about the learning rate
    # per step. A larger starting gain lets copying heads form within a few hundred steps.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.fill_(QK_GAIN)
            layer.self_attn.k_norm.weight.fill_(QK_GAIN)
    return model


def lr_at(step: int) -> float:
    """Linear warm-up, then inverse square-root decay: independent of the number of steps, so the
    weights after N steps of a longer run are those of `--steps N`."""
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    return max(MIN_LR, PEAK_LR * math.sqrt(WARMUP / (step + 1)))


@torch.no_grad()
def teacher_forced(model, tok, eps, pad_id) -> dict:
    """Argmax accuracy at the copy positions, and the mean loss per policy token."""
    model.eval()
    hits = {"subject": [0, 0], "property": [0, 0], "value": [0, 0]}
    losses = []
    for i in range(0, len(eps), BATCH):
        chunk = eps[i:i + BATCH]
        seqs, ids, labels = batch(tok, chunk, pad_id)
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
    """Greedy piecewise decoding (as the gateway) with the literal upstream: how often the prompt is
    the episode's own style with the right words, and how often the final answer is right."""
    model.eval()
    same_prompt = correct = 0
    for e in eps:
        got = mpp.run_episode(model, tok, e["question"],
                              lambda k, p, e=e: upstream(p, e["subject"], e["property"], e["value"]))
        prompts = got["upstream_prompts"]
        expected = [s.format(subject=e["subject"], property=e["property"], question=e["question"])
                    for s in STYLES]
        same_prompt += bool(prompts) and prompts[0] in expected
        want = e["value"] if prompts and upstream(prompts[0], e["subject"], e["property"], e["value"]) != NOT_SURE \
            else "unknown"
        correct += got["final_answer"] == want
    model.train()
    return {"prompt_is_a_style_with_the_question_words": round(same_prompt / len(eps), 4),
            "final_answer_consistent_with_reply": round(correct / len(eps), 4), "episodes": len(eps)}


def generate(out: Path, steps: int, threads: int, snapshots: str | None, finish_from: int | None) -> None:
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "models" / "qwen3-tiny"))
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")

    used = world_words_of_experiments()
    candidates = [w for w in single_token_words(tok)
                  if w not in WORLD_WORDS and w not in TEMPLATE_WORDS and w not in used]
    assert set(WORLD_WORDS) >= {w for w in used if w in single_token_words(tok)}
    rng = random.Random(SEED)
    unseen = sorted(rng.sample(candidates, UNSEEN_COUNT))
    pool = [w for w in candidates if w not in unseen]
    # Numbers: a digit is one token both after a space in the reply and after <answer> (a word is
    # not: " writ" is one token, "writ" two), so the answer is a plain copy, as in the worlds.
    values = [str(n) for n in range(100)]
    mf.log(f"{len(pool)} pre-training names, {len(unseen)} unseen check names {unseen}")

    model = make_model(tok)
    mf.log(f"model: {sum(p.numel() for p in model.parameters())} parameters")
    val_seen = [make_episode(random.Random(SEED + 1 + i), pool, values) for i in range(64)]
    # Unseen: names never in pre-training (value too), as the experiments' words are.
    val_unseen = [make_episode(random.Random(SEED + 1000 + i), unseen, values) for i in range(64)]

    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    # The shared-prefix forward must give the plain forward's loss.
    _, ids, labels = batch(tok, val_seen[:4], pad_id)
    with torch.no_grad():
        a = float(loss_and_logits(model, ids, labels, share_prefix=True)[0])
        b = float(loss_and_logits(model, ids, labels, share_prefix=False)[0])
    assert abs(a - b) < 1e-4 * max(1.0, abs(b)), f"shared-prefix loss {a} != plain loss {b}"
    data_rng = random.Random(SEED + 7)
    t0 = time.time()
    history = []
    snap = Path(snapshots) if snapshots else None
    if finish_from:
        # The weights of a run that was stopped after a snapshot (same data, same schedule).
        model.load_state_dict(torch.load(snap / f"step{finish_from}.pt"))
        history = json.loads((snap / f"step{finish_from}.json").read_text())
        steps = finish_from
    for step in range(0 if not finish_from else steps, steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        eps = [make_episode(data_rng, pool, values) for _ in range(BATCH)]
        _, ids, labels = batch(tok, eps, pad_id)
        loss, _, _ = loss_and_logits(model, ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % 10 == 0:
            mf.log(f"step {step + 1:4d} loss {loss.item():.4f} lr {lr_at(step):.2e} ({time.time() - t0:.0f} s)")
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == steps:
            seen = teacher_forced(model, tok, val_seen, pad_id)
            uns = teacher_forced(model, tok, val_unseen, pad_id)
            history.append({"step": step + 1, "train_loss": round(loss.item(), 5), "seen": seen, "unseen": uns})
            mf.log(f"  teacher-forced copy accuracy: seen {seen}  unseen {uns}")
            if snap:
                snap.mkdir(parents=True, exist_ok=True)
                torch.save(model.state_dict(), snap / f"step{step + 1}.pt")
                (snap / f"step{step + 1}.json").write_text(json.dumps(history))

    mdir = out / "models" / MODEL_NAME
    mpp.write_checkpoint(model, tok, mdir)
    model = AutoModelForCausalLM.from_pretrained(str(mdir), attn_implementation="eager").float().eval()
    tok = AutoTokenizer.from_pretrained(str(mdir))
    g_seen = greedy_check(model, tok, val_seen[:24])
    g_unseen = greedy_check(model, tok, val_unseen[:24])
    mf.log(f"greedy: seen {g_seen}  unseen {g_unseen}")
    mf.write_json_pretty(out / "reference" / f"{MODEL_NAME}-pretraining.json", {
        "model": MODEL_NAME,
        "script": "scripts/make_copy_policy.py",
        "world_words_excluded": WORLD_WORDS,
        "template_words_excluded": sorted(TEMPLATE_WORDS),
        "names": pool,
        "unseen_check_names": unseen,
        "values": values,
        "question_templates": QUESTION_TEMPLATES,
        "styles": STYLES,
        "steps": steps, "batch": BATCH, "peak_lr": PEAK_LR, "min_lr": MIN_LR, "warmup": WARMUP,
        "schedule": "linear warm-up, then peak_lr * sqrt(warmup / step), at least min_lr",
        "seed": SEED, "threads": threads,
        "history": history,
        "greedy": {"seen": g_seen, "unseen": g_unseen},
        "seconds": round(time.time() - t_start),
    })
    size = (mdir / "model.safetensors").stat().st_size
    mf.log(f"done: {steps} steps, model.safetensors {size} bytes, total {time.time() - t_start:.0f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURES)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--snapshots", help="folder for the weights after every evaluation (to stop early)")
    ap.add_argument("--finish-from", type=int, help="write the outputs from the snapshot of this step")
    args = ap.parse_args()
    generate(args.out, args.steps, args.threads, args.snapshots, args.finish_from)


if __name__ == "__main__":
    main()
