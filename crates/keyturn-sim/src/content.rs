//! Deterministic content: the same request always gets the same answer. Text echoes the prompt's
//! words; structured output conforms to the request's schema and is built from the prompt (so an
//! extraction pipeline gets plausible entities); embeddings are unit vectors seeded by the text.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// A seed from some strings.
pub fn seed_of(parts: &[&str]) -> u64 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0u8]);
    }
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// Words of a prompt, and the capitalised phrases in it (candidate entity names).
#[derive(Debug, Clone)]
pub struct Vocabulary {
    words: Vec<String>,
    phrases: Vec<String>,
}

impl Vocabulary {
    /// Reads a prompt.
    pub fn of(prompt: &str) -> Self {
        let raw: Vec<&str> = prompt
            .split(char::is_whitespace)
            .filter(|w| !w.is_empty())
            .collect();
        let clean = |w: &str| w.trim_matches(|c: char| !c.is_alphanumeric()).to_owned();
        let words: Vec<String> = raw
            .iter()
            .map(|w| clean(w))
            .filter(|w| w.len() > 2)
            .map(|w| w.to_lowercase())
            .collect();
        // Names: runs of capitalised words inside a sentence. A run ends at punctuation, and a
        // capital right after a sentence end (or a "Speaker:" label) is not evidence of a name.
        let mut phrases: Vec<String> = Vec::new();
        let mut current: Vec<String> = Vec::new();
        let mut sentence_start = true;
        let flush = |current: &mut Vec<String>, phrases: &mut Vec<String>| {
            if !current.is_empty() {
                let p = current.join(" ");
                if p.len() > 2 && !phrases.contains(&p) {
                    phrases.push(p);
                }
                current.clear();
            }
        };
        let lines: Vec<Vec<&str>> = prompt
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        for w in lines
            .iter()
            .flat_map(|l| l.iter().copied().chain(std::iter::once("\n")))
        {
            if w == "\n" {
                flush(&mut current, &mut phrases);
                sentence_start = true;
                continue;
            }
            let word = clean(w);
            let capital = word.chars().next().is_some_and(char::is_uppercase);
            if capital && (!sentence_start || !current.is_empty()) && !word.is_empty() {
                current.push(word);
            } else {
                flush(&mut current, &mut phrases);
            }
            let ends = w.ends_with(['.', '!', '?', ':', ';', ',', ')', '"']);
            if ends {
                flush(&mut current, &mut phrases);
            }
            sentence_start = w.ends_with(['.', '!', '?', ':']);
        }
        flush(&mut current, &mut phrases);
        Self { words, phrases }
    }

    fn word(&self, rng: &mut StdRng) -> String {
        if self.words.is_empty() {
            return "simulated".to_owned();
        }
        self.words[rng.random_range(0..self.words.len())].clone()
    }

    fn name(&self, rng: &mut StdRng) -> String {
        if self.phrases.is_empty() {
            let w = self.word(rng);
            let mut c = w.chars();
            return match c.next() {
                Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                None => w,
            };
        }
        self.phrases[rng.random_range(0..self.phrases.len())].clone()
    }

    fn sentence(&self, rng: &mut StdRng, n: usize) -> String {
        let words: Vec<String> = (0..n).map(|_| self.word(rng)).collect();
        let mut s = words.join(" ");
        if let Some(f) = s.get(0..1) {
            s = f.to_uppercase() + &s[1..];
        }
        s.push('.');
        s
    }
}

/// Plain text for a prompt, about `target_words` long.
pub fn text_reply(prompt: &str, seed: u64, target_words: usize) -> String {
    let vocab = Vocabulary::of(prompt);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = String::from("Simulated answer:");
    let mut n = 0;
    while n < target_words {
        let len = rng.random_range(4..10).min(target_words - n).max(1);
        out.push(' ');
        out.push_str(&vocab.sentence(&mut rng, len));
        n += len;
    }
    out
}

/// A JSON value conforming to `schema` (Gemini's OpenAPI subset, types in either case, or JSON
/// Schema), built from the prompt's words.
pub fn json_reply(prompt: &str, seed: u64, schema: &Value) -> Value {
    let vocab = Vocabulary::of(prompt);
    let mut rng = StdRng::seed_from_u64(seed);
    value_for(schema, "", &vocab, &mut rng, 0)
}

fn schema_type(schema: &Value) -> String {
    match schema.get("type") {
        Some(Value::String(t)) => t.to_lowercase(),
        // JSON Schema allows ["string", "null"].
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null")
            .to_lowercase(),
        _ if schema.get("properties").is_some() => "object".to_owned(),
        _ if schema.get("items").is_some() => "array".to_owned(),
        _ if schema.get("enum").is_some() => "string".to_owned(),
        _ => "string".to_owned(),
    }
}

