//! Three keys, a hundred and fifty texts, two batches, vectors in order.
//!
//! ```sh
//! cargo run --bin keyturn -- sim --port 8088 &        # or leave GEMINI_BASE_URL out for Google
//! GEMINI_BASE_URL=http://127.0.0.1:8088 GEMINI_API_KEYS=key-a,key-b,key-c \
//!   cargo run -p keyturn-embeddings --example embed
//! ```
//!
//! CI runs it against `keyturn sim` (`cargo xtask examples`).

#![allow(clippy::print_stdout)] // an example prints what it got

use keyturn_embeddings::{EmbedOptions, EmbeddingsService, GeminiEmbeddings};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let keys =
        std::env::var("GEMINI_API_KEYS").map_err(|_| "set GEMINI_API_KEYS=key1,key2,key3")?;
    let emb = GeminiEmbeddings::builder()
        .keys(keys.split(','))
        .base_url(
            std::env::var("GEMINI_BASE_URL").unwrap_or(keyturn_embeddings::DEFAULT_BASE_URL.into()),
        )
        .build()?;

    let opts = EmbedOptions::new("gemini-embedding-001").dimensions(768);
    let one = emb.embed("a single text", &opts).await?;
    println!("one text: {} dimensions", one.len());

    let texts: Vec<String> = (0..150).map(|i| format!("text number {i}")).collect();
    let vectors = emb.embed_many(&texts, &opts).await?;
    println!(
        "{} texts: {} vectors of {} dimensions",
        texts.len(),
        vectors.len(),
        vectors[0].len()
    );
    Ok(())
}
