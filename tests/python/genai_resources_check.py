"""The official google-genai SDK, unmodified, on the Gemini surface that belongs to projects:
the Files API, cachedContents and Batch Mode.

Run by `cargo xtask sdk`, first straight against `keyturn sim` (a key of one project), then
through `keyturn serve` (a client token; the proxy rotates over keys of three projects and must
pin each resource to the project that created it). Arguments: the base URL, the API key or
token, the simulator's base URL (for its admin clock and stats), and optionally a key of
another project (direct runs: it must be refused the first key's files). `SDK_PARTS` (default
`files,caches,batches`) names the parts to run, for a proxy that serves only some of them.
Exits non-zero on any failure.
"""
import io
import datetime
import json
import math
import os
import struct
import sys
import time
import urllib.request
import wave

from google import genai
from google.genai import errors, types

base_url, api_key, sim_url = sys.argv[1], sys.argv[2], sys.argv[3]
other_key = sys.argv[4] if len(sys.argv) > 4 else None
MODEL = "gemini-2.5-flash"
PARTS = set(os.environ.get("SDK_PARTS", "files,caches,batches").split(","))


def admin(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{sim_url}{path}", data=data, method="POST" if data else "GET")
    req.add_header("content-type", "application/json")
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def small_pdf():
    """A one-page PDF with a line of text, built by hand (no PDF library needed)."""
    text = b"BT /F1 18 Tf 40 100 Td (The river Danube flows through Vienna.) Tj ET"
    objs = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(text) + text + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for i, o in enumerate(objs, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % i + o + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1))
    for off in offsets:
        out.write(b"%010d 00000 n \n" % off)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref))
    return out.getvalue()


