//! Keeping keys out of text that leaves the process: error bodies, messages, logs and relayed
//! answers.
//!
//! A key can hide in more than its plain spelling: a JSON body may write any character as a
//! `\u0041` escape, and a URL or form field writes it as `%41`. [`Scrubber`] reads text through
//! those spellings (one decoded view, built only when the text holds an escape at all), finds the
//! pool's own keys in it with one Aho-Corasick pass, and everything shaped like a Google API key
//! (`AIza` + 35 of `[0-9A-Za-z_-]`) with one linear scan, and replaces each whole original span
//! with `[key]`. The work is linear in the text, whatever it holds: no recursion, no rescans.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};

use crate::key::ApiKey;

/// What a key is replaced with.
pub const REDACTED: &str = "[key]";

/// Google API keys: `AIza` and 35 more characters of this alphabet.
const KEY_PREFIX: &[u8] = b"AIza";
const KEY_TAIL: usize = 35;

fn key_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Finds and removes keys in text, in every spelling.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    known: Option<AhoCorasick>,
}

impl Scrubber {
    /// A scrubber for these keys (and anything key-shaped, in [`Scrubber::redact`]).
    pub fn new<'a>(keys: impl IntoIterator<Item = &'a ApiKey>) -> Self {
        Self::from_secrets(keys.into_iter().map(ApiKey::expose))
    }

    /// A scrubber for these raw secrets; empty ones are ignored.
    pub fn from_secrets<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        let patterns: Vec<&str> = secrets.into_iter().filter(|s| !s.is_empty()).collect();
        let known = if patterns.is_empty() {
            None
        } else {
            AhoCorasickBuilder::new()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&patterns)
                .ok()
        };
        Self { known }
    }

    /// The text with every known key and everything key-shaped replaced by `[key]`, in any of
    /// the plain, `\uXXXX` and `%XX` spellings.
    pub fn redact(&self, text: &str) -> String {
        let spans = self.spans(text.as_bytes(), true);
        if spans.is_empty() {
            return text.to_owned();
        }
        let out = splice(text.as_bytes(), &spans);
        // Spans start and end on ASCII bytes or escape boundaries, so the result is UTF-8.
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// For a body relayed byte for byte: `None` when it holds none of the known keys (the common
    /// case, which costs one scan), else the body with each replaced. Key-shaped strings that are
    /// not the pool's are left alone here: an answer may legitimately quote one.
    pub fn scrub_known(&self, body: &[u8]) -> Option<Vec<u8>> {
        self.known.as_ref()?;
        let spans = self.spans(body, false);
        (!spans.is_empty()).then(|| splice(body, &spans))
    }

    /// Whether there are known keys to look for.
    pub fn has_known(&self) -> bool {
        self.known.is_some()
    }

    /// Sorted, disjoint byte spans of `text` to replace.
    fn spans(&self, text: &[u8], shaped: bool) -> Vec<(usize, usize)> {
        let view = Decoded::of(text);
        let bytes = view.bytes(text);
        let mut spans = Vec::new();
        if let Some(ac) = &self.known {
            for m in ac.find_iter(bytes) {
                spans.push(view.original(m.start(), m.end()));
            }
        }
        if shaped {
            let mut i = 0;
            while let Some(off) = memfind(&bytes[i..], KEY_PREFIX) {
                let start = i + off;
                let tail = start + KEY_PREFIX.len();
                let n = bytes[tail..].iter().take_while(|b| key_char(**b)).count();
                if n >= KEY_TAIL {
                    spans.push(view.original(start, tail + n));
                    i = tail + n;
                } else {
                    // Too short to be a key; whatever follows starts after this prefix.
                    i = tail;
                }
            }
        }
        merge(spans)
    }
}

