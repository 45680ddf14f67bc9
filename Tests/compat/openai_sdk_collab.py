"""The official openai SDK against a collaboration route (prompt-r1/<model>).

Usage: GATEWAY_BASE_URL=http://127.0.0.1:PORT/v1 python3 openai_sdk_collab.py "question"
Prints a JSON object; GatewayServerTests/CollaborationTests.swift checks it.
"""
import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["GATEWAY_BASE_URL"], api_key="unused", max_retries=0)
question = sys.argv[1]
seen = {}
r = client.chat.completions.create(model="prompt-r1/gpt-4o-mini", messages=[{"role": "user", "content": question}])
seen["content"] = r.choices[0].message.content
seen["finish_reason"] = r.choices[0].finish_reason
seen["usage_total"] = r.usage.total_tokens
extra = r.choices[0].message.model_extra or {}
seen["has_reasoning"] = "reasoning_content" in extra

text, reasoning = "", ""
stream = client.chat.completions.create(model="prompt-r1/gpt-4o-mini", stream=True,
                                        messages=[{"role": "user", "content": question}],
                                        extra_headers={"x-gateway-trace": "1"})
for chunk in stream:
    for c in chunk.choices:
        if c.delta.content:
            text += c.delta.content
        rc = (c.delta.model_extra or {}).get("reasoning_content")
        if rc:
            reasoning += rc
seen["stream_content"] = text
seen["stream_reasoning_len"] = len(reasoning)
print(json.dumps(seen))
