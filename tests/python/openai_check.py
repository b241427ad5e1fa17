"""The official `openai` Python SDK, unmodified, against `keyturn serve`'s OpenAI-compatible
routes (base URL `{proxy}/v1beta/openai/`, the client token as the API key).

Run by `cargo xtask sdk` (which starts the simulator and the proxy). Arguments: the proxy's base
URL and a client token. Exits non-zero on any failure.
"""
import json
import sys

import openai
from openai import OpenAI

base_url, token = sys.argv[1], sys.argv[2]
client = OpenAI(api_key=token, base_url=f"{base_url}/v1beta/openai/", max_retries=0)

r = client.chat.completions.create(
    model="gemini-2.5-flash",
    messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a river that flows through Vienna."},
    ],
)
assert r.choices[0].message.content, r
assert r.usage.prompt_tokens > 0, r.usage
print(f"chat.completions.create: {r.choices[0].message.content[:60]!r}, {r.usage.prompt_tokens} prompt tokens")

chunks = list(
    client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "Tell me about the Thames."}],
        stream=True,
    )
)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert len(chunks) >= 2 and text, chunks
assert all(c.usage is None for c in chunks), "usage the client did not ask for"
print(f"chat.completions.create(stream=True): {len(chunks)} chunks")

chunks = list(
    client.chat.completions.create(
        model="gemini-2.5-flash",
        messages=[{"role": "user", "content": "Tell me about the Danube."}],
        stream=True,
        stream_options={"include_usage": True},
    )
)
usage = [c.usage for c in chunks if c.usage is not None]
assert len(usage) == 1 and usage[0].prompt_tokens > 0, chunks
print(f"chat.completions.create(stream=True, include_usage): usage {usage[0].prompt_tokens} prompt tokens")

r = client.chat.completions.create(
    model="gemini-2.5-flash",
    messages=[{"role": "user", "content": "What is the weather in Lisbon?"}],
    tools=[
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        }
    ],
)
call = r.choices[0].message.tool_calls[0]
assert call.function.name == "get_weather", r
assert "city" in json.loads(call.function.arguments), call
print(f"chat.completions.create(tools): {call.function.name}({call.function.arguments})")

e = client.embeddings.create(
    model="gemini-embedding-001", input=["first text", "second text"], dimensions=8
)
assert len(e.data) == 2 and len(e.data[0].embedding) == 8, e
print(f"embeddings.create: {len(e.data)} embeddings of {len(e.data[0].embedding)}")

models = [m.id for m in client.models.list()]
assert "models/gemini-2.5-flash" in models, models
print(f"models.list: {len(models)} models")

bad = OpenAI(api_key="kt_wrong", base_url=f"{base_url}/v1beta/openai/", max_retries=0)
try:
    bad.chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "x"}]
    )
    raise SystemExit("a wrong token was accepted")
except openai.AuthenticationError as err:
    assert err.status_code == 401, err
    print("wrong token: 401 AuthenticationError")
print("openai SDK: all checks passed")
