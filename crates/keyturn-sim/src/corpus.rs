//! Error bodies the real Gemini API sent to real users, compiled in from
//! `data/gemini-errors/bodies.json` (each entry names its source; the README there says what
//! each `expect` word means). The simulator answers with them verbatim, after putting the
//! request's own model, project and key label where the body names them.
//!
//! The copy under this crate must stay byte-equal to keyturn-gemini's test copy
//! (`tests/corpus.rs` checks it), so the simulator and the classifier's tests read the same facts.

use std::net::IpAddr;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::errors::ApiError;

/// The corpus file as compiled in.
pub const BODIES_JSON: &str = include_str!("../data/gemini-errors/bodies.json");

/// The id of the one shape that is not in the corpus: the older Cloud-quota 429 with a zero
/// quota for the whole API (`ApiRequestsPerMinutePerProjectPerRegion`), built on `real-10`'s
/// envelope, which carries the per-method limit.
pub const API_LIMIT_ZERO: &str = "api-limit-zero";

/// One error shape.
#[derive(Debug, Clone, Deserialize)]
pub struct Shape {
    /// `real-NN`, or [`API_LIMIT_ZERO`].
    pub id: String,
    /// Where it was seen.
    #[serde(default)]
    pub source: String,
    /// HTTP status.
    pub status: u16,
    /// The body, with the corpus's placeholders (`[key]`, `[project]`, `[ip]`).
    pub body: Value,
    /// What a client must do with it (the corpus README's word).
    pub expect: String,
}

/// Where the real service sends a shape when nothing narrower is said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// Every route, `GET models…` included: the refusal is about the key or the project, so a
    /// cost-free probe with that key is refused the same way.
    Everywhere,
    /// Only calls that spend quota (generate, stream, embed, batch embed): a probe answers.
    Calls,
}

impl Shape {
    /// Where the real service sends it: key and project refusals everywhere, the rest only on
    /// calls.
    pub fn reach(&self) -> Reach {
        let e = self.expect.as_str();
        if e.starts_with("key-dead")
            || e.starts_with("project-dead")
            || e.starts_with("probe-then-decide:key-dead")
            || self.id == API_LIMIT_ZERO
        {
            Reach::Everywhere
        } else {
            Reach::Calls
        }
    }
}

/// Every shape: the corpus in its order, then [`API_LIMIT_ZERO`]. Empty only if the compiled-in
/// corpus does not parse, which a test rules out.
pub fn shapes() -> &'static [Shape] {
    static SHAPES: OnceLock<Vec<Shape>> = OnceLock::new();
    SHAPES.get_or_init(|| {
        let mut v: Vec<Shape> = serde_json::from_str(BODIES_JSON).unwrap_or_default();
        v.push(api_limit_zero());
        v
    })
}

/// The shape with this id.
pub fn shape(id: &str) -> Option<&'static Shape> {
    shapes().iter().find(|s| s.id == id)
}

fn api_limit_zero() -> Shape {
    Shape {
        id: API_LIMIT_ZERO.to_owned(),
        source: "derived from real-10: the same envelope with the whole API's quota".to_owned(),
        status: 429,
        body: json!({"error": {
            "code": 429,
            "message": "Quota exceeded for quota metric 'API requests' and limit 'API requests per minute per region' of service 'generativelanguage.googleapis.com' for consumer '[project]'.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "RATE_LIMIT_EXCEEDED",
                    "domain": "googleapis.com",
                    "metadata": {
                        "quota_metric": "generativelanguage.googleapis.com/api_requests",
                        "service": "generativelanguage.googleapis.com",
                        "quota_limit_value": "0",
                        "quota_limit": "ApiRequestsPerMinutePerProjectPerRegion",
                        "quota_location": "us-south1",
                        "quota_unit": "1/min/{project}/{region}",
                        "consumer": "[project]"
                    }
                },
                {
                    "@type": "type.googleapis.com/google.rpc.Help",
                    "links": [{
                        "description": "Request a higher quota limit.",
                        "url": "https://cloud.google.com/docs/quotas/help/request_increase"
                    }]
                }
            ]
        }}),
        expect: "project-off".to_owned(),
    }
}

/// What to put where a body names the request's particulars.
#[derive(Debug, Clone, Copy, Default)]
pub struct Names<'a> {
    /// The model the request named (none for `GET models`: the body keeps its own).
    pub model: Option<&'a str>,
    /// The key's project, for `[project]` (and the redacted `[project id hidden]`).
    pub project: Option<&'a str>,
    /// The key's label, for `[key]`. Never the key itself.
    pub key_label: Option<&'a str>,
    /// The caller's address, for `[ip]`.
    pub caller_ip: Option<IpAddr>,
    /// The file the request referred to, for `real-32`'s redacted file name.
    pub file: Option<&'a str>,
}

