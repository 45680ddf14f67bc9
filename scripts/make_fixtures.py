#!/usr/bin/env python3
"""Generate the test fixtures under Tests/Fixtures/ (tiny HF checkpoints + reference outputs).

Deterministic: every random draw comes from a fixed seed, the BPE trainer is deterministic, and
JSON is written with sorted-free but fixed key order, so running it again reproduces the same
bytes (checked by `--check`, which regenerates into a temp dir and compares hashes).

    python3 scripts/make_fixtures.py                 # (re)generate everything
    python3 scripts/make_fixtures.py --only reference-logits   # one reference set
    python3 scripts/make_fixtures.py --check         # regenerate in a temp dir, compare bytes

Needs torch, transformers (5.x), tokenizers, safetensors, numpy, jinja2. Swift tests never run this;
they only read the committed output.

Layout of the script: build_tokenizers() -> build_models() write the checkpoints; each reference
set is a function registered in REFERENCE_SETS (name -> fn(ctx)), so new sets (e.g. gradients
for the trainer) are added as one more function + one registry line.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import unicodedata
from pathlib import Path

import jinja2
import numpy as np
import safetensors
import torch
import tokenizers
import transformers
from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, normalizers,
                        pre_tokenizers, processors, trainers)
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "Tests" / "Fixtures"

# --------------------------------------------------------------------------------------------
# Constants: pre-tokenizer regexes (as in the real Qwen2 / Llama 3 tokenizer.json files)
# --------------------------------------------------------------------------------------------

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

QWEN_BASE_VOCAB = 1000      # BPE vocab (256 bytes + merges); added tokens follow
LLAMA_BASE_VOCAB = 1000
QWEN_MODEL_VOCAB = 1024     # padded like real Qwen (embedding rows > tokenizer size)

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_NONSPECIAL_ADDED = ["<think>", "</think>"]
LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"]

# --------------------------------------------------------------------------------------------
# Prompt-R1 protocol strings (protocol.md section 1), kept byte-exact
# --------------------------------------------------------------------------------------------

PR1_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a great assistant. "
PR1_TOOL = {
    "type": "function",
    "function": {
        "name": "prompt",
        "description": "Give an explanation of the question in detail.",
        "parameters": {
            "type": "object",
            "properties": {
                "prompt": {"type": "string", "description": "Give question and its explanation"}
            },
            "required": ["prompt"],
        },
    },
}
PR1_TOOLS_HEADER = (
    "\n\n# Tools\n\nYou can call one or more powerful Large Language Models to answer the user's "
    "questions. But you MUST provide the tool with an explanation and analysis of the problem, as "
    "well as your thought process.\n\nYou are provided with function signatures within "
    "<tools></tools> XML tags:\n<tools>"
)
PR1_TOOLS_FOOTER = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    "within <interaction_prompt></interaction_prompt> XML tags:\n<interaction_prompt>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</interaction_prompt>"
)
PR1_INSTRUCTION = (
    "First, provide a simple explanation of the question and give it to the large language model "
    "for a more accurate answer. Focus on explaining the question without deep reasoning in the "
    "first step. After receiving the response, think about the large language model's response, "
    "and by interacting with the large language model again and again, arrive at the final answer. "
    "Proceed step by step with the following rules:\n"
    "1. Only in the first step, provide a brief explanation of the question and give it to the "
    "large language model:\n"
    "   <think>(Brief thinking must not be over 80 words)</think>\n"
    "   <interaction_prompt>(give the question and its explanation to the large language model)"
    "</interaction_prompt>\n"
    "2. After the first step, in each interaction with the large language model, write:\n"
    "   <think>(your reasoning for the receiving response and question)</think>\n"
    "   <interaction_prompt>(new request to refine or validate the answer)</interaction_prompt>\n"
    "3. Each <interaction_prompt> must build on what came before. Do not just repeat the same "
    "content. Let the content of the <interaction_prompt>...</interaction_prompt> evolve naturally "
    "(for example: outline \u2192 add details \u2192 refine \u2192 check). \n"
    "4. Continue producing think within <think></think> and call tool within "
    "<interaction_prompt></interaction_prompt> until the answer is ready.\n"
    "5. Once the answer is complete, write:\n"
    "   <think>(final reasoning with the <interaction_response> and question)</think>\n"
    "   <answer>(final answer for the question)</answer>"
)

# Jinja template for the Prompt-R1 first prompt, written from protocol.md section 1. With tools it
# renders the Prompt-R1 tool block; later turns are plain ChatML.
PR1_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content }}"
    "{%- else %}{{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou can call one or more powerful Large Language Models to answer the "
    "user's questions. But you MUST provide the tool with an explanation and analysis of the "
    "problem, as well as your thought process.\\n\\nYou are provided with function signatures "
    "within <tools></tools> XML tags:\\n<tools>\" }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and "
    "arguments within <interaction_prompt></interaction_prompt> XML tags:\\n<interaction_prompt>\\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</interaction_prompt>"
    "<|im_end|>\\n' }}"
    "{%- else %}"
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# --------------------------------------------------------------------------------------------
# Chat templates stored in the checkpoints' tokenizer_config.json
# --------------------------------------------------------------------------------------------

# The standard Qwen2.5 instruct template (ChatML, default system prompt, tool support).
QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Qwen3-style template without tools: ChatML, no default system prompt. Like Qwen3's own template
# it drops the <think>...</think> part of assistant turns that come before the last user message,
# and `enable_thinking=false` pre-fills an empty think block after the generation prompt.
QWEN3_TEMPLATE = """{%- set ns = namespace(last_user=-1) %}
{%- for message in messages %}
    {%- if message.role == 'user' %}
        {%- set ns.last_user = loop.index0 %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'user' %}
        {{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {%- set content = message.content %}
        {%- if loop.index0 < ns.last_user and '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>assistant\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

# The Llama 3 instruct template (note: `| trim` binds to message['content'] only).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# --------------------------------------------------------------------------------------------
# Training corpus (inline): prose, code, numbers, CJK, emoji, protocol strings
# --------------------------------------------------------------------------------------------

PROSE = """The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.
Language models read text as a sequence of tokens. Each token is a small piece of a word, a whole word,
a number, or a mark of punctuation. The tokenizer splits the text first with a regular expression and then
merges bytes into larger units, following the order in which the merges were learned.
I'm sure they're right, but we've seen that you'll need more data. He'd said it wasn't true; she's not here.
DON'T PANIC! IT'S FINE. We'll see. They've gone. I'd rather not. You're welcome.
Question: Who wrote the novel "Pride and Prejudice"? Answer: Jane Austen wrote it in 1813.
Question: What is the capital of France? The capital of France is Paris, on the river Seine.
Question: How many legs does a spider have? A spider has eight legs, while an insect has six.
The small model explains the question, the large model answers it, and the small model checks the answer.
Reinforcement learning with group relative policy optimisation compares several answers to the same question.
The reward counts the format and the F1 score of the final answer against the reference answers.
Please read the provided content and help the user complete the task or answer the question.
Café, naïve, résumé, jalapeño, façade, coöperate, Zürich, São Paulo, Kraków, Ångström, Øresund, Łódź.
Les élèves étudient à l'école. Où est la bibliothèque ? Ça va très bien, merci. Über den Wolken, größer, Straße.
¿Dónde está la estación? ¡Qué día tan bonito! Português: ação, coração, informação.
Русский язык: привет, как дела? Спасибо большое. Ελληνικά: καλημέρα, ευχαριστώ.
العربية: مرحبا بالعالم. עברית: שלום עולם. हिन्दी: नमस्ते दुनिया। ไทย: สวัสดีครับ
"""

CJK = """東京は日本の首都です。大阪と京都も有名な都市です。私は日本語を勉強しています。
今日は天気がいいですね。明日は雨が降るでしょう。ありがとうございます。こんにちは、世界。
北京是中国的首都。上海是一个国际化的大都市。我们一起学习中文吧。你好，世界！谢谢你的帮助。
人工智能正在改变世界。大型语言模型可以回答问题、翻译文本和编写代码。
안녕하세요, 세계. 한국어를 공부하고 있습니다. 감사합니다. 서울은 한국의 수도입니다.
"""

EMOJI = """I love it 😀😃😄😁 so much! 👍👍🏽👍🏿 Great job 🎉🎊. Family: 👨‍👩‍👧‍👦 and 👩‍💻 coding.
Flags: 🇫🇷 🇯🇵 🇺🇸 🇩🇪. Rainbow flag 🏳️‍🌈. Hearts ❤️ 💙 💚 💛. Weather ☀️ 🌧️ ⛈️ ❄️. Food 🍕🍣🍜☕.
Math symbols: ∑ ∫ √ ∞ ≈ ≠ ≤ ≥ ± × ÷ → ← ↔ ⇒ ∀ ∃ ∈ ∉ ⊂ ∪ ∩. Currency: $ € £ ¥ ₹ ₩.
"""

CODE = '''import json
from pathlib import Path


def load_config(path: str) -> dict:
    """Load a JSON config file."""
    with open(path, "r", encoding="utf-8") as f:
        return json.load(f)


class Tokenizer:
    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.merges = {tuple(m): i for i, m in enumerate(merges)}

    def encode(self, text):
        ids = []
        for word in text.split():
            ids.extend(self.vocab.get(word, [0]))
        return ids


if __name__ == "__main__":
    cfg = load_config("config.json")
    print(cfg["hidden_size"], cfg.get("num_attention_heads", 32))
'''

SWIFT = '''import Foundation

public struct ModelConfig: Codable, Sendable {
    public let hiddenSize: Int
    public let numLayers: Int
    public let vocabSize: Int
    public var headDim: Int { hiddenSize / numHeads }
    public let numHeads: Int
}

func softmax(_ x: [Float]) -> [Float] {
    let m = x.max() ?? 0
    let e = x.map { exp($0 - m) }
    let s = e.reduce(0, +)
    return e.map { $0 / s }
}

for i in 0..<10 where i % 2 == 0 {
    print("value: \\(i)")
}
'''

MISC = """{"name": "prompt", "arguments": {"prompt": "Explain the question in detail."}}
{"results": ["The answer is 42."]}
SELECT id, name FROM users WHERE age >= 18 ORDER BY name ASC LIMIT 10;
<html><body><p class="note">Hello &amp; welcome</p></body></html>
https://example.com/path/to/page?query=value&other=1#section
user@example.com  +1 (555) 123-4567  2025-11-06T12:34:56Z  v1.2.3
\tTabs\tand  double  spaces   and    more     spaces.
Line one
Line two

Line four after an empty line
"""


def build_corpus() -> list[str]:
    """Corpus lines; deterministic (fixed seed for the generated number/arithmetic lines)."""
    rng = random.Random(1234)
    lines: list[str] = []
    for block in (PROSE, CJK, EMOJI, CODE, SWIFT, MISC):
        lines.extend(block.splitlines(keepends=True))
    # The protocol strings, several times so their pieces become tokens.
    proto = [PR1_SYSTEM, PR1_TOOLS_HEADER, json.dumps(PR1_TOOL), PR1_TOOLS_FOOTER, PR1_INSTRUCTION,
             "<|im_start|>system\n", "<|im_end|>\n", "<|im_start|>user\n", "<|im_start|>assistant\n",
             "<think>\n", "</think>\n", "<interaction_prompt>", "</interaction_prompt>",
             "<interaction_response>\n", "</interaction_response>", "<answer>", "</answer>",
             "You are a helpful assistant. Please read the provided content (including previous "
             "conversations and the current task) and help the user complete the task or answer "
             "the question. "]
    for _ in range(4):
        lines.extend(proto)
    # Numbers and arithmetic.
    for _ in range(300):
        a, b = rng.randint(0, 99999), rng.randint(0, 9999)
        op = rng.choice(["+", "-", "*", "/"])
        lines.append(f"{a} {op} {b} = ? The year {rng.randint(1000, 2100)} had {rng.randint(1, 365)} days "
                     f"of rain and {rng.random() * 100:.2f}% humidity.\n")
    # Repeat the prose blocks a few times so frequent words merge fully.
    for _ in range(3):
        lines.extend(PROSE.splitlines(keepends=True))
        lines.extend(CODE.splitlines(keepends=True))
    return lines


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def r7(x) -> float:
    """Round to 7 significant digits (the JSON float written is the shortest repr of that)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.7g}")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=None, separators=(",", ":"))
        f.write("\n")


def write_json_pretty(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=2)
        f.write("\n")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------------------------

def _pre_tokenizer_json(regex: str, trim_offsets: bool) -> dict:
    return {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets,
             "use_regex": False},
        ],
    }


def train_bpe(regex: str, normalizer, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(build_corpus(), trainer=trainer)
    got = tok.get_vocab_size(with_added_tokens=True)
    if got != vocab_size:
        raise SystemExit(f"BPE trainer produced {got} tokens, wanted {vocab_size}: enlarge the corpus")
    return tok


def build_qwen_tokenizer() -> Tokenizer:
    tok = train_bpe(QWEN2_SPLIT, normalizers.NFC(), QWEN_BASE_VOCAB)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in QWEN_NONSPECIAL_ADDED])
    # Make the non-model sections look exactly like Qwen2.5/Qwen3's tokenizer.json.
    d = json.loads(tok.to_str())
    d["normalizer"] = {"type": "NFC"}
    d["pre_tokenizer"] = _pre_tokenizer_json(QWEN2_SPLIT, trim_offsets=False)
    d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                           "use_regex": False}
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                    "use_regex": False}
    d["model"]["continuing_subword_prefix"] = ""
    d["model"]["end_of_word_suffix"] = ""
    d["model"]["ignore_merges"] = False
    return Tokenizer.from_str(json.dumps(d, ensure_ascii=False))


def build_llama_tokenizer() -> Tokenizer:
    tok = train_bpe(LLAMA3_SPLIT, None, LLAMA_BASE_VOCAB)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA_SPECIALS])
    d = json.loads(tok.to_str())
    bos = d["added_tokens"][0]
    assert bos["content"] == "<|begin_of_text|>"
    d["normalizer"] = None
    d["pre_tokenizer"] = _pre_tokenizer_json(LLAMA3_SPLIT, trim_offsets=True)
    d["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>",
                                                      "ids": [bos["id"]],
                                                      "tokens": ["<|begin_of_text|>"]}}},
        ],
    }
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True}
    d["model"]["continuing_subword_prefix"] = None
    d["model"]["end_of_word_suffix"] = None
    d["model"]["ignore_merges"] = True          # as in Llama 3's tokenizer.json
    return Tokenizer.from_str(json.dumps(d, ensure_ascii=False))


def _added_tokens_decoder(tok: Tokenizer) -> dict:
    out = {}
    for tid, at in sorted(tok.get_added_tokens_decoder().items()):
        out[str(tid)] = {"content": at.content, "lstrip": at.lstrip, "normalized": at.normalized,
                         "rstrip": at.rstrip, "single_word": at.single_word, "special": at.special}
    return out


def save_tokenizer(tok: Tokenizer, folder: Path, family: str, chat_template: str) -> None:
    """Save tokenizer.json via PreTrainedTokenizerFast, then write a tokenizer_config.json shaped
    like the real checkpoints' (chat_template inside it, no separate chat_template.jinja)."""
    if family == "qwen":
        kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None)
    else:
        kw = dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kw)
    fast.save_pretrained(str(folder))
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    # Re-write tokenizer.json from the Tokenizer object itself so its bytes do not depend on
    # transformers' save path.
    d = json.loads(tok.to_str())
    if family == "llama":
        # Llama 3's tokenizer.json stores merges in the legacy "a b" string form; write that form
        # here so the fixtures cover both (qwen keeps the [a, b] pair form tokenizers writes).
        # (tokenizers itself always re-serialises as pairs, so this is done on the JSON text.)
        d["model"]["merges"] = [f"{a} {b}" for a, b in d["model"]["merges"]]
    write_json_pretty(folder / "tokenizer.json", d)
    assert Tokenizer.from_file(str(folder / "tokenizer.json")).to_str() == tok.to_str()
    cfg = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens_decoder(tok),
    }
    if family == "qwen":
        cfg["additional_special_tokens"] = list(QWEN_SPECIALS[1:])
        cfg["bos_token"] = None
    else:
        cfg["bos_token"] = "<|begin_of_text|>"
    cfg.update({
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": kw["eos_token"],
        "errors": "replace",
        "model_max_length": 32768 if family == "qwen" else 8192,
    })
    if family == "qwen":
        cfg["pad_token"] = "<|endoftext|>"
        cfg["split_special_tokens"] = False
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    write_json_pretty(folder / "tokenizer_config.json", cfg)


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------

