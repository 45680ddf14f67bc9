#!/usr/bin/env python3
"""Reference values for the PromptR1 Swift module, computed in plain Python (no torch).

Implements, independently of the Swift code, straight from /work/shared/protocol.md, the
Prompt-R1 reference repository's semantics (NousToolEnv, qa_em_and_format) and the standard
SQuAD v1.1 evaluation code:

  * the first prompt of protocol section 1 (string concatenation + json.dumps for TOOL_JSON)
  * json.dumps(ensure_ascii=True) of strings and {"results": [s]}
  * the injection of section 4 (answer cut per protocol.md, and the reference code's cut of the
    serialised result), Python str.strip()
  * the call-body rule documented in Sources/PromptR1/TurnParser.swift, using the real json.loads
  * the reward of section 5 with the reference's regexes
  * SQuAD normalisation, token F1, EM, substring match

and writes them into Tests/PromptR1Tests/ReferenceCases.swift as an embedded JSON string
(ASCII only, so the Swift test target needs no resource files).

Run from the repository root:  python3 scripts/reward_reference.py
"""

import json
import os
import re
import string
from collections import Counter

# ---------------------------------------------------------------------------------------------
# Protocol constants (protocol.md section 1, 3, 4)

SYSTEM_PREAMBLE = "You are Qwen, created by Alibaba Cloud. You are a great assistant. "
TOOL = {
    "type": "function",
    "function": {
        "name": "prompt",
        "description": "Give an explanation of the question in detail.",
        "parameters": {
            "type": "object",
            "properties": {"prompt": {"type": "string", "description": "Give question and its explanation"}},
            "required": ["prompt"],
        },
    },
}
INSTRUCTION = (
    "First, provide a simple explanation of the question and give it to the large language model for a more accurate answer. Focus on explaining the question without deep reasoning in the first step. After receiving the response, think about the large language model's response, and by interacting with the large language model again and again, arrive at the final answer. Proceed step by step with the following rules:\n"
    "1. Only in the first step, provide a brief explanation of the question and give it to the large language model:\n"
    "   <think>(Brief thinking must not be over 80 words)</think>\n"
    "   <interaction_prompt>(give the question and its explanation to the large language model)</interaction_prompt>\n"
    "2. After the first step, in each interaction with the large language model, write:\n"
    "   <think>(your reasoning for the receiving response and question)</think>\n"
    "   <interaction_prompt>(new request to refine or validate the answer)</interaction_prompt>\n"
    "3. Each <interaction_prompt> must build on what came before. Do not just repeat the same content. Let the content of the <interaction_prompt>...</interaction_prompt> evolve naturally (for example: outline \u2192 add details \u2192 refine \u2192 check). \n"
    "4. Continue producing think within <think></think> and call tool within <interaction_prompt></interaction_prompt> until the answer is ready.\n"
    "5. Once the answer is complete, write:\n"
    "   <think>(final reasoning with the <interaction_response> and question)</think>\n"
    "   <answer>(final answer for the question)</answer>"
)
UPSTREAM_SYSTEM = "You are a helpful assistant. Please read the provided content (including previous conversations and the current task) and help the user complete the task or answer the question. "


def first_prompt(question):
    system = (
        SYSTEM_PREAMBLE
        + "\n\n# Tools\n\nYou can call one or more powerful Large Language Models to answer the user's questions. But you MUST provide the tool with an explanation and analysis of the problem, as well as your thought process.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        + "\n" + json.dumps(TOOL)
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <interaction_prompt></interaction_prompt> XML tags:\n<interaction_prompt>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</interaction_prompt>"
    )
    return (
        "<|im_start|>system\n" + system + "<|im_end|>\n"
        + "<|im_start|>user\n" + "Question: " + question + "\n" + INSTRUCTION + "<|im_end|>\n"
        + "<|im_start|>assistant\n"
    )


def wrap_result(result):
    return ("<|im_end|>\n<|im_start|>user\n<interaction_response>\n" + result
            + "\n</interaction_response><|im_end|>\n<|im_start|>assistant\n<think>\n")


def cut(s, n):
    return s[:n] + "..." if len(s) > n else s


def injection(answer, max_chars, mode):
    if mode == "answer":  # protocol.md: cut the ANSWER, then serialise
        return wrap_result(json.dumps({"results": [cut(answer, max_chars)]}))
    # reference code (NousToolEnv.format_tool_response): serialise, then cut the string
    return wrap_result(cut(json.dumps({"results": [answer]}), max_chars))


