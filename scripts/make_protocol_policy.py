#!/usr/bin/env python3
"""Train the tiny Prompt-R1 policy fixture Tests/Fixtures/models/promptr1-tiny/.

A small Qwen3ForCausalLM (qwen tokenizer of models/qwen3-tiny) fine-tuned on the CPU until, under
greedy decoding, it writes well-formed Prompt-R1 turns (protocol.md sections 1, 2 and 4) for six
scripted questions. Gateway tests can then run the real collaboration loop with the real engine
against a scripted fake upstream and check every token.

    python3 scripts/make_protocol_policy.py            # train + write (~2-4 min, one CPU thread)
    python3 scripts/make_protocol_policy.py --check    # retrain into a temp dir, compare bytes

Outputs (both committed; Swift tests only read them):
  Tests/Fixtures/models/promptr1-tiny/                config.json (classic rope_theta form),
                                                      model.safetensors, generation_config.json,
                                                      tokenizer.json, tokenizer_config.json
  Tests/Fixtures/reference/promptr1-tiny-episodes.json   the episodes greedy decoding produces

How each training sequence is built (exactly as the gateway builds the policy's context, i.e.
PIECEWISE: every piece is tokenised on its own and the id lists are concatenated):
  prompt_ids    = encode(first_prompt(Q))                      (protocol.md section 1)
  turn_k ids    = encode(turn_k text)  (+ [<|im_end|>] for the final turn)
  injection ids = encode(INJECTION(A_k))                       (protocol.md section 4)
  sequence      = prompt_ids + turn_1 + inj_1 + turn_2 + inj_2 + ... + turn_last
Turn 1 starts with `<think>`; later turns start right after the injected `<think>\\n`, so they
hold the reasoning, `</think>`, then the call or the answer. Calls end with
`</interaction_prompt>`; the final turn ends with `</answer>` and then <|im_end|>. Loss is on the
turn ids only (prompt and injections get label -100, as in protocol.md section 4).

Training stops when, at every policy position of every training episode, the teacher-forced
argmax is the scripted token and the top-1/top-2 logit gap is >= TARGET_MARGIN; because the
context of each position is then exactly what piecewise greedy decoding sees, greedy decoding
reproduces the scripts. This is then verified by actually decoding piecewise (KV cache, stop after
the token that completes `</interaction_prompt>` or at <|im_end|>/<|endoftext|>, at most
MAX_NEW_TOKENS per turn) and the reference file is written from that decoding.

Deterministic: fixed seeds, one torch thread, deterministic algorithms, full-batch training with
a fixed schedule. Reuses the protocol constants and helpers of scripts/make_fixtures.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_fixtures as mf  # noqa: E402  (protocol strings, pr1_plain, legacy_config, r7, json writers)

REPO = mf.REPO
FIXTURES = REPO / "Tests" / "Fixtures"
MODEL_NAME = "promptr1-tiny"
SEED = 2024

MAX_NEW_TOKENS = 200          # per policy turn while decoding
MAX_TURNS = 5                 # protocol.md section 2 default turn limit (held-out episode)
RESULT_MAX_CHARS = 8192       # reference inference scripts' cut of the upstream answer
TARGET_MARGIN = 1.0           # training goal for the top-1/top-2 logit gap (0.5 is the asserted floor)
REQUIRED_MARGIN = 0.5
MAX_STEPS = 800
WARMUP = 20
PEAK_LR = 3e-3
MIN_LR = 1e-4
CHECK_EVERY = 20

# Model dimensions (about 0.72 M parameters, 2.9 MB in float32).
DIMS = dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=32, intermediate_size=256, max_position_embeddings=4096)


# --------------------------------------------------------------------------------------------
# Protocol pieces (protocol.md sections 1, 2, 4)
# --------------------------------------------------------------------------------------------

IM_END = "<|im_end|>"
CALL_OPEN, CALL_CLOSE = "<interaction_prompt>", "</interaction_prompt>"


def first_prompt(question: str) -> str:
    """Section 1; equal to PromptR1Prompt.firstPrompt(question:) (checked against the fixture)."""
    return mf.pr1_plain(question)


def cut(answer: str, max_chars: int = RESULT_MAX_CHARS) -> str:
    return answer if len(answer) <= max_chars else answer[:max_chars] + "..."


def injection(result: str) -> str:
    """Section 4: the text appended after a call turn. `result` is RESULT_JSON or an error string."""
    return ("<|im_end|>\n<|im_start|>user\n<interaction_response>\n" + result
            + "\n</interaction_response><|im_end|>\n<|im_start|>assistant\n<think>\n")


def result_json(answer: str) -> str:
    return json.dumps({"results": [cut(answer.strip())]})


def json_call(prompt: str) -> str:
    return CALL_OPEN + json.dumps({"name": "prompt", "arguments": {"prompt": prompt}}) + CALL_CLOSE


def parse_turn(text: str):
    """Section 2, the same rule as Sources/PromptR1/TurnParser.swift.
    Returns ("call", prompt, form) | ("error", message) | ("final", answer-or-None)."""
    start = text.find(CALL_OPEN)
    stop = text.find(CALL_CLOSE, start + len(CALL_OPEN)) if start >= 0 else -1
    if start < 0 or stop < 0:
        a = text.find("<answer>")
        b = text.find("</answer>", a + len("<answer>")) if a >= 0 else -1
        return ("final", text[a + len("<answer>"):b] if a >= 0 and b >= 0 else None)
    body = text[start + len(CALL_OPEN):stop]
    s = body.strip()
    if not s:
        return ("error", "Error: JSONDecodeError")
    if not s.startswith("{"):
        return ("call", s, "plain_text")
    try:
        v = json.loads(s)
    except json.JSONDecodeError:
        return ("error", "Error: JSONDecodeError")
    if "name" not in v:
        return ("error", "Error: No tool name")
    if "arguments" not in v:
        return ("error", "Error: No tool arguments")
    if v["name"] != "prompt":
        return ("error", "Error: ToolNotFoundError")
    args = v["arguments"]
    if not isinstance(args, dict) or not isinstance(args.get("prompt"), str):
        return ("error", "Error: Invalid tool arguments")
    return ("call", args["prompt"], "json")


# --------------------------------------------------------------------------------------------
# The scripted episodes
# --------------------------------------------------------------------------------------------

def _episodes() -> list[dict]:
    """Each episode: question, kind, turns (policy text) and the upstream answer to each call."""
    eps = []

    def two_turn(q, think1, prompt, answer_text, think2, final):
        eps.append({
            "kind": "two-turn", "question": q,
            "turns": [f"<think>{think1}</think>\n" + json_call(prompt),
                      f"{think2}</think>\n<answer>{final}</answer>"],
            "upstream_answers": [answer_text], "final_answer": final,
            "upstream_prompts": [prompt]})

    two_turn("What is the capital of France?",
             "The user asks for the capital city of France. I will ask the large model.",
             "What is the capital of France? Please give the name of the city.",
             "The capital of France is Paris.",
             "The model says the capital of France is Paris.", "Paris")
    two_turn("Who wrote the novel Pride and Prejudice?",
             "This asks for the author of a famous English novel.",
             "Who is the author of the novel Pride and Prejudice?",
             "Pride and Prejudice was written by Jane Austen and published in 1813.",
             "The model says Jane Austen wrote it.", "Jane Austen")
    two_turn("How many legs does a spider have?",
             "A simple question about animals. I will ask the model to count the legs.",
             "How many legs does a spider have? Answer with a number.",
             "A spider has eight legs.",
             "The model says eight legs.", "8")
    two_turn("What is 12 times 11?",
             "This is a multiplication of two numbers.",
             "Compute 12 * 11 and give the result.",
             "12 times 11 is 132.",
             "The product is 132.", "132")
    # three turns: the second call refines the first
    eps.append({
        "kind": "three-turn",
        "question": "Which planet is the largest in the Solar System, and what is its largest moon?",
        "turns": [
            "<think>Two parts: first find the largest planet, then its largest moon.</think>\n"
            + json_call("Which planet is the largest in the Solar System?"),
            "The largest planet is Jupiter. Now I need its largest moon.</think>\n"
            + json_call("Jupiter is the largest planet. What is the largest moon of Jupiter?"),
            "Jupiter is the largest planet and Ganymede is its largest moon.</think>\n"
            "<answer>Jupiter; its largest moon is Ganymede</answer>"],
        "upstream_answers": ["Jupiter is the largest planet in the Solar System.",
                             "Ganymede is the largest moon of Jupiter."],
        "final_answer": "Jupiter; its largest moon is Ganymede",
        "upstream_prompts": ["Which planet is the largest in the Solar System?",
                             "Jupiter is the largest planet. What is the largest moon of Jupiter?"]})
    # a call whose body is plain text (not JSON): the stripped body is the upstream prompt
    eps.append({
        "kind": "plain-text-call",
        "question": "At what temperature does water boil at sea level, in Celsius?",
        "turns": [
            "<think>A physics fact about water.</think>\n" + CALL_OPEN
            + "\nAt sea level, at what temperature in degrees Celsius does water boil?\n" + CALL_CLOSE,
            "The model says 100 degrees.</think>\n<answer>100 degrees Celsius</answer>"],
        "upstream_answers": ["Water boils at 100 degrees Celsius at sea level."],
        "final_answer": "100 degrees Celsius",
        "upstream_prompts": ["At sea level, at what temperature in degrees Celsius does water boil?"]})
    return eps


HELD_OUT_QUESTION = "What is the capital of Italy?"
HELD_OUT_UPSTREAM = "The capital of Italy is Rome."   # the fake upstream's answer to every call


# --------------------------------------------------------------------------------------------
# Sequences
# --------------------------------------------------------------------------------------------

def enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def build_sequence(tok, ep: dict) -> dict:
    """Piecewise token ids + labels of one scripted episode; also checks the script parses."""
    im_end = tok.convert_tokens_to_ids(IM_END)
    prompt_ids = enc(tok, first_prompt(ep["question"]))
    ids, labels = list(prompt_ids), [-100] * len(prompt_ids)
    turn_ids, inj = [], []
    calls = 0
    for k, text in enumerate(ep["turns"]):
        last = k == len(ep["turns"]) - 1
        p = parse_turn(text)
        t = enc(tok, text)
        if last:
            assert p == ("final", ep["final_answer"]), f"{ep['question']}: final turn parses as {p}"
            t = t + [im_end]
        else:
            assert p[0] == "call" and p[1] == ep["upstream_prompts"][calls], f"turn {k} parses as {p}"
            assert t and tok.decode(t).endswith(CALL_CLOSE)
        assert tok.decode(t[:-1]).find(CALL_CLOSE) < 0, "stop string completes before the turn's end"
        turn_ids.append(t)
        ids += t
        labels += t
        if not last:
            itext = injection(result_json(ep["upstream_answers"][calls]))
            i = enc(tok, itext)
            inj.append({"text": itext, "ids": i})
            ids += i
            labels += [-100] * len(i)
            calls += 1
    assert calls == len(ep["upstream_answers"]) == len(ep["upstream_prompts"])
    return {"prompt_ids": prompt_ids, "turn_ids": turn_ids, "injections": inj,
            "ids": ids, "labels": labels}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def make_model(tok) -> Qwen3ForCausalLM:
    v = tok.get_vocab()
    cfg = Qwen3Config(vocab_size=mf.QWEN_MODEL_VOCAB, rms_norm_eps=1e-6, tie_word_embeddings=True,
                      attention_bias=False, hidden_act="silu", initializer_range=0.02,
                      attention_dropout=0.0, use_cache=True,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                      use_sliding_window=False, sliding_window=None,
                      max_window_layers=DIMS["num_hidden_layers"],
                      bos_token_id=v["<|endoftext|>"], eos_token_id=v[IM_END],
                      attn_implementation="eager", **DIMS)
    torch.manual_seed(SEED)
    return Qwen3ForCausalLM(cfg).float()


def lr_at(step: int) -> float:
    if step < WARMUP:
        return PEAK_LR * (step + 1) / WARMUP
    t = (step - WARMUP) / max(1, MAX_STEPS - WARMUP)
    return MIN_LR + 0.5 * (PEAK_LR - MIN_LR) * (1 + math.cos(math.pi * min(t, 1.0)))


def batch_tensors(seqs: list[dict], pad_id: int):
    n = max(len(s["ids"]) for s in seqs)
    ids = torch.full((len(seqs), n), pad_id, dtype=torch.long)
    labels = torch.full((len(seqs), n), -100, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.long)
    for b, s in enumerate(seqs):
        m = len(s["ids"])
        ids[b, :m] = torch.tensor(s["ids"])
        labels[b, :m] = torch.tensor(s["labels"])
        mask[b, :m] = 1
    return ids, labels, mask


@torch.no_grad()
def teacher_forced_check(model, ids, labels, mask):
    """(all argmax correct, min top-1/top-2 gap, number of wrong positions) over policy tokens.
    The gap is measured as logit(target) - max(other logits), negative when the argmax is wrong."""
    model.eval()
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
    tgt = labels[:, 1:]
    sel = tgt != -100
    lg = logits[sel]
    t = tgt[sel]
    tl = lg.gather(1, t[:, None])[:, 0]
    other = lg.scatter(1, t[:, None], float("-inf")).max(1).values
    gap = tl - other
    model.train()
    return bool((gap > 0).all()), float(gap.min()), int((gap <= 0).sum())


def train(model, seqs: list[dict], pad_id: int) -> dict:
    ids, labels, mask = batch_tensors(seqs, pad_id)
    # shift once: position i predicts labels[i + 1]
    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.98), weight_decay=0.0)
    model.train()
    t0 = time.time()
    info = {}
    for step in range(MAX_STEPS):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 labels[:, 1:].reshape(-1), ignore_index=-100)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % CHECK_EVERY == 0 or step + 1 == MAX_STEPS:
            ok, gap, wrong = teacher_forced_check(model, ids, labels, mask)
            mf.log(f"step {step + 1:4d}  loss {loss.item():.5f}  lr {lr_at(step):.2e}  "
                   f"wrong {wrong:3d}  min gap {gap:+.3f}  ({time.time() - t0:.0f} s)")
            info = {"steps": step + 1, "final_loss": loss.item(), "min_gap": gap,
                    "seconds": time.time() - t0}
            if ok and gap >= TARGET_MARGIN:
                break
    model.eval()
    assert info["min_gap"] >= REQUIRED_MARGIN, f"training ended with min gap {info['min_gap']:.3f}"
    return info


# --------------------------------------------------------------------------------------------
# Piecewise greedy decoding (what the gateway does)
# --------------------------------------------------------------------------------------------

class Decoder:
    """A greedy decoding session over one growing context, with a KV cache."""

    def __init__(self, model, tok, prompt_ids: list[int]):
        self.model, self.tok = model, tok
        self.stop_ids = {tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids("<|endoftext|>")}
        self.cache = transformers.DynamicCache()
        self.pending = list(prompt_ids)      # ids not yet fed to the model
        self.length = 0

    @torch.no_grad()
    def _feed(self) -> torch.Tensor:
        x = torch.tensor([self.pending])
        pos = torch.arange(self.length, self.length + len(self.pending))[None]
        out = self.model(input_ids=x, position_ids=pos, cache=self.cache, use_cache=True)
        self.length += len(self.pending)
        assert self.cache.get_seq_length() == self.length, "KV cache did not grow in place"
        self.pending = []
        return out.logits[0, -1].float()

    def generate_turn(self) -> dict:
        ids, lps, gaps = [], [], []
        finish = "max_tokens"
        while len(ids) < MAX_NEW_TOKENS:
            last = self._feed()
            top2 = torch.topk(last, 2).values
            t = int(torch.argmax(last))
            ids.append(t)
            lps.append(float(torch.log_softmax(last, -1)[t]))
            gaps.append(float(top2[0] - top2[1]))
            self.pending = [t]
            if t in self.stop_ids:
                finish = "end_of_turn"
                break
            if CALL_CLOSE in self.tok.decode(ids):
                finish = "stop_string"
                break
        # the gateway's turn text leaves out the end-of-turn token
        text = self.tok.decode(ids[:-1] if finish == "end_of_turn" else ids)
        if finish == "end_of_turn":
            self.pending = []                # the end-of-turn token closes the episode
        return {"text": text, "ids": ids, "logprobs": lps, "gaps": gaps, "finish": finish}

    def append(self, ids: list[int]) -> None:
        self.pending += ids


def run_episode(model, tok, question: str, answers) -> dict:
    """Decode one episode piecewise. `answers(k, prompt)` is the fake upstream."""
    prompt_ids = enc(tok, first_prompt(question))
    dec = Decoder(model, tok, prompt_ids)
    turns, injections, upstream_prompts, upstream_answers = [], [], [], []
    final_answer = None
    for _ in range(MAX_TURNS):
        turn = dec.generate_turn()
        turns.append(turn)
        p = parse_turn(turn["text"])
        if turn["finish"] != "stop_string" or p[0] == "final":
            final_answer = p[1] if p[0] == "final" else None
            break
        if p[0] == "call":
            a = answers(len(upstream_prompts), p[1])
            upstream_prompts.append(p[1])
            upstream_answers.append(a)
            itext = injection(result_json(a))
        else:
            itext = injection(cut(p[1]))
        iids = enc(tok, itext)
        injections.append({"text": itext, "ids": iids})
        dec.append(iids)
    return {"question": question, "prompt_ids": prompt_ids, "turns": turns,
            "injections": injections, "upstream_prompts": upstream_prompts,
            "upstream_answers": upstream_answers, "final_answer": final_answer}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def write_checkpoint(model, tok, folder: Path) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder))
    mf.legacy_config(folder / "config.json")
    src = FIXTURES / "models" / "qwen3-tiny"
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(src / name, folder / name)
    v = tok.get_vocab()
    mf.write_json_pretty(folder / "generation_config.json", {
        "bos_token_id": v["<|endoftext|>"], "do_sample": False,
        "eos_token_id": [v[IM_END], v["<|endoftext|>"]], "pad_token_id": v["<|endoftext|>"],
        "transformers_version": transformers.__version__})


def tokenisation_report(tok, seqs, eps) -> list[str]:
    """Where encode(a) + encode(b) != encode(a + b) for the pieces of the episodes."""
    notes = []
    for s, ep in zip(seqs, eps):
        text = first_prompt(ep["question"])
        for k, t in enumerate(ep["turns"]):
            text += t + (IM_END if k == len(ep["turns"]) - 1 else s["injections"][k]["text"])
        joint = enc(tok, text)
        if joint != s["ids"]:
            i = next((j for j, (a, b) in enumerate(zip(joint, s["ids"])) if a != b),
                     min(len(joint), len(s["ids"])))
            notes.append(f"{ep['question']!r}: joint encoding differs from piecewise at token {i}: "
                         f"{tok.convert_ids_to_tokens(joint[i:i + 3])} vs "
                         f"{tok.convert_ids_to_tokens(s['ids'][i:i + 3])}")
    return notes


def generate(out: Path) -> None:
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    t_start = time.time()
    mdir = out / "models" / MODEL_NAME
    tok = AutoTokenizer.from_pretrained(str(FIXTURES / "models" / "qwen3-tiny"))

    # Python's first prompt must equal the committed Swift-checked rendering.
    ref = json.loads((FIXTURES / "reference" / "promptr1-first-prompt.json").read_text())
    for case in ref["cases"]:
        assert first_prompt(case["question"]) == case["rendered"], "first prompt drifted"
        assert enc(tok, case["rendered"]) == case["ids"]

    eps = _episodes()
    seqs = [build_sequence(tok, ep) for ep in eps]
    for ep, s in zip(eps, seqs):
        mf.log(f"episode {ep['kind']:16s} prompt {len(s['prompt_ids'])} turns "
               f"{[len(t) for t in s['turn_ids']]} injections {[len(i['ids']) for i in s['injections']]} "
               f"total {len(s['ids'])}")
    notes = tokenisation_report(tok, seqs, eps)
    for n in notes:
        mf.log("tokenisation: " + n)
    if not notes:
        mf.log("tokenisation: piecewise == joint encoding for every episode")

    model = make_model(tok)
    n_params = sum(p.numel() for p in model.parameters())
    mf.log(f"model: {n_params} parameters")
    info = train(model, seqs, pad_id=tok.convert_tokens_to_ids("<|endoftext|>"))

    write_checkpoint(model, tok, mdir)
    model = AutoModelForCausalLM.from_pretrained(str(mdir), attn_implementation="eager").float().eval()
    tok = AutoTokenizer.from_pretrained(str(mdir))

    cases = []
    worst, numpy_worst = float("inf"), 0.0
    for ep, s in zip(eps, seqs):
        answers = iter(ep["upstream_answers"])
        got = run_episode(model, tok, ep["question"], lambda k, p: next(answers))
        assert [t["ids"] for t in got["turns"]] == s["turn_ids"], f"{ep['question']!r}: greedy differs"
        assert [t["text"] for t in got["turns"]] == ep["turns"]
        assert got["injections"] == s["injections"]
        assert got["upstream_prompts"] == ep["upstream_prompts"]
        assert got["final_answer"] == ep["final_answer"]
        assert got["prompt_ids"] == s["prompt_ids"]
        g = min(min(t["gaps"]) for t in got["turns"])
        assert g >= REQUIRED_MARGIN, f"{ep['question']!r}: greedy gap {g}"
        worst = min(worst, g)
        # independent float64 numpy forward (make_fixtures.numpy_forward) over the whole episode:
        # same argmax at every policy position, log-probs within 1e-4
        full = list(s["prompt_ids"])
        for k, t in enumerate(got["turns"]):
            full += t["ids"] + (got["injections"][k]["ids"] if k < len(got["injections"]) else [])
        lg = mf.numpy_forward(mdir, full)
        lsm = lg - lg.max(-1, keepdims=True)
        lsm = lsm - np.log(np.exp(lsm).sum(-1, keepdims=True))
        pos = len(s["prompt_ids"])
        for k, t in enumerate(got["turns"]):
            for j, (tid, lp) in enumerate(zip(t["ids"], t["logprobs"])):
                assert int(lg[pos + j - 1].argmax()) == tid, f"numpy argmax differs, turn {k} token {j}"
                numpy_worst = max(numpy_worst, abs(lsm[pos + j - 1, tid] - lp))
            pos += len(t["ids"]) + (len(got["injections"][k]["ids"]) if k < len(got["injections"]) else 0)
        cases.append(case_json(got, ep["kind"], held_out=False))
        mf.log(f"greedy OK {ep['kind']:16s} min gap {g:.3f}  {ep['question']}")
    assert numpy_worst < 1e-4, f"numpy forward log-probs differ by {numpy_worst}"
    mf.log(f"numpy float64 cross-check: same tokens, max |logprob diff| {numpy_worst:.2e}")
    held = run_episode(model, tok, HELD_OUT_QUESTION, lambda k, p: HELD_OUT_UPSTREAM)
    cases.append(case_json(held, "held-out", held_out=True))
    mf.log(f"held-out {HELD_OUT_QUESTION!r}: {[t['text'] for t in held['turns']]} "
           f"finish {[t['finish'] for t in held['turns']]}")

    mf.write_json_pretty(out / "reference" / f"{MODEL_NAME}-episodes.json", {
        "model": MODEL_NAME,
        "max_new_tokens": MAX_NEW_TOKENS,
        "max_turns": MAX_TURNS,
        "result_max_chars": RESULT_MAX_CHARS,
        "stop_ids": [tok.convert_tokens_to_ids(IM_END), tok.convert_tokens_to_ids("<|endoftext|>")],
        "min_margin": mf.r7(worst),
        "cases": cases,
    })
    size = (mdir / "model.safetensors").stat().st_size
    mf.log(f"done: {info['steps']} steps, {info['seconds']:.0f} s training, final loss "
           f"{info['final_loss']:.5f}, teacher-forced min gap {info['min_gap']:.3f}, greedy min gap "
           f"{worst:.3f}, model.safetensors {size} bytes, total {time.time() - t_start:.0f} s")


def case_json(got: dict, kind: str, held_out: bool) -> dict:
    c = {"question": got["question"], "kind": kind}
    if held_out:
        c["held_out"] = True
    c.update({
        "upstream_answers": got["upstream_answers"],
        "upstream_prompts": got["upstream_prompts"],
        "final_answer": got["final_answer"],
        "prompt_ids": got["prompt_ids"],
        "turns": [{"text": t["text"], "finish": t["finish"], "ids": t["ids"],
                   "logprobs": [mf.r7(x) for x in t["logprobs"]],
                   "min_margin": mf.r7(min(t["gaps"]))} for t in got["turns"]],
        "injections": got["injections"],
    })
    return c


def tree_hashes(root: Path) -> dict[str, str]:
    files = [p for p in sorted((root / "models" / MODEL_NAME).rglob("*")) if p.is_file()]
    files.append(root / "reference" / f"{MODEL_NAME}-episodes.json")
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=FIXTURES)
    ap.add_argument("--check", action="store_true",
                    help="retrain into a temp dir and compare with --out byte for byte")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp))
            a, b = tree_hashes(Path(tmp)), tree_hashes(args.out)
            bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if bad:
                raise SystemExit("promptr1-tiny differs from a fresh regeneration: " + ", ".join(bad))
            mf.log(f"OK: {len(a)} files identical")
        return
    generate(args.out)


if __name__ == "__main__":
    main()
