//! Three keys, one answer, rotation you can see.
//!
//! ```sh
//! cargo run --bin keyturn -- sim --port 8088 &        # or leave GEMINI_BASE_URL out for Google
//! GEMINI_BASE_URL=http://127.0.0.1:8088 GEMINI_API_KEYS=key-a,key-b,key-c \
//!   cargo run -p keyturn-llm --example generate
//! ```
//!
//! CI runs it against `keyturn sim` (`cargo xtask examples`).

#![allow(clippy::print_stdout)] // an example prints what it got

use std::collections::BTreeSet;

use keyturn_llm::{GeminiLlm, GenerateRequest, LlmService, StreamExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys =
        std::env::var("GEMINI_API_KEYS").map_err(|_| "set GEMINI_API_KEYS=key1,key2,key3")?;
    let llm = GeminiLlm::builder()
        .keys(keys.split(','))
        .base_url(std::env::var("GEMINI_BASE_URL").unwrap_or(keyturn_llm::DEFAULT_BASE_URL.into()))
        .build()?;

    let req = GenerateRequest::new("gemini-2.5-flash", "Name three rivers.").system("Be brief.");
    let mut served_by = BTreeSet::new();
    for _ in 0..3 {
        let out = llm.generate(&req).await?;
        println!("answer: {}", out.text.trim());
        served_by.extend(out.key);
    }
    // Round-robin: three calls, three keys (labelled by fingerprint, never by the secret).
    println!("keys used: {}", served_by.len());

    // The same answer as it is written, chunk by chunk.
    let mut chunks = llm.stream(&req).await?;
    let mut streamed = String::new();
    while let Some(chunk) = chunks.next().await {
        streamed.push_str(&chunk?.text);
    }
    println!("streamed: {} characters", streamed.len());
    Ok(())
}
