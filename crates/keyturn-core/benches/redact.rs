//! What scrubbing a relayed answer for the pool's keys costs: `keyturn serve` runs
//! `Scrubber::scrub_known` over every successful body. Measured against a plain `memchr`-class
//! search for one byte over the same body, the floor of any scan.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyturn_core::Scrubber;
use std::hint::black_box;

fn body(bytes: usize) -> Vec<u8> {
    let text = "The guest talked about rivers, dams and the long history of the valley. "
        .repeat(bytes / 72 + 1);
    format!(
        "{{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{}\"}}],\"role\":\"model\"}}}}],\"usageMetadata\":{{\"promptTokenCount\":812,\"candidatesTokenCount\":240}}}}",
        &text[..bytes]
    )
    .into_bytes()
}

fn scrub(c: &mut Criterion) {
    let secrets: Vec<String> = (0..100)
        .map(|i| format!("made-up-bench-key-{i:03}-xxxxxxxxxxxxxxxxxxxx"))
        .collect();
    let s = Scrubber::from_secrets(secrets.iter().map(String::as_str));
    let mut g = c.benchmark_group("scrub_known");
    for size in [2_000usize, 32_000] {
        let b = body(size);
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(format!("100 keys, {size} B body"), |x| {
            x.iter(|| black_box(s.scrub_known(black_box(&b))))
        });
        g.bench_function(format!("baseline: find one byte, {size} B body"), |x| {
            x.iter(|| black_box(black_box(&b).iter().position(|c| *c == 0)))
        });
    }
    g.finish();
}

criterion_group!(benches, scrub);
criterion_main!(benches);
