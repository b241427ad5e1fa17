"""LiteLLM, unmodified from PyPI, with `openai/<model>` pointed at `keyturn serve`'s
OpenAI-compatible base URL (`{proxy}/v1beta/openai/`): one completion, one stream.

Run by `cargo xtask sdk`. Arguments: the proxy's base URL and a client token.
Exits non-zero on any failure.
"""
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network for the cost map

import litellm  # noqa: E402

base_url, token = sys.argv[1], sys.argv[2]
api_base = f"{base_url}/v1beta/openai/"

r = litellm.completion(
    model="openai/gemini-2.5-flash",
    api_base=api_base,
    api_key=token,
    messages=[{"role": "user", "content": "Name a river that flows through Vienna."}],
)
text = r.choices[0].message.content
assert text, r
assert r.usage.prompt_tokens > 0, r.usage
print(f"litellm.completion: {text[:60]!r}, {r.usage.prompt_tokens} prompt tokens")

pieces = []
for chunk in litellm.completion(
    model="openai/gemini-2.5-flash",
    api_base=api_base,
    api_key=token,
    messages=[{"role": "user", "content": "Tell me about the Thames."}],
    stream=True,
):
    delta = chunk.choices[0].delta.content if chunk.choices else None
    if delta:
        pieces.append(delta)
assert len(pieces) >= 2 and "".join(pieces), pieces
print(f"litellm.completion(stream=True): {len(pieces)} pieces, {''.join(pieces)[:40]!r}")
print("LiteLLM: all checks passed")
