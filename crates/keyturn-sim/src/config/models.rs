//! The models the simulator serves by default, with Google's free-tier limits.

use super::Limits;

/// A model the simulator serves, with its defaults.
#[derive(Debug, Clone, Copy)]
pub struct ServedModel {
    /// Id.
    pub name: &'static str,
    /// Embedding model (serves embedContent, not generateContent).
    pub embedding: bool,
    /// Default limits: Google's free tier as of December 2025 (limit 0 where there is none).
    pub limits: Limits,
    /// Input token limit advertised by `GET models`.
    pub input_token_limit: u64,
    /// Output token limit advertised.
    pub output_token_limit: u64,
    /// Whether it reports thinking tokens.
    pub thinking: bool,
}

/// Models the simulator serves by default.
pub const SERVED_MODELS: &[ServedModel] = &[
    ServedModel {
        name: "gemini-3-pro-preview",
        embedding: false,
        limits: Limits::new(0, 0, 0),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: true,
    },
    ServedModel {
        name: "gemini-3-flash-preview",
        embedding: false,
        limits: Limits::new(5, 250_000, 20),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: true,
    },
    ServedModel {
        name: "gemini-2.5-pro",
        embedding: false,
        // No free tier since December 2025: limit 0 on every quota (corpus real-06).
        limits: Limits::new(0, 0, 0),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: true,
    },
    ServedModel {
        name: "gemini-2.5-flash",
        embedding: false,
        limits: Limits::new(5, 250_000, 20),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: true,
    },
    ServedModel {
        name: "gemini-2.5-flash-lite",
        embedding: false,
        limits: Limits::new(10, 250_000, 20),
        input_token_limit: 1_048_576,
        output_token_limit: 65_536,
        thinking: false,
    },
    ServedModel {
        name: "gemini-2.0-flash",
        embedding: false,
        // No free tier: limit 0 (corpus real-05).
        limits: Limits::new(0, 0, 0),
        input_token_limit: 1_048_576,
        output_token_limit: 8_192,
        thinking: false,
    },
    ServedModel {
        name: "gemini-2.0-flash-lite",
        embedding: false,
        limits: Limits::new(30, 1_000_000, 200),
        input_token_limit: 1_048_576,
        output_token_limit: 8_192,
        thinking: false,
    },
    ServedModel {
        name: "gemini-embedding-001",
        embedding: true,
        limits: Limits::new(100, 30_000, 1_000),
        input_token_limit: 2_048,
        output_token_limit: 1,
        thinking: false,
    },
    ServedModel {
        name: "gemini-embedding-2",
        embedding: true,
        // Free RPM 100 is the server's own quotaValue (corpus real-14); the token and daily
        // limits are not published, so they follow gemini-embedding-001.
        limits: Limits::new(100, 30_000, 1_000),
        input_token_limit: 2_048,
        output_token_limit: 1,
        thinking: false,
    },
];
