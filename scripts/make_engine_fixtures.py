#!/usr/bin/env python3
"""Writes Tests/Fixtures/engines/{vllm,sglang}-*.json and reload.json: request/response pairs for
the vLLM and SGLang adapters, which CI cannot run (they need a GPU).

Each pair has the shape the engine's documentation gives (field names, nesting, types):
  vLLM   POST /v1/completions: OpenAI completions with a token-id `prompt`, `logprobs`,
         `return_token_ids` (choices[].token_ids, choices[].prompt_token_ids), vLLM's sampling
         extras (`stop_token_ids`, `include_stop_str_in_output`, `skip_special_tokens`, `top_k`).
  SGLang POST /generate: `input_ids`, `sampling_params`, `return_logprob`, `logprob_start_len`,
         `top_logprobs_num`; response `text`, `output_ids`, `meta_info.finish_reason`,
         `meta_info.output_token_logprobs` as [logprob, token_id, null] triples.
The token ids and log-probs are those of the tiny protocol policy's first reference episode
(reference/promptr1-tiny-episodes.json, case 0), so the adapters' output can be checked against
the embedded engine's turns, token for token. The sources are cited in docs/remote-policy.md.
"""
import json, pathlib, sys

root = pathlib.Path(__file__).resolve().parent.parent
ref = json.loads((root / "Tests/Fixtures/reference/promptr1-tiny-episodes.json").read_text())
case = ref["cases"][0]
tok = json.loads((root / "Tests/Fixtures/models/promptr1-tiny/tokenizer.json").read_text())
id_to_token = {v: k for k, v in tok["model"]["vocab"].items()}
for a in tok["added_tokens"]:
    id_to_token[a["id"]] = a["content"]
STOP = ["</interaction_prompt>"]
STOP_IDS = [1000, 1002]
out = root / "Tests/Fixtures/engines"
out.mkdir(exist_ok=True)

contexts = [case["prompt_ids"]]
contexts.append(contexts[0] + case["turns"][0]["ids"] + case["injections"][0]["ids"])

def dump(name, obj):
    (out / name).write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n")