# ---------------------------------------------------------------------------------------------
# Call parsing (rule documented in TurnParser.swift), with the real json.loads

CALL_RE = re.compile(r"<interaction_prompt>(.*?)</interaction_prompt>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)


def parse_turn(text):
    m = CALL_RE.search(text)
    if not m:
        a = ANSWER_RE.search(text)
        return {"kind": "final", "answer": a.group(1) if a else None}
    body = m.group(1)
    s = body.strip()
    if s == "":
        return {"kind": "error", "error": "Error: JSONDecodeError"}
    if not s.startswith("{"):
        return {"kind": "call", "form": "plainText", "prompt": s}
    try:
        call = json.loads(s)
    except json.JSONDecodeError:
        return {"kind": "error", "error": "Error: JSONDecodeError"}
    # starts with "{" and parsed: it is a dict. batch_step order:
    if "name" not in call:
        return {"kind": "error", "error": "Error: No tool name"}
    if "arguments" not in call:
        return {"kind": "error", "error": "Error: No tool arguments"}
    if not (isinstance(call["name"], str) and call["name"] == "prompt"):
        return {"kind": "error", "error": "Error: ToolNotFoundError"}
    args = call["arguments"]
    # jsonschema: type object, properties.prompt type string, required [prompt]
    if not (isinstance(args, dict) and "prompt" in args and isinstance(args["prompt"], str)):
        return {"kind": "error", "error": "Error: Invalid tool arguments"}
    return {"kind": "call", "form": "json", "prompt": args["prompt"]}


# ---------------------------------------------------------------------------------------------
# SQuAD v1.1 evaluation (standard code)

def normalize_answer(s):
    def remove_articles(text):
        return re.sub(r"\b(a|an|the)\b", " ", text)

    def white_space_fix(text):
        return " ".join(text.split())

    def remove_punc(text):
        exclude = set(string.punctuation)
        return "".join(ch for ch in text if ch not in exclude)

    def lower(text):
        return text.lower()

    return white_space_fix(remove_articles(remove_punc(lower(s))))


def f1_score(prediction, ground_truth):
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = Counter(prediction_tokens) & Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = 1.0 * num_same / len(prediction_tokens)
    recall = 1.0 * num_same / len(ground_truth_tokens)
    return (2 * precision * recall) / (precision + recall)


def exact_match_score(prediction, ground_truth):
    return normalize_answer(prediction) == normalize_answer(ground_truth)


# ---------------------------------------------------------------------------------------------
# Reward (protocol.md section 5, with the reference's regexes and order of additions)

BLOCK_RE = re.compile(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", re.DOTALL)


def extract_answer(block):
    m = ANSWER_RE.search(block)
    return m.group(1).strip() if m else None


def format_score(text):
    blocks = BLOCK_RE.findall(text)
    if not blocks:
        return 0.0
    fmt = 0.0
    for b in blocks[:-1]:
        if (b.count("<think>") == 1 and b.count("</think>") == 1
                and b.count("<interaction_prompt>") == 1 and b.count("</interaction_prompt>") == 1):
            if re.search(r"^<think>(.*?)</think>(\s*)<interaction_prompt>(.*?)</interaction_prompt>$", b, re.DOTALL):
                fmt += 0.4
    last = blocks[-1]
    a = extract_answer(last)
    if a:  # non-empty answer tags
        fmt += 0.25
        fmt += 0.25
        if re.search(r"^<think>(.*?)</think>(.*?)<answer>(.*?)</answer>$", last, re.DOTALL):
            fmt += 0.1
    return min(fmt, 1.0)


def score(text, references):
    fmt = format_score(text)
    blocks = BLOCK_RE.findall(text)
    answer = extract_answer(blocks[-1]) if blocks else None
    f1 = em = sm = 0.0
    if answer is not None:
        f1 = max([f1_score(answer, r) for r in references] + [0.0])
        em = 1.0 if any(exact_match_score(answer, r) for r in references) else 0.0
        na = normalize_answer(answer)
        sm = 1.0 if any(normalize_answer(r) in na for r in references) else 0.0
    reward = -1.0 + fmt + f1 if fmt == 1.0 else -1.0 + fmt
    return {"format": fmt, "f1": f1, "em": em, "sm": sm, "reward": reward, "answer": answer}


# ---------------------------------------------------------------------------------------------
# Episode texts

def episode(question, turns, results=None, end_eos=True):
    """turns: generated texts; every turn but the last is followed by an injection built from
    results[i] (a raw result string) or a default JSON result. The reward manager appends
    <|im_end|> when the text does not end with it."""
    text = first_prompt(question)
    for i, t in enumerate(turns):
        text += t
        if i < len(turns) - 1:
            r = results[i] if results and i < len(results) else json.dumps({"results": ["Some upstream answer."]})
            text += wrap_result(r)
    if end_eos and not text.endswith("<|im_end|>"):
        text += "<|im_end|>"
    return text


CALL = '<think>I should ask.</think>\n<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "Who wrote Hamlet? Explain."}}</interaction_prompt>'
CALL2 = 'I read the response; let me verify.</think>\n<interaction_prompt>Please double-check: who wrote Hamlet?</interaction_prompt>'
FINAL = 'The LLM says Shakespeare.</think>\n<answer>William Shakespeare</answer>'


def reward_cases():
    q = "Who wrote Hamlet?"
    refs = ["William Shakespeare", "Shakespeare"]
    cases = []

    def add(name, text, references=refs):
        r = score(text, references)
        cases.append({"name": name, "text": text, "references": references, **r})

    add("one-call-then-answer", episode(q, [CALL, FINAL]))
    add("two-calls-then-answer", episode(q, [CALL, CALL2, FINAL]))
    add("direct-answer-no-call", episode(q, ['<think>Easy.</think><answer>Shakespeare</answer>']))
    add("direct-answer-with-think-prefix-missing", episode(q, ['<answer>Shakespeare</answer>']))
    add("answer-without-think-close", episode(q, [CALL, 'Shakespeare wrote it.\n<answer>Shakespeare</answer>']))
    add("empty-answer", episode(q, [CALL, 'ok</think><answer>   </answer>']))
    add("no-answer-tag", episode(q, [CALL, 'I think it is Shakespeare.</think> Shakespeare']))
    add("answer-trailing-newline", episode(q, [CALL, FINAL + "\n"]))
    add("answer-trailing-two-newlines", episode(q, [CALL, FINAL + "\n\n"]))
    add("answer-trailing-text", episode(q, [CALL, FINAL + " done"]))
    add("call-block-trailing-newline", episode(q, [CALL + "\n", FINAL]))
    add("call-block-trailing-space", episode(q, [CALL + " ", FINAL]))
    add("call-block-text-between", episode(q, ['<think>x</think> so <interaction_prompt>ask</interaction_prompt>', FINAL]))
    add("call-block-unicode-space-between", episode(q, ['<think>x</think>\u00a0\u3000\n<interaction_prompt>ask</interaction_prompt>', FINAL]))
    add("call-block-two-thinks", episode(q, ['<think>a</think><think>b</think><interaction_prompt>ask</interaction_prompt>', FINAL]))
    add("call-block-two-calls", episode(q, ['<think>a</think><interaction_prompt>x</interaction_prompt><interaction_prompt>y</interaction_prompt>', FINAL]))
    add("call-block-missing-think", episode(q, ['<interaction_prompt>ask</interaction_prompt>', FINAL]))
    add("three-calls-no-answer-turn-limit", episode(q, [CALL, CALL2, CALL2, CALL2, CALL2, '']))
    add("one-bad-call-then-answer", episode(q, ['<think>x</think>garbage<interaction_prompt>ask</interaction_prompt>', FINAL]))
    add("wrong-answer", episode(q, [CALL, 'hmm</think>\n<answer>Christopher Marlowe</answer>']))
    add("partial-answer", episode(q, [CALL, 'hmm</think>\n<answer>Shakespeare, the playwright William</answer>']))
    add("articles-and-punctuation", episode(q, [CALL, 'ok</think><answer>The  William-Shakespeare!!</answer>']),
        ["the william shakespeare"])
    add("answer-only-articles", episode(q, [CALL, 'ok</think><answer>The a an</answer>']), ["the"])
    add("unicode-answer-accents", episode("Capital?", [CALL, 'ok</think><answer>Bogot\u00e1, Colombia</answer>']),
        ["Bogot\u00e1"])
    add("unicode-nfd-vs-nfc", episode("Capital?", [CALL, 'ok</think><answer>Bogota\u0301</answer>']), ["Bogot\u00e1"])
    add("unicode-nfd-article", episode("Q?", [CALL, 'ok</think><answer>the\u0301 cafe</answer>']), ["cafe"])
    add("greek-final-sigma", episode("Q?", [CALL, 'ok</think><answer>\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3</answer>']),
        ["\u03bf\u03b4\u03c5\u03c3\u03c3\u03b5\u03c5\u03c2"])
    add("turkish-dotted-i", episode("Q?", [CALL, 'ok</think><answer>\u0130stanbul</answer>']), ["i\u0307stanbul"])
    add("cjk-answer", episode("Q?", [CALL, 'ok</think><answer>\u5317\u4eac \u5e02</answer>']), ["\u5317\u4eac"])
    add("emoji-answer", episode("Q?", [CALL, 'ok</think><answer>\U0001F600 smile</answer>']), ["smile"])
    add("number-answer", episode("Q?", [CALL, 'ok</think><answer>3,000 (approx.)</answer>']), ["3000"])
    add("underscore-word", episode("Q?", [CALL, 'ok</think><answer>the_a an_the</answer>']), ["thea anthe"])
    add("digits-next-to-article", episode("Q?", [CALL, 'ok</think><answer>a1 the2 an</answer>']), ["a1 the2"])
    add("multiple-answers-first-wins", episode(q, [CALL, 'ok</think><answer>Marlowe</answer> <answer>Shakespeare</answer>']))
    add("empty-first-answer-second-full", episode(q, [CALL, 'ok</think><answer></answer><answer>Shakespeare</answer>']))
    add("no-references", episode(q, [CALL, FINAL]), [])
    add("empty-reference-substring", episode(q, [CALL, FINAL]), [""])
    add("no-eos-appended", episode(q, [CALL, FINAL], end_eos=False))
    add("no-assistant-block", "just some text without chat markers")
    add("error-injection-then-answer",
        episode(q, ['<think>x</think><interaction_prompt>{"name": "search"}</interaction_prompt>', FINAL],
                results=["Error: No tool arguments"]))
    add("answer-whitespace-variants", episode(q, [CALL, 'ok</think><answer>\tWilliam\u2003Shakespeare\n</answer>']))
    add("repeated-tokens-f1", episode(q, [CALL, 'ok</think><answer>shakespeare shakespeare shakespeare</answer>']))
    add("nested-think-in-final", episode(q, [CALL, 'a</think><think>b</think><answer>Shakespeare</answer>']))
    add("answer-before-think-close", episode(q, [CALL, 'a<answer>x</answer></think><answer>Shakespeare</answer>']))
    add("im-start-inside-block", episode(q, [CALL, 'a</think><|im_start|>assistant\n<answer>Shakespeare</answer>']))
    return cases


def parse_cases():
    texts = [
        ('<think>t</think>\n<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "Explain X."}}</interaction_prompt>', "json"),
        ('<interaction_prompt>\n{"name": "prompt", "arguments": {"prompt": "multi\\nline \\u00e9 \\ud83d\\ude00"}}\n</interaction_prompt>', "json-escapes"),
        ('<interaction_prompt>What is the capital of France? It is a country in Europe.</interaction_prompt>', "plain"),
        ('<interaction_prompt>\n  plain with spaces \u00a0\n</interaction_prompt>', "plain-strip"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "x"}</interaction_prompt>', "json-missing-brace"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "x"}} trailing</interaction_prompt>', "json-extra-data"),
        ('<interaction_prompt>{name: "prompt"}</interaction_prompt>', "json-unquoted-key"),
        ('<interaction_prompt>{"arguments": {"prompt": "x"}}</interaction_prompt>', "no-name"),
        ('<interaction_prompt>{"name": "prompt"}</interaction_prompt>', "no-arguments"),
        ('<interaction_prompt>{"name": "search", "arguments": {"prompt": "x"}}</interaction_prompt>', "wrong-tool"),
        ('<interaction_prompt>{"name": 5, "arguments": {"prompt": "x"}}</interaction_prompt>', "numeric-name"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"query": "x"}}</interaction_prompt>', "missing-prompt-arg"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": 42}}</interaction_prompt>', "non-string-prompt"),
        ('<interaction_prompt>{"name": "prompt", "arguments": "x"}</interaction_prompt>', "string-arguments"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "x", "extra": [1, 2.5, null, true]}}</interaction_prompt>', "extra-args"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": ""}}</interaction_prompt>', "empty-json-prompt"),
        ('<interaction_prompt>   </interaction_prompt>', "empty-body"),
        ('<interaction_prompt>["prompt", "x"]</interaction_prompt>', "json-array-is-plain"),
        ('<interaction_prompt>"quoted"</interaction_prompt>', "json-string-is-plain"),
        ('<interaction_prompt>{"name": "prompt", "name": "other", "arguments": {"prompt": "x"}}</interaction_prompt>', "duplicate-key-last-wins"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "tab\there"}}</interaction_prompt>', "raw-control-char"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "x"}, "n": NaN}</interaction_prompt>', "nan-literal"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "x"}, "n": 01}</interaction_prompt>', "leading-zero"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "bad \\x escape"}}</interaction_prompt>', "bad-escape"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "a",}}</interaction_prompt>', "trailing-comma"),
        ('<interaction_prompt>first</interaction_prompt> and <interaction_prompt>second</interaction_prompt>', "first-call-wins"),
        ('<interaction_prompt>unclosed call <answer>42</answer>', "unclosed-call-is-final"),
        ('<think>done</think>\n<answer> Paris </answer>', "final-answer"),
        ('<think>done</think>\n<answer></answer>', "final-empty-answer"),
        ('<think>no answer here</think>', "final-no-answer"),
        ('<answer>a</answer><interaction_prompt>call wins</interaction_prompt>', "call-beats-answer"),
        ('</interaction_prompt><interaction_prompt>x</interaction_prompt>', "close-before-open"),
        ('<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "\\u00e9\\u0301"}}</interaction_prompt>', "combining"),
    ]
    return [{"name": name, "text": t, **parse_turn(t)} for t, name in texts]


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    questions = ["Who wrote Hamlet?", "", "Caf\u00e9 \u5317\u4eac \U0001F600 \"quoted\" \\ back", "line1\nline2\n\ttabbed",
                 "  spaced  "]
    strings = ["", "plain", "quote \" backslash \\ slash /", "\n\r\t\b\f", "\u0000\u0001\u001f\u007f\u0080",
               "caf\u00e9 \u5317\u4eac", "\U0001F600\U0001F468\u200d\U0001F469", "\u2028\u2029\ufeff", "<|im_end|>"]
    cut_cases = []
    for ans, n in [("short answer", 2048), ("abcdefghij", 10), ("abcdefghij", 9), ("abcdefghij", 0),
                   ("\U0001F600" * 5 + "tail", 3), ("e\u0301" * 4, 5), ("x" * 30 + " \"q\" \u00e9", 25),
                   ("Line one.\nLine two with \"quotes\".", 12)]:
        for mode in ["answer", "serializedResult"]:
            cut_cases.append({"answer": ans, "maxChars": n, "mode": mode, "injection": injection(ans, n, mode)})
    strip_cases = [" \t\n x y \r\n", "\u00a0\u3000x\u2003", "\u200bx\u200b", "\x1c\x1dx\x1e\x1f", "\x85x", "", "   "]
    norm_cases = ["The Cat!", "an apple a day", "A.B.C.", "  Hello,   World  ", "the_the", "\u00c9cole",
                  "\u039f\u0394\u03a5\u03a3\u03a3\u0395\u03a5\u03a3 \u03a3", "theatre then", "l'\u00e9t\u00e9", "Stra\u00dfe",
                  "\u0130I", "x\u00b2 the\u00b2", "a\u0301 b", "\u2160 the \u2160"]
    data = {
        "firstPrompt": [{"question": q, "rendered": first_prompt(q)} for q in questions],
        "toolJSON": json.dumps(TOOL),
        "upstreamSystemPrompt": UPSTREAM_SYSTEM,
        "dumps": [{"s": s, "dumps": json.dumps(s), "results": json.dumps({"results": [s]})} for s in strings],
        "injection": cut_cases,
        "strip": [{"s": s, "strip": s.strip(), "split": s.split()} for s in strip_cases],
        "normalize": [{"s": s, "normalized": normalize_answer(s)} for s in norm_cases],
        "parse": parse_cases(),
        "reward": reward_cases(),
    }
    text = json.dumps(data, indent=1, ensure_ascii=True)
    hashes = 1
    while ('"' + "#" * hashes) in text or ("\\" + "#" * hashes) in text:
        hashes += 1
    delim = "#" * hashes
    out = os.path.join(root, "Tests", "PromptR1Tests", "ReferenceCases.swift")
    with open(out, "w", encoding="ascii") as f:
        f.write("// Generated by scripts/reward_reference.py -- do not edit by hand.\n")
        f.write("// Reference values computed in plain Python (json, re, string) for the PromptR1 tests.\n\n")
        f.write("let referenceCasesJSON = " + delim + '"""\n' + text + '\n"""' + delim + "\n")
    print(f"wrote {out}: {len(data['reward'])} reward cases, {len(data['parse'])} parse cases, "
          f"{len(cut_cases)} injection cases")


if __name__ == "__main__":
    main()
