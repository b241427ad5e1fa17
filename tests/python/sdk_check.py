"""The official google-genai SDK, unmodified, against `keyturn serve`.

Run by `cargo xtask sdk` (which starts the simulator and the proxy). Arguments: the proxy's base
URL and a client token. Exits non-zero on any failure.
"""
import sys

from google import genai
from google.genai import types

base_url, token = sys.argv[1], sys.argv[2]

for version in ("v1beta", "v1"):
    client = genai.Client(
        api_key=token,
        http_options=types.HttpOptions(base_url=base_url, api_version=version),
    )
    r = client.models.generate_content(
        model="gemini-2.5-flash",
        contents="Name a river that flows through Vienna.",
        config=types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=64),
    )
    assert r.text, r
    assert r.usage_metadata.prompt_token_count > 0, r.usage_metadata
    print(f"{version} generate_content: {r.text[:60]!r}")

    chunks = list(
        client.models.generate_content_stream(
            model="gemini-2.5-flash", contents="Tell me about the Thames."
        )
    )
    assert len(chunks) >= 2, chunks
    print(f"{version} generate_content_stream: {len(chunks)} chunks")

    e = client.models.embed_content(
        model="gemini-embedding-001",
        contents=["first text", "second text"],
        config=types.EmbedContentConfig(output_dimensionality=8),
    )
    assert len(e.embeddings) == 2 and len(e.embeddings[0].values) == 8, e
    print(f"{version} embed_content: {len(e.embeddings)} embeddings")

    n = client.models.count_tokens(model="gemini-2.5-flash", contents="abcdefgh")
    assert n.total_tokens == 2, n
    print(f"{version} count_tokens: {n.total_tokens}")

bad = genai.Client(api_key="kt_wrong", http_options=types.HttpOptions(base_url=base_url))
try:
    bad.models.generate_content(model="gemini-2.5-flash", contents="x")
    raise SystemExit("a wrong token was accepted")
except genai.errors.ClientError as err:
    assert err.code == 401, err
    print("wrong token: 401")
print("google-genai SDK: all checks passed")