/// The shape's status and body for one request. An unknown id is a simulator bug, answered with
/// a 500 that says so (tests check every id the simulator itself uses).
pub fn render(id: &str, names: &Names<'_>) -> ApiError {
    let Some(s) = shape(id) else {
        return ApiError {
            status: 500,
            body: json!({"error": {"code": 500, "status": "INTERNAL",
                "message": format!("keyturn-sim has no error shape {id}")}}),
        };
    };
    let mut models = Vec::new();
    named_models(&s.body, &mut models);
    // Longest first, so a name that contains another is replaced whole.
    models.sort_by_key(|m| std::cmp::Reverse(m.len()));
    models.dedup();
    let ip = names.caller_ip.map(|ip| ip.to_string());
    let mut body = s.body.clone();
    substitute(&mut body, &|text: &str| {
        let mut t = text.to_owned();
        if let Some(label) = names.key_label {
            t = t.replace("[key]", label);
        }
        if let Some(p) = names.project {
            t = t.replace("[project id hidden]", p).replace("[project]", p);
        }
        if let Some(ip) = &ip {
            t = t.replace("[ip]", ip);
        }
        if let Some(f) = names.file {
            t = t.replace("File xxxxxxxxx", &format!("File {f}"));
        }
        if let Some(m) = names.model {
            for named in &models {
                t = replace_token(&t, named, m);
            }
        }
        t
    });
    ApiError {
        status: s.status,
        body,
    }
}

/// Models a body names: `quotaDimensions.model` and `models/{name}` in any text.
pub fn named_models(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let Some(m) = map
                .get("quotaDimensions")
                .and_then(|d| d.get("model"))
                .and_then(Value::as_str)
            {
                out.push(m.to_owned());
            }
            for x in map.values() {
                named_models(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| named_models(x, out)),
        Value::String(s) => {
            let mut rest = s.as_str();
            while let Some(i) = rest.find("models/") {
                let after = &rest[i + "models/".len()..];
                let end = after
                    .find(|c: char| !is_name_char(c))
                    .unwrap_or(after.len());
                // A trailing dot ends the sentence, not the name.
                let name = after[..end].trim_end_matches('.');
                if !name.is_empty() {
                    out.push(name.to_owned());
                }
                rest = &after[end..];
            }
        }
        _ => {}
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
}

/// Replaces `from` where it stands as a whole name (not inside a longer one).
fn replace_token(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let before_ok = !rest[..i]
            .chars()
            .next_back()
            .is_some_and(|c| is_name_char(c) && c != '.');
        let after = &rest[i + from.len()..];
        let mut next = after.chars();
        let after_ok = match next.next() {
            None => true,
            // "model gemini-2.5-flash." ends a sentence; "gemini-2.5-flash.1" is another name.
            Some('.') => !next.next().is_some_and(is_name_char),
            Some(c) => !is_name_char(c),
        };
        out.push_str(&rest[..i]);
        out.push_str(if before_ok && after_ok { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

fn substitute(v: &mut Value, f: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| substitute(x, f)),
        Value::Object(m) => m.values_mut().for_each(|x| substitute(x, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_compiled_in_corpus_parses_with_unique_ids() {
        let ids: Vec<&str> = shapes().iter().map(|s| s.id.as_str()).collect();
        assert!(ids.len() >= 35, "{ids:?}");
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "duplicate ids");
        for s in shapes() {
            assert_eq!(s.body["error"]["code"].as_u64(), Some(u64::from(s.status)));
        }
    }

    #[test]
    fn names_are_replaced_whole() {
        assert_eq!(
            replace_token(
                "model: gemini-2.5-flash, not gemini-2.5-flash-lite; models/gemini-2.5-flash.",
                "gemini-2.5-flash",
                "m"
            ),
            "model: m, not gemini-2.5-flash-lite; models/m."
        );
        let mut got = Vec::new();
        named_models(
            &json!("This model models/gemini-robotics-er-1.5-preview is no longer available."),
            &mut got,
        );
        assert_eq!(got, ["gemini-robotics-er-1.5-preview"]);
    }

    #[test]
    fn a_key_placeholder_gets_the_label_and_an_unknown_id_says_so() {
        let e = render(
            "real-25",
            &Names {
                key_label: Some("k1"),
                ..Names::default()
            },
        );
        assert!(e.body.to_string().contains("api_key:k1"));
        assert_eq!(render("real-99", &Names::default()).status, 500);
    }
}
