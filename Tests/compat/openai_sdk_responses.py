"""The official openai SDK's Responses API (client.responses.create) against the gateway:
a passthrough route and a collaboration route, stream and not, input as a string and as a
message list.

Usage: GATEWAY_BASE_URL=http://127.0.0.1:PORT/v1 python3 openai_sdk_responses.py "question"
Prints a JSON object; GatewayServerTests/ResponsesAPITests.swift checks it.
"""
import json
import os
import sys

import openai

client = openai.OpenAI(base_url=os.environ["GATEWAY_BASE_URL"], api_key="unused", max_retries=0)
question = sys.argv[1]
seen = {}


def streamed(**kwargs):
    text, types, final = "", [], None
    for event in client.responses.create(stream=True, **kwargs):
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
        if event.type == "response.completed":
            final = event.response
    return text, types, final


r = client.responses.create(model="gpt-4o-mini", input="hello responses")
seen["passthrough"] = r.output_text
text, types, _ = streamed(model="gpt-4o-mini", input=[{"role": "user", "content": "stream responses"}])
seen["passthrough_stream"] = text
seen["passthrough_stream_last"] = types[-1]

r = client.responses.create(model="prompt-r1/gpt-4o-mini", input=question)
seen["collab"] = r.output_text
seen["collab_status"] = r.status
seen["collab_usage_total"] = r.usage.total_tokens
r = client.responses.create(model="prompt-r1/gpt-4o-mini", instructions="Answer briefly.",
                            input=[{"role": "user", "content": [{"type": "input_text", "text": question}]}])
seen["collab_list"] = r.output_text
text, types, final = streamed(model="prompt-r1/gpt-4o-mini", input=question)
seen["collab_stream"] = text
seen["collab_stream_types"] = types
seen["collab_stream_final"] = final.output_text if final else None
print(json.dumps(seen))