/// Removes `key` and everything key-shaped from `text`, in every spelling.
pub fn redact(text: &str, key: &str) -> String {
    Scrubber::from_secrets([key]).redact(text)
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn merge(mut spans: Vec<(usize, usize)>) -> Vec<(usize, usize)> {
    spans.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
    for (s, e) in spans {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn splice(text: &[u8], spans: &[(usize, usize)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    for &(s, e) in spans {
        out.extend_from_slice(&text[at..s]);
        out.extend_from_slice(REDACTED.as_bytes());
        at = e;
    }
    out.extend_from_slice(&text[at..]);
    out
}

/// The text with `\uXXXX` and `%XX` escapes of ASCII characters decoded, and where each decoded
/// byte came from. Plain text (no `\u`, no `%`) is its own view, at no cost.
struct Decoded {
    /// Decoded bytes and, for each, its start in the original; empty when nothing was escaped.
    bytes: Vec<u8>,
    starts: Vec<usize>,
    /// Each decoded byte's end in the original.
    ends: Vec<usize>,
}

impl Decoded {
    fn of(text: &[u8]) -> Self {
        let escaped = text.contains(&b'%') || text.windows(2).any(|w| w == b"\\u" || w == b"\\U");
        if !escaped {
            return Self {
                bytes: Vec::new(),
                starts: Vec::new(),
                ends: Vec::new(),
            };
        }
        let mut bytes = Vec::with_capacity(text.len());
        let mut starts = Vec::with_capacity(text.len());
        let mut ends = Vec::with_capacity(text.len());
        let mut i = 0;
        while i < text.len() {
            let (b, len) = escape_at(text, i).unwrap_or((text[i], 1));
            bytes.push(b);
            starts.push(i);
            ends.push(i + len);
            i += len;
        }
        Self {
            bytes,
            starts,
            ends,
        }
    }

    fn bytes<'a>(&'a self, text: &'a [u8]) -> &'a [u8] {
        if self.starts.is_empty() {
            text
        } else {
            &self.bytes
        }
    }

    /// The original span of decoded bytes `start..end`.
    fn original(&self, start: usize, end: usize) -> (usize, usize) {
        if self.starts.is_empty() {
            (start, end)
        } else {
            (self.starts[start], self.ends[end - 1])
        }
    }
}

/// An escaped ASCII character at `i`: `\uXXXX` (JSON) or `%XX` (URLs), with its length.
fn escape_at(text: &[u8], i: usize) -> Option<(u8, usize)> {
    let hex = |s: &[u8]| -> Option<u32> {
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    let rest = &text[i..];
    let (value, len) = match rest {
        [b'\\', b'u' | b'U', ..] if rest.len() >= 6 => (hex(&rest[2..6])?, 6),
        [b'%', ..] if rest.len() >= 3 => (hex(&rest[1..3])?, 3),
        _ => return None,
    };
    u8::try_from(value)
        .ok()
        .filter(u8::is_ascii)
        .map(|b| (b, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_key(c: char) -> String {
        format!("AIza{}", c.to_string().repeat(35))
    }

    fn escape_json(s: &str) -> String {
        s.chars().map(|c| format!("\\u{:04x}", c as u32)).collect()
    }

    fn escape_url(s: &str) -> String {
        s.bytes().map(|b| format!("%{b:02X}")).collect()
    }

    #[test]
    fn plain_keys_and_key_shapes_go() {
        let k = fake_key('Q');
        let other = fake_key('z');
        let text = format!("Consumer 'api_key:{k}' and {other}. AIzaShort stays.");
        let out = redact(&text, &k);
        assert_eq!(out, "Consumer 'api_key:[key]' and [key]. AIzaShort stays.");
    }

    #[test]
    fn a_made_up_pool_key_goes_in_every_spelling() {
        let s = Scrubber::from_secrets(["made-up-pool-key-7"]);
        for spelled in [
            "made-up-pool-key-7".to_owned(),
            escape_json("made-up-pool-key-7"),
            escape_url("made-up-pool-key-7"),
            format!("made-{}-pool-key-7", escape_json("up")),
        ] {
            let out = s.redact(&format!("{{\"message\": \"bad key {spelled} here\"}}"));
            assert_eq!(out, "{\"message\": \"bad key [key] here\"}", "{spelled}");
        }
    }

    #[test]
    fn key_shapes_are_found_through_escapes() {
        let k = fake_key('7');
        let out = redact(&format!("x {} y {} z", escape_json(&k), escape_url(&k)), "");
        assert_eq!(out, "x [key] y [key] z");
    }

    #[test]
    fn many_short_prefixes_cost_one_pass_and_no_stack() {
        // Each "AIza" used to cost a recursive call: 20,000 of them overflowed the stack.
        let text = "AIza ".repeat(20_000);
        assert_eq!(redact(&text, ""), text);
        let text = "AIza".repeat(20_000);
        assert_eq!(redact(&text, ""), REDACTED);
    }

    #[test]
    fn relayed_bodies_change_only_when_they_hold_a_pool_key() {
        let k = fake_key('k');
        let s = Scrubber::from_secrets([k.as_str()]);
        let clean = format!("{{\"text\": \"an example key: {}\"}}", fake_key('e'));
        assert_eq!(s.scrub_known(clean.as_bytes()), None);
        let dirty = format!("{{\"text\": \"{}\"}}", escape_json(&k));
        assert_eq!(
            s.scrub_known(dirty.as_bytes()).as_deref(),
            Some(&b"{\"text\": \"[key]\"}"[..])
        );
        assert_eq!(Scrubber::default().scrub_known(dirty.as_bytes()), None);
    }

    #[test]
    fn non_ascii_text_survives() {
        let k = fake_key('a');
        let out = redact(&format!("é {k} ü %zz \\u00e9 %C3%A9"), "");
        assert_eq!(out, "é [key] ü %zz \\u00e9 %C3%A9");
    }
}