for k, turn in enumerate(case["turns"][:2]):
    ctx = contexts[k]
    ids, lps, text = turn["ids"], turn["logprobs"], turn["text"]
    ends_eot = ids[-1] in STOP_IDS
    # vLLM
    req = {"model": "agent", "prompt": ctx, "max_tokens": 200, "temperature": 0, "top_p": 1, "top_k": -1,
           "logprobs": 1, "stop": STOP, "stop_token_ids": STOP_IDS, "include_stop_str_in_output": True,
           "skip_special_tokens": False, "spaces_between_special_tokens": False, "return_token_ids": True,
           "stream": False}
    pieces = [id_to_token.get(i, "") for i in ids]
    offs, o = [], 0
    for p in pieces:
        offs.append(o); o += len(p)
    resp = {"id": "cmpl-0f3c", "object": "text_completion", "created": 1760000000, "model": "agent",
            "choices": [{"index": 0, "text": text,
                         "logprobs": {"text_offset": offs, "token_logprobs": lps, "tokens": pieces,
                                      "top_logprobs": [{p: l} for p, l in zip(pieces, lps)]},
                         "finish_reason": "stop", "stop_reason": (ids[-1] if ends_eot else STOP[0]),
                         "prompt_logprobs": None, "prompt_token_ids": ctx, "token_ids": ids}],
            "usage": {"prompt_tokens": len(ctx), "total_tokens": len(ctx) + len(ids), "completion_tokens": len(ids),
                      "prompt_tokens_details": {"cached_tokens": 0 if k == 0 else len(contexts[0]) // 16 * 16}}}
    dump(f"vllm-turn{k + 1}.json", {"engine": "vllm", "path": "/v1/completions", "request": req, "response": resp,
                                    "expected": {"ids": ids, "logprobs": lps, "text": text}})
    # SGLang
    req = {"input_ids": ctx, "sampling_params": {"max_new_tokens": 200, "temperature": 0, "top_p": 1, "top_k": -1,
                                                  "stop": STOP, "stop_token_ids": STOP_IDS, "no_stop_trim": True,
                                                  "skip_special_tokens": False},
           "return_logprob": True, "logprob_start_len": -1, "top_logprobs_num": 0, "stream": False}
    finish = {"type": "stop", "matched": ids[-1] if ends_eot else STOP[0]}
    resp = {"text": text, "output_ids": ids,
            "meta_info": {"id": "4f9d1c", "finish_reason": finish, "prompt_tokens": len(ctx),
                          "completion_tokens": len(ids), "cached_tokens": 0 if k == 0 else len(contexts[0]),
                          "input_token_logprobs": [], "output_token_logprobs": [[l, i, None] for i, l in zip(ids, lps)],
                          "e2e_latency": 0.118}}
    dump(f"sglang-turn{k + 1}.json", {"engine": "sglang", "path": "/generate", "request": req, "response": resp,
                                      "expected": {"ids": ids, "logprobs": lps, "text": text}})

# In-place reloads: the engines' documented examples, verbatim where the documentation gives
# them (request bodies, success bodies), in the documented shape where it names only the fields.
VLLM_LORA_DOC = "https://docs.vllm.ai/en/latest/features/lora/"
SGLANG_RL_DOC = "https://docs.sglang.io/advanced_features/sglang_for_rl.html"
SGLANG_NATIVE_DOC = "https://docs.sglang.io/basic_usage/native_api.html"
reload = {
    "vllm": {
        "load": {"source": VLLM_LORA_DOC, "method": "POST", "path": "/v1/load_lora_adapter",
                 "request": {"lora_name": "sql_adapter", "lora_path": "/path/to/sql-lora-adapter"},
                 "status": 200, "content_type": "text/plain",
                 "response": "Success: LoRA adapter 'sql_adapter' added successfully"},
        "unload": {"source": VLLM_LORA_DOC, "method": "POST", "path": "/v1/unload_lora_adapter",
                   "request": {"lora_name": "sql_adapter"},
                   "status": 200, "content_type": "text/plain",
                   "response": "Success: LoRA adapter 'sql_adapter' removed successfully"},
        # "If an error occurs, such as if the adapter cannot be found or loaded, an appropriate
        # error message will be returned": vLLM's ErrorResponse object with the HTTP status.
        "load_failed": {"source": VLLM_LORA_DOC, "method": "POST", "path": "/v1/load_lora_adapter",
                        "request": {"lora_name": "sql_adapter", "lora_path": "/path/to/missing-adapter"},
                        "status": 404, "content_type": "application/json",
                        "response": {"error": {"message": "Loading lora sql_adapter failed: No adapter found for /path/to/missing-adapter",
                                               "type": "NotFoundError", "param": None, "code": 404}}},
        # "Upon querying the /models endpoint, we should see our LoRA along with its base model".
        "models": {"source": VLLM_LORA_DOC, "method": "GET", "path": "/v1/models", "status": 200,
                   "content_type": "application/json",
                   "response": {"object": "list", "data": [
                       {"id": "meta-llama/Llama-2-7b-hf", "object": "model", "created": 1715644056, "owned_by": "vllm",
                        "root": "~/.cache/huggingface/hub/models--meta-llama--Llama-2-7b-hf/snapshots/01c7f73d771dfac7d292323805ebc428287df4f9/",
                        "parent": None},
                       {"id": "sql-lora", "object": "model", "created": 1715644056, "owned_by": "vllm",
                        "root": "~/.cache/huggingface/hub/models--yard1--llama-2-7b-sql-lora-test/snapshots/0dfa347e8877a4d4ed19ee56c140fa518470028c/",
                        "parent": "meta-llama/Llama-2-7b-hf"}]}},
    },
    "sglang": {
        "update": {"source": SGLANG_NATIVE_DOC, "method": "POST", "path": "/update_weights_from_disk",
                   "request": {"model_path": "qwen/qwen2.5-0.5b-instruct"},
                   "status": 200, "content_type": "application/json",
                   "response": {"success": True, "message": "Succeeded to update model weights.", "num_paused_requests": 0}},
        "update_failed": {"source": SGLANG_NATIVE_DOC, "method": "POST", "path": "/update_weights_from_disk",
                          "request": {"model_path": "qwen/qwen2.5-0.5b-instruct-wrong"},
                          "status": 400, "content_type": "application/json",
                          "response": {"success": False,
                                       "message": "Failed to get weights iterator: qwen/qwen2.5-0.5b-instruct-wrong (repository not found).",
                                       "num_paused_requests": 0}},
        "model_info": {"source": SGLANG_NATIVE_DOC, "method": "GET", "path": "/get_model_info", "status": 200,
                       "content_type": "application/json",
                       "response": {"model_path": "qwen/qwen2.5-0.5b-instruct", "tokenizer_path": "qwen/qwen2.5-0.5b-instruct",
                                    "is_generation": True, "preferred_sampling_params": None, "weight_version": "default",
                                    "has_image_understanding": False, "has_audio_understanding": False}},
    },
}
dump("reload.json", reload)
print("wrote", sorted(p.name for p in out.iterdir()))