fn value_for(
    schema: &Value,
    field: &str,
    vocab: &Vocabulary,
    rng: &mut StdRng,
    depth: usize,
) -> Value {
    if let Some(options) = schema
        .get("anyOf")
        .or_else(|| schema.get("oneOf"))
        .and_then(Value::as_array)
        && let Some(first) = options.iter().find(|o| schema_type(o) != "null")
    {
        return value_for(first, field, vocab, rng, depth);
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array)
        && !options.is_empty()
    {
        return options[rng.random_range(0..options.len())].clone();
    }
    match schema_type(schema).as_str() {
        "object" => {
            let mut out = Map::new();
            let props = schema.get("properties").and_then(Value::as_object);
            let order: Vec<String> = match schema.get("propertyOrdering").and_then(Value::as_array)
            {
                Some(o) => o
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
                None => props
                    .map(|p| p.keys().cloned().collect())
                    .unwrap_or_default(),
            };
            if let Some(props) = props {
                for name in order {
                    if let Some(s) = props.get(&name) {
                        out.insert(name.clone(), value_for(s, &name, vocab, rng, depth + 1));
                    }
                }
            }
            Value::Object(out)
        }
        "array" => {
            let min = schema.get("minItems").and_then(value_as_u64).unwrap_or(1) as usize;
            let max = schema
                .get("maxItems")
                .and_then(value_as_u64)
                .map_or(min.max(4), |m| m as usize)
                .max(min);
            // Shallower arrays are longer: top-level lists of entities look like extraction.
            let want = if depth <= 1 {
                min.max(2).min(max) + rng.random_range(0..=2)
            } else {
                min.max(1)
            };
            let n = want.clamp(min, max);
            let items = schema
                .get("items")
                .cloned()
                .unwrap_or(json!({"type": "string"}));
            Value::Array(
                (0..n)
                    .map(|_| value_for(&items, field, vocab, rng, depth + 1))
                    .collect(),
            )
        }
        "integer" => json!(rng.random_range(0..100)),
        "number" => json!(f64::from(rng.random_range(0u32..10_000)) / 100.0),
        "boolean" => json!(rng.random_bool(0.5)),
        "null" => Value::Null,
        _ => {
            let f = field.to_lowercase();
            let s = if f.contains("name")
                || f == "source"
                || f == "target"
                || f.contains("speaker")
                || f.contains("entity")
                || f == "subject"
                || f == "object"
            {
                vocab.name(rng)
            } else if f.contains("time") {
                format!(
                    "00:{:02}:{:02}",
                    rng.random_range(0..60),
                    rng.random_range(0..60)
                )
            } else if f.contains("description")
                || f.contains("evidence")
                || f.contains("text")
                || f.contains("quote")
                || f.contains("summary")
            {
                {
                    let n = rng.random_range(6..14);
                    vocab.sentence(rng, n)
                }
            } else {
                vocab.word(rng)
            };
            Value::String(s)
        }
    }
}

fn value_as_u64(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

/// A deterministic unit vector for a text.
pub fn embedding(text: &str, task: &str, dims: usize) -> Vec<f32> {
    let mut rng = StdRng::seed_from_u64(seed_of(&[text, task]));
    let mut v: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    for x in &mut v {
        *x /= norm;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_follows_the_schema_and_uses_prompt_names() {
        let schema = json!({
            "type": "OBJECT",
            "properties": {
                "entities": {"type": "ARRAY", "items": {"type": "OBJECT", "properties": {
                    "name": {"type": "STRING"},
                    "type": {"type": "STRING", "enum": ["PERSON", "ORGANIZATION"]},
                    "confidence": {"type": "NUMBER"}
                }, "required": ["name", "type"]}},
                "count": {"type": "INTEGER"}
            },
            "required": ["entities"]
        });
        let prompt = "Today Ada Lovelace met Charles Babbage at the Royal Society in London.";
        let v = json_reply(prompt, 7, &schema);
        let ents = v["entities"].as_array().unwrap();
        assert!(!ents.is_empty());
        for e in ents {
            let name = e["name"].as_str().unwrap();
            assert!(
                ["Ada Lovelace", "Charles Babbage", "Royal Society", "London"].contains(&name),
                "{name}"
            );
            assert!(["PERSON", "ORGANIZATION"].contains(&e["type"].as_str().unwrap()));
            assert!(e["confidence"].is_number());
        }
        assert!(v["count"].is_i64());
        assert_eq!(json_reply(prompt, 7, &schema), v, "deterministic");
    }

    #[test]
    fn embeddings_are_deterministic_unit_vectors() {
        let a = embedding("hello", "", 768);
        let b = embedding("hello", "", 768);
        assert_eq!(a, b);
        let n: f32 = a.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4);
        assert_ne!(a, embedding("hello!", "", 768));
    }
}