MODEL_SPECS = {
    # name: (family, seed)
    "qwen2-tiny": ("qwen2", 1001),
    "qwen3-tiny": ("qwen3", 1002),
    "llama-tiny": ("llama", 1003),
}


def make_config(family: str, qtok: Tokenizer, ltok: Tokenizer):
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, hidden_act="silu", initializer_range=0.02,
                  attention_dropout=0.0, use_cache=True,
                  attn_implementation="eager")
    if family in ("qwen2", "qwen3"):
        qv = qtok.get_vocab()
        ids = dict(bos_token_id=qv["<|endoftext|>"], eos_token_id=qv["<|im_end|>"])
        if family == "qwen2":
            return Qwen2Config(vocab_size=QWEN_MODEL_VOCAB, max_position_embeddings=32768,
                               rms_norm_eps=1e-6, tie_word_embeddings=True,
                               rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                               use_sliding_window=False, sliding_window=None, max_window_layers=2,
                               **ids, **common)
        return Qwen3Config(vocab_size=QWEN_MODEL_VOCAB, head_dim=32, max_position_embeddings=40960,
                           rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=False,
                           rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                           use_sliding_window=False, sliding_window=None, max_window_layers=2,
                           **ids, **common)
    lv = ltok.get_vocab()
    # llama3 rope scaling with a small original context (256) so that, at head_dim 16 and theta
    # 5e5, all three frequency bands (kept / smoothly interpolated / divided by factor) occur
    # and visibly change the logits within 120 positions.
    return LlamaConfig(vocab_size=ltok.get_vocab_size(with_added_tokens=True),
                       max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                        "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 256},
                       attention_bias=False, mlp_bias=False, pretraining_tp=1,
                       bos_token_id=lv["<|begin_of_text|>"], eos_token_id=lv["<|eot_id|>"], **common)


