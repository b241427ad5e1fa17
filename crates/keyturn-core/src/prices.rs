//! What Gemini charges per token, for estimates (`keyturn plan`), and the Batch API's own
//! per-project limits (`keyturn seed --batch`). Dated like the limit table: Google changes
//! prices and limits, and a price here is an estimate, never a bill.
//!
//! Source: Google's pricing page, <https://ai.google.dev/gemini-api/docs/pricing> (paid tier,
//! "Standard", text input, prompts up to 200k tokens; output prices include thinking tokens).
//! The figures are those the page listed in March 2026, as copies of it dated then show
//! (e.g. <https://deploybase.ai/articles/gemini-api-pricing-2026>, 2026-01-08, "as of March
//! 2026"); they were not re-read from the live page on [`PRICE_TABLE_DATE`]'s day. The Batch
//! API charges half of the interactive price (the same page, "Batch" rows).

use serde::Serialize;

use crate::limits::normalize_model;

/// When the price table was written (each figure's source is above).
pub const PRICE_TABLE_DATE: &str = "2026-03-01";

/// The Batch API's share of the interactive price.
pub const BATCH_DISCOUNT: f64 = 0.5;

/// One model's price, in US dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Price {
    /// Model id.
    pub model: &'static str,
    /// Input tokens.
    pub input_usd_per_million: f64,
    /// Output tokens (thinking included).
    pub output_usd_per_million: f64,
}

impl Price {
    /// The interactive cost of these many input and output tokens.
    pub fn cost(&self, input_tokens: f64, output_tokens: f64) -> f64 {
        (input_tokens * self.input_usd_per_million + output_tokens * self.output_usd_per_million)
            / 1_000_000.0
    }
}

/// The table: paid tier, standard (interactive) prices.
pub const PRICES: &[Price] = &[
    Price {
        model: "gemini-2.5-pro",
        input_usd_per_million: 1.25,
        output_usd_per_million: 10.0,
    },
    Price {
        model: "gemini-2.5-flash",
        input_usd_per_million: 0.30,
        output_usd_per_million: 2.50,
    },
    Price {
        model: "gemini-2.5-flash-lite",
        input_usd_per_million: 0.10,
        output_usd_per_million: 0.40,
    },
    Price {
        model: "gemini-2.0-flash",
        input_usd_per_million: 0.10,
        output_usd_per_million: 0.40,
    },
    Price {
        model: "gemini-2.0-flash-lite",
        input_usd_per_million: 0.075,
        output_usd_per_million: 0.30,
    },
    Price {
        model: "gemini-embedding-001",
        input_usd_per_million: 0.15,
        output_usd_per_million: 0.0,
    },
];

/// The price of a model (`models/` prefix allowed), if the table has it.
pub fn price_of(model: &str) -> Option<&'static Price> {
    let m = normalize_model(model);
    PRICES.iter().find(|p| p.model == m)
}

/// When the batch limit table below was written.
pub const BATCH_LIMITS_DATE: &str = "2026-12-01";

/// Batch jobs a project may have pending or running at once, on every tier: "Concurrent batch
/// requests: 100" (<https://ai.google.dev/gemini-api/docs/rate-limits>, "Batch API").
pub const BATCH_CONCURRENT_JOBS: u64 = 100;

/// One model's documented cap on the input tokens of a project's pending and running batch
/// jobs ("Batch Enqueued Tokens"), for a Tier 1 project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchLimit {
    /// Model id.
    pub model: &'static str,
    /// Input tokens enqueued at once, per project.
    pub enqueued_tokens: u64,
}

/// The Tier 1 enqueued-token caps. Source: the same rate-limits page, "Batch API" table, Tier 1
/// row for Gemini 2.5 Flash, as the simulator's default cites it; it was not re-read from the
/// live page on [`BATCH_LIMITS_DATE`] (written without network), so only that one figure is
/// here. A model not listed has no built-in cap: keyturn learns it from the first refusal that
/// states it.
pub const BATCH_ENQUEUED_TOKENS_TIER1: &[BatchLimit] = &[BatchLimit {
    model: "gemini-2.5-flash",
    enqueued_tokens: 3_000_000,
}];

/// A model's documented Tier 1 enqueued-token cap (`models/` prefix allowed), if the table has
/// it.
pub fn batch_enqueued_tokens_of(model: &str) -> Option<u64> {
    let m = normalize_model(model);
    BATCH_ENQUEUED_TOKENS_TIER1
        .iter()
        .find(|l| l.model == m)
        .map(|l| l.enqueued_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_million_flash_input_tokens_cost_thirty_cents() {
        let p = price_of("models/gemini-2.5-flash").unwrap();
        assert!((p.cost(1_000_000.0, 0.0) - 0.30).abs() < 1e-12);
        assert!(price_of("no-such-model").is_none());
    }

    #[test]
    fn flash_has_a_tier_1_enqueued_token_cap_and_an_unknown_model_none() {
        assert_eq!(
            batch_enqueued_tokens_of("models/gemini-2.5-flash"),
            Some(3_000_000)
        );
        assert_eq!(batch_enqueued_tokens_of("no-such-model"), None);
    }
}
