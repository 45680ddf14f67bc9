"""Drives a running gateway with the official `openai` Python SDK.

Usage: GATEWAY_BASE_URL=http://127.0.0.1:PORT/v1 python3 openai_sdk_check.py [model]
Prints one JSON object with what it saw; exits non-zero on the first failed expectation.
The Swift test GatewayServerTests/OpenAISDKTests.swift runs it against a live gateway.
"""
import json
import os
import sys

import openai

base = os.environ["GATEWAY_BASE_URL"]
model = sys.argv[1] if len(sys.argv) > 1 else "gpt-4o-mini"
client = openai.OpenAI(base_url=base, api_key=os.environ.get("GATEWAY_KEY", "test-key"), max_retries=0)
seen = {}

# Non-stream: a typed ChatCompletion comes back.
r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hello sdk"}])
assert r.object == "chat.completion", r
seen["non_stream"] = r.choices[0].message.content
seen["usage"] = r.usage.total_tokens if r.usage else None

# Raw response: the gateway's headers are visible.
raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
seen["episode_header"] = raw.headers.get("x-gateway-episode-id")
assert seen["episode_header"], "x-gateway-episode-id missing"

# Stream with include_usage: content deltas, then a usage-only chunk.
text, usage, chunks = "", None, 0
stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "stream please"}],
                                        stream=True, stream_options={"include_usage": True})
for chunk in stream:
    chunks += 1
    if chunk.usage:
        usage = chunk.usage.total_tokens
    for c in chunk.choices:
        if c.delta and c.delta.content:
            text += c.delta.content
seen["stream"] = text
seen["stream_usage"] = usage
seen["stream_chunks"] = chunks
assert usage is not None, "no usage chunk"

# Errors surface as the SDK's own exception classes.
try:
    client.chat.completions.create(model=model, messages=[{"role": "wizard", "content": "x"}])
    raise AssertionError("invalid role accepted")
except openai.BadRequestError as e:
    seen["bad_request"] = [e.status_code, e.body.get("param") if isinstance(e.body, dict) else None]

try:
    openai.OpenAI(base_url=base, api_key="wrong-key", max_retries=0).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "x"}])
    seen["auth"] = "accepted"
except openai.AuthenticationError as e:
    seen["auth"] = e.status_code

models = [m.id for m in client.models.list()]
seen["models"] = models
print(json.dumps(seen))