def small_wav():
    """Half a second of a 440 Hz tone, 16 kHz mono."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * 440 * i / 16000))) for i in range(8000)))
    return out.getvalue()


client = genai.Client(api_key=api_key, http_options=types.HttpOptions(base_url=base_url))


def files_part():
    # --- Files: a PDF and an audio file, then a generation that refers to both.
    pdf, wav = small_pdf(), small_wav()
    f_pdf = client.files.upload(
        file=io.BytesIO(pdf), config=types.UploadFileConfig(mime_type="application/pdf", display_name="danube.pdf")
    )
    f_wav = client.files.upload(
        file=io.BytesIO(wav), config=types.UploadFileConfig(mime_type="audio/wav", display_name="tone.wav")
    )
    for f, data in ((f_pdf, pdf), (f_wav, wav)):
        assert f.name.startswith("files/"), f
        assert f.size_bytes == len(data), (f.size_bytes, len(data))
        assert f.state.name == "ACTIVE", f.state
        assert f.expiration_time - f.create_time == datetime.timedelta(hours=48), f
        got = client.files.get(name=f.name)
        assert got.name == f.name and got.mime_type == f.mime_type, got
    print(f"files.upload: {f_pdf.name} ({f_pdf.size_bytes} B, {f_pdf.mime_type}), {f_wav.name} ({f_wav.size_bytes} B, {f_wav.mime_type})")
    listed = {f.name for f in client.files.list(config={"page_size": 1})}
    assert {f_pdf.name, f_wav.name} <= listed, listed
    print(f"files.list (page size 1, paged through): {len(listed)} files")

    r = client.models.generate_content(model=MODEL, contents=[f_pdf, f_wav, "What do these two files contain?"])
    assert r.text, r
    print(f"generate_content with both files: {r.text[:60]!r}")

    if other_key:
        other = genai.Client(api_key=other_key, http_options=types.HttpOptions(base_url=base_url))
        try:
            other.models.generate_content(model=MODEL, contents=[f_pdf, "Summarise."])
            raise SystemExit("another project's key used the file")
        except errors.ClientError as e:
            assert e.code == 403 and e.status == "PERMISSION_DENIED", e
            print("another project's key and the file: 403 PERMISSION_DENIED")

    # Every request that named one of these files was made with a key of the project that owns it.
    uses = [u for u in admin("/admin/stats")["resources"]["uses"] if u["resource"] in (f_pdf.name, f_wav.name)]
    assert uses, "the simulator saw no request for the files"
    landed = [u for u in uses if u["owner"] == u["key_project"]]
    if other_key:
        strays = [u for u in uses if u["owner"] != u["key_project"]]
        assert all(u["route"] == "generateContent" for u in strays) and len(strays) == 1, strays
    else:
        assert landed == uses, [u for u in uses if u not in landed]
    owners = sorted({u["owner"] for u in landed})
    keys = sorted({u["key"] for u in landed})
    print(f"simulator stats: {len(landed)} requests for the files, all on their project {owners} (keys {keys})")

    client.files.delete(name=f_pdf.name)
    client.files.delete(name=f_wav.name)
    try:
        client.files.get(name=f_pdf.name)
        raise SystemExit("a deleted file was still served")
    except errors.ClientError as e:
        assert e.code == 403, e


def caches_part():
    # --- cachedContents: create (over the 1,024-token minimum), generate with it, update, delete.
    document = " ".join(f"Paragraph {i}: the Danube passes city number {i} on its way to the Black Sea." for i in range(120))
    cache = client.caches.create(
        model=MODEL,
        config=types.CreateCachedContentConfig(
            contents=[types.Content(role="user", parts=[types.Part(text=document)])],
            system_instruction="Answer from the document.",
            ttl="300s",
            display_name="danube",
        ),
    )
    assert cache.name.startswith("cachedContents/"), cache
    cached_tokens = cache.usage_metadata.total_token_count
    assert cached_tokens >= 1024, cache
    r = client.models.generate_content(
        model=MODEL, contents="Which sea does it reach?", config=types.GenerateContentConfig(cached_content=cache.name)
    )
    assert r.text and r.usage_metadata.cached_content_token_count == cached_tokens, r.usage_metadata
    print(f"caches.create: {cache.name}, {cached_tokens} tokens; generate_content with it: {r.usage_metadata.cached_content_token_count} cached tokens")
    updated = client.caches.update(name=cache.name, config=types.UpdateCachedContentConfig(ttl="600s"))
    assert updated.expire_time > cache.expire_time, (updated.expire_time, cache.expire_time)
    assert cache.name in {c.name for c in client.caches.list()}
    client.caches.delete(name=cache.name)
    print("caches.update (ttl), caches.list, caches.delete: ok")



def batches_part():
    # --- Batch Mode: inline requests, polled while the simulator's clock moves, results read.
    prompts = ["Name a river in Vienna.", "Name a bridge in London.", "Name a square in Rome."]
    job = client.batches.create(
        model=MODEL,
        src=[{"contents": [{"role": "user", "parts": [{"text": p}]}], "metadata": {"key": f"q{i}"}} for i, p in enumerate(prompts)],
        config={"display_name": "sdk batch"},
    )
    assert job.name.startswith("batches/"), job
    seen = [job.state.name]
    for _ in range(20):
        if job.done:
            break
        admin("/admin/advance", {"seconds": 30})
        job = client.batches.get(name=job.name)
        if job.state.name != seen[-1]:
            seen.append(job.state.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED", job.state
    assert seen[:1] == ["JOB_STATE_PENDING"] and "JOB_STATE_RUNNING" in seen, seen
    answers = job.dest.inlined_responses
    assert len(answers) == len(prompts), answers
    for i, (p, a) in enumerate(zip(prompts, answers)):
        assert a.metadata == {"key": f"q{i}"}, a.metadata
        direct = client.models.generate_content(model=MODEL, contents=p)
        assert a.response.text == direct.text, (a.response.text, direct.text)
    print(f"batches.create (inline, {len(prompts)} requests): {' -> '.join(seen)}; each result equals the interactive answer")
    assert job.name in {j.name for j in client.batches.list()}
    client.batches.delete(name=job.name)



for name, part in (("files", files_part), ("caches", caches_part), ("batches", batches_part)):
    if name in PARTS:
        part()
print(f"google-genai {', '.join(n for n in ('files', 'caches', 'batches') if n in PARTS)}: all checks passed")