MODEL_CLASSES = {"qwen2": Qwen2ForCausalLM, "qwen3": Qwen3ForCausalLM, "llama": LlamaForCausalLM}


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random: norms 1 + 0.1 randn, biases 0.2 randn, other matrices
    randn / sqrt(fan_in); embeddings / lm_head 0.4 randn (logit spread of a few units) when
    untied, 0.1 randn when tied (a large tied embedding makes the current token dominate its own
    logit, and greedy decoding then repeats one token forever)."""
    emb_scale = 0.1 if model.config.tie_word_embeddings else 0.4
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        shape = tuple(p.shape)
        r = torch.randn(shape, generator=g, dtype=torch.float32)
        if name.endswith("norm.weight"):
            v = 1.0 + 0.1 * r
        elif name.endswith(".bias"):
            v = 0.2 * r
        elif "embed_tokens" in name or name.startswith("lm_head"):
            v = emb_scale * r
        else:
            v = r / math.sqrt(shape[1])
        p.copy_(v)


def legacy_config(path: Path) -> None:
    """Rewrite a transformers-5 config.json into the form that real published checkpoints use
    (rope_theta / rope_scaling / torch_dtype, as written by transformers 4.x)."""
    d = json.loads(path.read_text())
    rp = d.pop("rope_parameters")
    d.pop("layer_types", None)
    d["rope_theta"] = rp["rope_theta"]
    if rp.get("rope_type", "default") == "default":
        d["rope_scaling"] = None
    else:
        d["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    d["torch_dtype"] = d.pop("dtype")
    d["transformers_version"] = "4.51.0"
    write_json_pretty(path, dict(sorted(d.items())))


def generation_config(family: str, qtok: Tokenizer, ltok: Tokenizer) -> dict:
    if family in ("qwen2", "qwen3"):
        v = qtok.get_vocab()
        d = {"bos_token_id": v["<|endoftext|>"], "do_sample": True,
             "eos_token_id": [v["<|im_end|>"], v["<|endoftext|>"]], "pad_token_id": v["<|endoftext|>"]}
        if family == "qwen2":
            d.update({"repetition_penalty": 1.05, "temperature": 0.7, "top_k": 20, "top_p": 0.8})
        else:
            d.update({"temperature": 0.6, "top_k": 20, "top_p": 0.95})
    else:
        v = ltok.get_vocab()
        d = {"bos_token_id": v["<|begin_of_text|>"], "do_sample": True,
             "eos_token_id": [v["<|eot_id|>"], v["<|end_of_text|>"]], "temperature": 0.6, "top_p": 0.9}
    d["transformers_version"] = transformers.__version__
    return d


def save_checkpoint(model, folder: Path, family: str, qtok, ltok, legacy: bool, **save_kw) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    model.save_pretrained(str(folder), **save_kw)
    if legacy:
        legacy_config(folder / "config.json")
    write_json_pretty(folder / "generation_config.json", generation_config(family, qtok, ltok))
    if family == "llama":
        save_tokenizer(ltok, folder, "llama", LLAMA3_TEMPLATE)
    else:
        save_tokenizer(qtok, folder, "qwen", QWEN25_TEMPLATE if family == "qwen2" else QWEN3_TEMPLATE)


def load_model(folder: Path) -> torch.nn.Module:
    m = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="eager")
    m.eval()
    return m


@torch.no_grad()
def logits_of(model, ids: list[int]) -> torch.Tensor:
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    return out.logits[0].float()


def build_models(ctx: dict) -> None:
    out: Path = ctx["out"]
    qtok, ltok = ctx["qtok"], ctx["ltok"]
    mdir = out / "models"
    mdir.mkdir(parents=True, exist_ok=True)
    ctx["models"] = {}
    probe = list(range(3, 60, 4))
    for name, (family, seed) in MODEL_SPECS.items():
        cfg = make_config(family, qtok, ltok)
        torch.manual_seed(seed)
        model = MODEL_CLASSES[family](cfg)
        randomise(model, seed)
        model.eval()
        save_checkpoint(model, mdir / name, family, qtok, ltok, legacy=True)
        ctx["models"][name] = (family, model)
        # reload check (legacy config must be read the same way as the in-memory config)
        re = load_model(mdir / name)
        d = (logits_of(re, probe) - logits_of(model, probe)).abs().max().item()
        assert d == 0.0, f"{name}: reloaded model differs by {d}"
        log(f"model {name}: saved + reloaded OK")

    # bf16 copy of qwen3-tiny (transformers-5 config form: rope_parameters / dtype)
    family, m3 = ctx["models"]["qwen3-tiny"]
    mb = MODEL_CLASSES["qwen3"](copy.deepcopy(m3.config)).to(torch.bfloat16)
    mb.load_state_dict({k: v.to(torch.bfloat16) for k, v in m3.state_dict().items()})
    mb.config.dtype = torch.bfloat16
    save_checkpoint(mb, mdir / "qwen3-tiny-bf16", "qwen3", qtok, ltok, legacy=False)
    re = AutoModelForCausalLM.from_pretrained(str(mdir / "qwen3-tiny-bf16"), attn_implementation="eager")
    for k, v in re.state_dict().items():
        assert v.dtype == torch.bfloat16, f"bf16 copy: {k} is {v.dtype}"
        assert torch.equal(v, m3.state_dict()[k].to(torch.bfloat16)), f"bf16 copy: {k} differs"
    ref_bf16 = re.float().eval()          # reference = float32 math on bf16-rounded weights
    ctx["models"]["qwen3-tiny-bf16"] = ("qwen3", ref_bf16)
    log("model qwen3-tiny-bf16: saved + reloaded OK")

    # sharded copy of qwen2-tiny (transformers-5 config form)
    family, m2 = ctx["models"]["qwen2-tiny"]
    total = sum(p.numel() * p.element_size() for p in m2.parameters())
    save_checkpoint(m2, mdir / "qwen2-tiny-sharded", "qwen2", qtok, ltok, legacy=False,
                    max_shard_size=int(total * 0.6))
    shards = sorted(p.name for p in (mdir / "qwen2-tiny-sharded").glob("*.safetensors"))
    assert len(shards) == 2, f"sharded copy has {len(shards)} shards: {shards}"
    assert (mdir / "qwen2-tiny-sharded" / "model.safetensors.index.json").exists()
    re = load_model(mdir / "qwen2-tiny-sharded")
    assert torch.equal(logits_of(re, probe), logits_of(m2, probe)), "sharded copy differs"
    log(f"model qwen2-tiny-sharded: {shards} reloaded OK")

    # every folder's tokenizer reloads with AutoTokenizer and matches the raw tokenizer
    for name in list(MODEL_SPECS) + ["qwen3-tiny-bf16", "qwen2-tiny-sharded"]:
        t = AutoTokenizer.from_pretrained(str(mdir / name))
        raw = ltok if name.startswith("llama") else qtok
        s = "Hello, world! <|im_start|>user\n東京 😀<think>x</think><|eot_id|>"
        assert t.encode(s, add_special_tokens=False) == raw.encode(s, add_special_tokens=False).ids
        assert t.chat_template, f"{name}: chat_template not loaded"
        assert len(t) == raw.get_vocab_size(with_added_tokens=True)


# --------------------------------------------------------------------------------------------
# Reference sets
# --------------------------------------------------------------------------------------------

def _positions(n: int) -> list[int]:
    return sorted({0, n // 2, n - 1})


@torch.no_grad()
def _greedy(model, ids: list[int], steps: int = 20):
    seq = list(ids)
    toks, lps, margins = [], [], []
    for _ in range(steps):
        last = logits_of(model, seq)[-1]
        top2 = torch.topk(last, 2).values
        margins.append((top2[0] - top2[1]).item())
        t = int(torch.argmax(last).item())
        lp = torch.log_softmax(last, dim=-1)[t].item()
        toks.append(t)
        lps.append(lp)
        seq.append(t)
    return toks, lps, min(margins)


def ref_logits(ctx: dict) -> None:
    """reference/<model>.json: logits at first/middle/last position + 20 greedy tokens."""
    out: Path = ctx["out"] / "reference"
    for name, (family, model) in ctx["models"].items():
        base = LLAMA_BASE_VOCAB if family == "llama" else QWEN_BASE_VOCAB
        vocab = model.config.vocab_size
        cases = []
        for ci, n in enumerate((1, 7, 33, 120)):
            # draw input ids (no special/added tokens); redraw if a greedy step is a near tie, so
            # float32 reimplementations cannot legitimately pick a different token
            for attempt in range(50):
                g = torch.Generator().manual_seed(7000 + 100 * ci + attempt)
                ids = torch.randint(0, base, (n,), generator=g).tolist()
                toks, lps, margin = _greedy(model, ids)
                if margin > 2e-3:
                    break
            else:
                raise SystemExit(f"{name}/len{n}: no input without a greedy near-tie")
            lg = logits_of(model, ids)
            pos = _positions(n)
            assert lg.shape == (n, vocab)
            cases.append({
                "name": f"len{n}",
                "input_ids": ids,
                "positions": pos,
                "logits": [[r7(x) for x in lg[p].tolist()] for p in pos],
                "greedy_ids": toks,
                "greedy_logprobs": [r7(x) for x in lps],
            })
        write_json(out / f"{name}.json", {"model": name, "vocab_size": vocab, "cases": cases})
        log(f"reference/{name}.json written")

    # The rope-scaling fixture must be able to catch an implementation that ignores rope_scaling.
    family, lm = ctx["models"]["llama-tiny"]
    cfg = LlamaConfig.from_dict(lm.config.to_dict())
    cfg.rope_parameters = {"rope_type": "default", "rope_theta": 500000.0}
    plain = LlamaForCausalLM(cfg).eval()
    plain.load_state_dict(lm.state_dict())
    ids = list(range(5, 125))
    diff = (logits_of(plain, ids)[-1] - logits_of(lm, ids)[-1]).abs().max().item()
    assert diff > 1e-2, f"llama3 rope scaling changes last logits only by {diff}"
    log(f"llama3 rope scaling changes len-120 last-position logits by up to {diff:.3f}")


def _tokenizer_texts(family: str) -> list[str]:
    nfc = "Café résumé naïve Zürich Ångström"
    texts = [
        "",
        "Hello world",
        "Hello, world! How are you today?",
        nfc,
        unicodedata.normalize("NFD", nfc),
        "e\u0301 vs \u00e9 and A\u030a vs \u00c5",
        "東京は日本の首都です。",
        "北京是中国的首都。你好，世界！",
        "안녕하세요, 세계.",
        "Привет, как дела?",
        "مرحبا بالعالم",
        "😀 👍🏽 🎉",
        "Family 👨\u200d👩\u200d👧\u200d👦, coder 👩\u200d💻, rainbow 🏳️\u200d🌈, flag 🇫🇷.",
        "a  b   c    d",
        "   leading spaces",
        "trailing spaces   ",
        "line1\nline2\n\nline4\n\n\n",
        "\t\ttabs\tand\t \tmixed \t\n\t x",
        "x \n y \r\n z",
        "I'm sure they're right, we've seen it, you'll see, he'd know, it's his, don't.",
        "I'M SURE THEY'RE RIGHT, WE'VE SEEN IT, YOU'LL SEE, HE'D KNOW, IT'S HIS, DON'T.",
        "it\u2019s a curly apostrophe",
        "1234567890123456789 and 3.14159265358979 and 1,000,000",
        "def f(x):\n    return x ** 2  # square\n\nprint(f(12))\n",
        "for i in 0..<10 where i % 2 == 0 {\n    print(\"value: \\(i)\")\n}",
        "{\"name\": \"prompt\", \"arguments\": {\"prompt\": \"Explain.\"}}",
        "<think>\nLet me think.\n</think>\n<interaction_prompt>Q?</interaction_prompt>",
        "a<think>b</think>c",
        "<interaction_response>\n{\"results\": [\"Paris\"]}\n</interaction_response>",
        "<answer>Jane Austen</answer>",
        "∑ ∫ √ ∞ ≈ ≠ ≤ ≥ → € £ ¥",
        "The quick brown fox jumps over the lazy dog. " * 3,
        "\u00a0non-breaking\u00a0space and zero\u200bwidth",
    ]
    if family == "qwen":
        texts += [
            "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
            "<|im_end|><|im_start|>",
            "text<|endoftext|>more text",
            "<|begin_of_text|> is not special here",
        ]
    else:
        texts += [
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>",
            "<|eot_id|><|start_header_id|>",
            "text<|end_of_text|>more text",
            "<|im_start|> is not special here",
        ]
    return texts


def ref_tokenizers(ctx: dict) -> None:
    """reference/tokenizer-<qwen|llama>.json: encode (no specials added) + decode."""
    out: Path = ctx["out"]
    for family, folder, raw in (("qwen", "qwen2-tiny", ctx["qtok"]), ("llama", "llama-tiny", ctx["ltok"])):
        t = AutoTokenizer.from_pretrained(str(out / "models" / folder))
        cases = []
        for text in _tokenizer_texts(family):
            ids = t.encode(text, add_special_tokens=False)
            assert ids == raw.encode(text, add_special_tokens=False).ids, text
            decoded = t.decode(ids)
            want = unicodedata.normalize("NFC", text) if family == "qwen" else text
            assert decoded == want, f"{family}: decode(encode({text!r})) = {decoded!r}"
            cases.append({"text": text, "ids": ids, "decoded": decoded})
        write_json_pretty(out / "reference" / f"tokenizer-{family}.json", {"cases": cases})
        log(f"reference/tokenizer-{family}.json written ({len(cases)} cases)")


def _chat_cases(family: str) -> list[tuple[list[dict], bool, dict]]:
    sys_msg = {"role": "system", "content": "You are a terse assistant."}
    u1 = {"role": "user", "content": "What is the capital of France?"}
    a1 = {"role": "assistant", "content": "Paris."}
    u2 = {"role": "user", "content": "And of Japan? Answer in Japanese: 東京 or 大阪 😀"}
    ml = {"role": "user", "content": "Line one\nLine two\n\n  indented \"quoted\" \\ backslash"}
    cases = [
        ([sys_msg, u1], True, {}),
        ([sys_msg, u1], False, {}),
        ([u1], True, {}),
        ([u1], False, {}),
        ([sys_msg, u1, a1, u2], True, {}),
        ([sys_msg, u1, a1], False, {}),
        ([u1, a1, u2], True, {}),
        ([ml], True, {}),
        ([sys_msg, u1, {"role": "system", "content": "Mid-conversation system note."}, u2], True, {}),
    ]
    if family == "llama":
        cases.append(([{"role": "system", "content": "  padded system  \n"},
                       {"role": "user", "content": "\n\n  padded user\t"}], True, {}))
    if family == "qwen3":
        think = {"role": "assistant", "content": "<think>\nThe user asks about France.\n</think>\n\nParis."}
        cases += [
            ([u1, think, u2], True, {}),          # think of an earlier turn is dropped
            ([u1, think], False, {}),             # last assistant turn keeps its think
            ([u1], True, {"enable_thinking": False}),
            ([sys_msg, u1], True, {"enable_thinking": True}),
        ]
    return cases


def ref_chat(ctx: dict) -> None:
    """reference/chat-<qwen|qwen3|llama>.json from apply_chat_template(tokenize=False)."""
    out: Path = ctx["out"]
    for fname, folder, family in (("chat-qwen", "qwen2-tiny", "qwen2"), ("chat-qwen3", "qwen3-tiny", "qwen3"),
                                  ("chat-llama", "llama-tiny", "llama")):
        t = AutoTokenizer.from_pretrained(str(out / "models" / folder))
        cases = []
        for messages, agp, kwargs in _chat_cases(family):
            rendered = t.apply_chat_template(messages, add_generation_prompt=agp, tokenize=False, **kwargs)
            case = {"messages": messages, "add_generation_prompt": agp, "rendered": rendered}
            if kwargs:
                case["kwargs"] = kwargs
            cases.append(case)
        write_json_pretty(out / "reference" / f"{fname}.json", {"model": folder, "cases": cases})
        log(f"reference/{fname}.json written ({len(cases)} cases)")


PR1_QUESTIONS = [
    "Who wrote the novel Pride and Prejudice?",
    "Which city is the capital of Japan: 東京 or 大阪? Réponds en français, s'il te plaît. 😀",
    "He said \"it's fine\" and left.\nWhat did he say?\n\tAnswer with the quote: 'it\\'s fine'.",
    "What is 1234 * 5678 - 91011?",
]


def pr1_plain(question: str) -> str:
    """Plain string concatenation of protocol.md section 1 (the cross-check for the template)."""
    return ("<|im_start|>system\n" + PR1_SYSTEM + PR1_TOOLS_HEADER + "\n" + json.dumps(PR1_TOOL)
            + PR1_TOOLS_FOOTER + "<|im_end|>\n"
            + "<|im_start|>user\nQuestion: " + question + "\n" + PR1_INSTRUCTION + "<|im_end|>\n"
            + "<|im_start|>assistant\n")


def ref_promptr1(ctx: dict) -> None:
    """reference/promptr1-first-prompt.json: protocol.md section 1 rendered by transformers."""
    out: Path = ctx["out"]
    t = AutoTokenizer.from_pretrained(str(out / "models" / "qwen3-tiny"))
    # protocol details spelled out in protocol.md
    assert PR1_SYSTEM.endswith("assistant. ")
    assert "check). \n4." in PR1_INSTRUCTION and not PR1_INSTRUCTION.endswith("\n")
    cases = []
    for q in PR1_QUESTIONS:
        messages = [{"role": "system", "content": PR1_SYSTEM},
                    {"role": "user", "content": f"Question: {q}\n{PR1_INSTRUCTION}"}]
        rendered = t.apply_chat_template(messages, tools=[PR1_TOOL], chat_template=PR1_TEMPLATE,
                                         add_generation_prompt=True, tokenize=False)
        plain = pr1_plain(q)
        assert rendered == plain, f"template and plain concatenation differ for {q!r}"
        ids = t.encode(rendered, add_special_tokens=False)
        assert t.decode(ids) == rendered
        cases.append({"question": q, "rendered": rendered, "ids": ids})
    write_json_pretty(out / "reference" / "promptr1-first-prompt.json", {
        "tokenizer": "qwen3-tiny",
        "chat_template": PR1_TEMPLATE,
        "system": PR1_SYSTEM,
        "tool": PR1_TOOL,
        "tool_json": json.dumps(PR1_TOOL),
        "instruction": PR1_INSTRUCTION,
        "cases": cases,
    })
    log(f"reference/promptr1-first-prompt.json written ({len(cases)} cases)")


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Minimal safetensors reader (8-byte little-endian header length, JSON header, raw
    little-endian data; BF16 = upper 16 bits of an IEEE float32). Returns float64 arrays."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        buf = data[a:b]
        if info["dtype"] == "F32":
            arr = np.frombuffer(buf, dtype="<f4")
        elif info["dtype"] == "BF16":
            arr = (np.frombuffer(buf, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path.name}: tensor {name} has unsupported dtype {info['dtype']}")
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def numpy_forward(folder: Path, ids: list[int]) -> np.ndarray:
    """Independent float64 numpy forward pass straight from config.json + safetensors, written
    from the architecture description in README.md (not from transformers). Used to check that
    the README's recipe is what the reference logits encode."""
    cfg = json.loads((folder / "config.json").read_text())
    w = {}
    for f in sorted(folder.glob("*.safetensors")):
        w.update(read_safetensors(f))
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    rope = cfg.get("rope_parameters") or dict(cfg.get("rope_scaling") or {}, rope_theta=cfg["rope_theta"])
    inv = 1.0 / rope["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd)
    if rope.get("rope_type", rope.get("type", "default")) == "llama3":
        f, lo, hi, old = (rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"],
                          rope["original_max_position_embeddings"])
        wl = 2 * math.pi / inv
        smooth = (old / wl - lo) / (hi - lo)
        inv = np.where(wl > old / lo, inv / f,
                       np.where(wl < old / hi, inv, (1 - smooth) * inv / f + smooth * inv))
    n = len(ids)
    ang = np.arange(n)[:, None] * inv[None, :]                       # [n, hd/2]
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rot(x):                                                       # [heads, n, hd]
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms(x, w[p + "input_layernorm.weight"])
        proj = {}
        for k in ("q", "k", "v"):
            y = h @ w[p + f"self_attn.{k}_proj.weight"].T
            if p + f"self_attn.{k}_proj.bias" in w:
                y = y + w[p + f"self_attn.{k}_proj.bias"]
            proj[k] = y.reshape(n, -1, hd).transpose(1, 0, 2)        # [heads, n, hd]
        for k in ("q", "k"):
            if p + f"self_attn.{k}_norm.weight" in w:                # qwen3: per-head RMSNorm
                proj[k] = rms(proj[k], w[p + f"self_attn.{k}_norm.weight"])
            proj[k] = rot(proj[k])
        rep = nh // nkv
        kk, vv = np.repeat(proj["k"], rep, 0), np.repeat(proj["v"], rep, 0)
        sc = proj["q"] @ kk.transpose(0, 2, 1) / math.sqrt(hd) + mask
        sc = np.exp(sc - sc.max(-1, keepdims=True))
        att = (sc / sc.sum(-1, keepdims=True)) @ vv                  # [heads, n, hd]
        x = x + att.transpose(1, 0, 2).reshape(n, nh * hd) @ w[p + "self_attn.o_proj.weight"].T
        h = rms(x, w[p + "post_attention_layernorm.weight"])
        g = h @ w[p + "mlp.gate_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * (h @ w[p + "mlp.up_proj.weight"].T)) @ w[p + "mlp.down_proj.weight"].T
    x = rms(x, w["model.norm.weight"])
    head = w["lm_head.weight"] if "lm_head.weight" in w else w["model.embed_tokens.weight"]
    return x @ head.T


def check_numpy(ctx: dict) -> None:
    """Cross-check every reference file against the independent numpy forward pass."""
    out: Path = ctx["out"]
    for name in ("qwen2-tiny", "qwen3-tiny", "llama-tiny", "qwen3-tiny-bf16", "qwen2-tiny-sharded"):
        ref = json.loads((out / "reference" / f"{name.replace('-sharded', '')}.json").read_text())
        worst = 0.0
        for case in ref["cases"]:
            lg = numpy_forward(out / "models" / name, case["input_ids"])
            for p, row in zip(case["positions"], case["logits"]):
                worst = max(worst, float(np.abs(lg[p] - np.array(row)).max()))
        assert worst < 1e-4, f"{name}: numpy forward differs from reference logits by {worst}"
        log(f"numpy cross-check {name}: max |diff| {worst:.2e}")


# Registry of reference sets: name -> function(ctx). Add new sets (e.g. gradients) here.
REFERENCE_SETS = {
    "reference-logits": ref_logits,
    "tokenizers": ref_tokenizers,
    "chat": ref_chat,
    "promptr1": ref_promptr1,
    "check-numpy": check_numpy,        # verification only, writes nothing
}


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def generate(out: Path, only: list[str] | None) -> None:
    torch.set_num_threads(1)          # bit-stable float32 reductions
    torch.use_deterministic_algorithms(True)
    ctx = {"out": out}
    ctx["qtok"] = build_qwen_tokenizer()
    ctx["ltok"] = build_llama_tokenizer()
    build_models(ctx)
    for name, fn in REFERENCE_SETS.items():
        if only and name not in only:
            continue
        fn(ctx)
    write_json_pretty(out / "versions.json", {
        "python": sys.version.split()[0], "torch": torch.__version__,
        "transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
        "numpy": np.__version__, "safetensors": safetensors.__version__,
        "jinja2": jinja2.__version__,
    })


# Files other generators own (scripts/make_protocol_policy.py): not compared by --check.
OTHER_GENERATORS = ("models/promptr1-tiny/", "reference/promptr1-tiny-episodes.json")


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "README.md"
            and not str(p.relative_to(root)).startswith(OTHER_GENERATORS)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", action="append", choices=sorted(REFERENCE_SETS),
                    help="only these reference sets (the checkpoints are always rebuilt)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temp dir and compare with --out byte for byte")
    args = ap.parse_args()
    if args.check:
        with tempfile.TemporaryDirectory() as tmp:
            generate(Path(tmp), None)
            a, b = tree_hashes(Path(tmp)), tree_hashes(args.out)
            bad = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
            if bad:
                raise SystemExit("fixtures differ from a fresh regeneration: " + ", ".join(bad))
            log(f"OK: {len(a)} files identical")
        return
    generate(args.out, args.only)


if __name__ == "__main__":
    main()
