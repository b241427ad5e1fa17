//! Keeping keys out of text that leaves the process: error bodies, messages, logs and relayed
//! answers.
//!
//! A key can hide in more than its plain spelling: a JSON body may write any character as a
//! `\u0041` escape, and a URL or form field writes it as `%41`. [`Scrubber`] reads text as it is
//! and, when it holds escapes at all, through those spellings (JSON's, URLs', both: a stray `%4`
//! read as an escape swallows a key's first letter that another reader still sees), finds the
//! pool's own keys in each reading with one Aho-Corasick pass, and everything shaped like a
//! Google API key (`AIza` + 35 of `[0-9A-Za-z_-]`) with one linear scan, and replaces each whole
//! original span with `[key]`, never half an escape and never after a lone backslash, so JSON
//! stays JSON. The work is linear in the text (at most four readings, a binary search per key
//! found), whatever it holds: no recursion, no rescans; a reading costs one copy of the text.

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
    /// case, which costs one scan, or one per reading when the body holds escapes), else the body with each replaced. Key-shaped strings that are
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
        let json = text.windows(2).any(|w| w == b"\\u" || w == b"\\U");
        let pct = text.contains(&b'%');
        // The plain text, and each way of reading it: as JSON, as a URL, as JSON then a URL.
        // Each is needed: a stray `%4` or `\\u004` just before a key, read as an escape,
        // swallows the key's first letter, while a reader of the other kind (or of the plain
        // text) still sees the whole key.
        let mut readings = vec![(false, false)];
        match (json, pct) {
            (false, false) => {}
            (true, false) => readings.push((true, false)),
            (false, true) => readings.push((false, true)),
            (true, true) => readings.extend([(true, false), (false, true), (true, true)]),
        }
        let mut spans = Vec::new();
        for (json, pct) in readings {
            let view = Decoded::of(text, json, pct);
            self.scan(view.bytes(text), shaped, &mut |s, e| {
                spans.push(view.original(s, e));
            });
        }
        // A span that starts or ends inside an escape (one reading's key may begin inside
        // another reading's escape) would leave half an escape behind: it takes the whole. And
        // a span right after an odd run of backslashes would leave the run's last one escaping
        // `[`, which is not JSON: that backslash goes with the span.
        let spans = merge(spans)
            .into_iter()
            .map(|(s, e)| {
                let (s, e) = (escape_around(text, s).map_or(s, |(a, _)| a), e);
                let e = escape_around(text, e - 1).map_or(e, |(_, b)| b);
                (s - usize::from(odd_backslashes_before(text, s)), e)
            })
            .collect();
        merge(spans)
    }

    /// Reports each known key and, if `shaped`, each key-shaped run in `bytes`, in order.
    fn scan(&self, bytes: &[u8], shaped: bool, found: &mut impl FnMut(usize, usize)) {
        if let Some(ac) = &self.known {
            for m in ac.find_iter(bytes) {
                found(m.start(), m.end());
            }
        }
        if shaped {
            let mut i = 0;
            while let Some(off) = memfind(&bytes[i..], KEY_PREFIX) {
                let start = i + off;
                let tail = start + KEY_PREFIX.len();
                let n = bytes[tail..].iter().take_while(|b| key_char(**b)).count();
                if n >= KEY_TAIL {
                    found(start, tail + n);
                    i = tail + n;
                } else {
                    // Too short to be a key; whatever follows starts after this prefix.
                    i = tail;
                }
            }
        }
    }
}

/// The escape (`\uXXXX` or `%XX`, of any character) that byte `at` is part of, if any.
fn escape_around(text: &[u8], at: usize) -> Option<(usize, usize)> {
    (at.saturating_sub(5)..=at).find_map(|j| {
        let rest = &text[j..];
        let len = match rest {
            [b'\\', b'u' | b'U', h @ ..]
                if h.len() >= 4 && h[..4].iter().all(u8::is_ascii_hexdigit) =>
            {
                6
            }
            [b'%', h @ ..] if h.len() >= 2 && h[..2].iter().all(u8::is_ascii_hexdigit) => 3,
            _ => return None,
        };
        (at < j + len).then_some((j, j + len))
    })
}

/// Whether `text[..at]` ends in an odd number of backslashes (the last one escapes `text[at]`).
/// The run lies between two spans, so these walks cost at most one pass over the text.
fn odd_backslashes_before(text: &[u8], at: usize) -> bool {
    text[..at].iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1
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

/// The text with `\uXXXX` and `%XX` escapes of ASCII characters decoded, and where each escape
/// came from. Plain text (no `\u`, no `%`) is its own view, at no cost; otherwise the view costs
/// one copy of the text and a record per escape, not per byte: a large answer with one `%` in it
/// must not cost many times its size.
struct Decoded {
    /// Decoded bytes; empty when nothing was escaped.
    bytes: Vec<u8>,
    /// Each escape, in order.
    escapes: Vec<Escape>,
}

#[derive(Debug, Clone, Copy)]
struct Escape {
    /// Its index in the decoded bytes.
    at: usize,
    /// Its start in the original.
    from: usize,
    /// Its length in the original.
    len: usize,
}

impl Decoded {
    /// The view with JSON's `\uXXXX` escapes decoded if `json` (as a JSON reader does: `\\`
    /// is a backslash, and what follows it is no escape), and `%XX` if `pct`.
    fn of(text: &[u8], json: bool, pct: bool) -> Self {
        let mut view = Self {
            bytes: Vec::new(),
            escapes: Vec::new(),
        };
        if !json && !pct {
            return view;
        }
        view.bytes.reserve(text.len());
        let mut i = 0;
        while i < text.len() {
            match escape_at(text, i, json, pct) {
                Some((b, len)) => {
                    view.escapes.push(Escape {
                        at: view.bytes.len(),
                        from: i,
                        len,
                    });
                    view.bytes.push(b);
                    i += len;
                }
                None => {
                    view.bytes.push(text[i]);
                    i += 1;
                }
            }
        }
        if view.escapes.is_empty() {
            view.bytes = Vec::new();
        }
        view
    }

    fn is_identity(&self) -> bool {
        self.escapes.is_empty()
    }

    fn bytes<'a>(&'a self, text: &'a [u8]) -> &'a [u8] {
        if self.is_identity() {
            text
        } else {
            &self.bytes
        }
    }

    /// The original span of decoded byte `d`.
    fn unit(&self, d: usize) -> (usize, usize) {
        let k = self.escapes.partition_point(|e| e.at <= d);
        match k.checked_sub(1).map(|k| self.escapes[k]) {
            None => (d, d + 1),
            Some(e) if e.at == d => (e.from, e.from + e.len),
            Some(e) => {
                let o = e.from + e.len + (d - e.at - 1);
                (o, o + 1)
            }
        }
    }

    /// The original span of decoded bytes `start..end`.
    fn original(&self, start: usize, end: usize) -> (usize, usize) {
        if self.is_identity() {
            (start, end)
        } else {
            (self.unit(start).0, self.unit(end - 1).1)
        }
    }
}

/// An escaped ASCII character at `i`: `\\`, `\uXXXX` (JSON) or `%XX` (URLs), with its length.
fn escape_at(text: &[u8], i: usize, json: bool, pct: bool) -> Option<(u8, usize)> {
    // Hex digits only: `from_str_radix` alone also takes a sign (`%+A`).
    let hex = |s: &[u8]| -> Option<u32> {
        if !s.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        std::str::from_utf8(s)
            .ok()
            .and_then(|s| u32::from_str_radix(s, 16).ok())
    };
    let rest = &text[i..];
    let (value, len) = match rest {
        [b'\\', b'\\', ..] if json => (b'\\'.into(), 2),
        [b'\\', b'u' | b'U', ..] if json && rest.len() >= 6 => (hex(&rest[2..6])?, 6),
        [b'%', ..] if pct && rest.len() >= 3 => (hex(&rest[1..3])?, 3),
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

    #[test]
    fn a_dangling_escape_before_a_key_does_not_hide_it() {
        // The decoded view reads `%4A` and `\u004A` as 'J', which swallowed the key's first
        // letter: the key itself stood there in plain text, and in the text a JSON reader gets.
        let k = fake_key('h');
        let s = Scrubber::from_secrets([k.as_str()]);
        for prefix in ["%4", "%+", "\\\\u004", "\\\\u00", "100%4", "%0"] {
            let body = format!("{{\"text\": \"{prefix}{k}\"}}");
            let out = s
                .scrub_known(body.as_bytes())
                .unwrap_or_else(|| panic!("{prefix}: the key stayed"));
            let out = String::from_utf8(out).unwrap();
            let v: serde_json::Value = serde_json::from_str(&out).unwrap();
            assert!(!v["text"].as_str().unwrap().contains(&k), "{prefix}: {out}");
            let shaped = redact(&body, "");
            assert!(!shaped.contains(&k[..20]), "{prefix}: {shaped}");
        }
    }

    #[test]
    fn redaction_keeps_json_valid() {
        // A JSON string holding a literal backslash before an escape: `"\\u0041Iza…"`. Cutting
        // after the first backslash left `"\[key]"`, which is not JSON.
        let tail = "Q".repeat(35);
        for inner in [
            format!("\\\\u0041Iza{tail}"),
            format!("\\\\\\u0041Iza{tail}"),
            format!("\\u004AIza{tail}"),
            format!("\\\\\\\\u0041Iza{tail}"),
            format!("x\\\\%41Iza{tail}"),
        ] {
            let body = format!("{{\"text\": \"{inner}\"}}");
            serde_json::from_str::<serde_json::Value>(&body).expect("the test's own JSON");
            let out = redact(&body, "");
            assert!(
                serde_json::from_str::<serde_json::Value>(&out).is_ok(),
                "{body} became {out}"
            );
        }
    }

    /// `%XX` escapes of ASCII decoded, the way a URL reader would.
    fn url_decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            let hex = b
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit));
            match (b[i], hex) {
                (b'%', Some(h)) => {
                    out.push(u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap());
                    i += 3;
                }
                (c, _) => {
                    out.push(c);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    proptest::proptest! {
        /// A pool key inside a JSON string, among escapes and stray escape starts, with any of
        /// its letters written as `\u00XX`: whatever the scrubber returns is JSON, and neither
        /// a JSON reader nor a URL reader after it finds the key.
        #[test]
        fn a_key_in_json_goes_and_the_json_stays(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just("KEY"),
                    proptest::strategy::Just("%4"),
                    proptest::strategy::Just("%"),
                    proptest::strategy::Just("%41"),
                    proptest::strategy::Just("\\"),
                    proptest::strategy::Just("\\u00"),
                    proptest::strategy::Just("\\u004"),
                    proptest::strategy::Just("\""),
                    proptest::strategy::Just("é"),
                    proptest::strategy::Just("AIza"),
                    proptest::strategy::Just("x"),
                    proptest::strategy::Just("4"),
                ],
                1..12,
            ),
            escape_mask in proptest::collection::vec(proptest::bool::ANY, 64),
        ) {
            let k = format!("AIza{}", "kQ-_9".repeat(7));
            let s = Scrubber::from_secrets([k.as_str()]);
            let text: String = pieces.iter().map(|p| if *p == "KEY" { k.as_str() } else { p }).collect();
            // JSON with the key's characters escaped where the mask says.
            let mut json = String::from("{\"t\":\"");
            let mut n = 0;
            for c in text.chars() {
                match c {
                    '"' => json.push_str("\\\""),
                    '\\' => json.push_str("\\\\"),
                    c if c.is_ascii_alphanumeric() => {
                        if escape_mask[n % escape_mask.len()] {
                            json.push_str(&format!("\\u{:04X}", c as u32));
                        } else {
                            json.push(c);
                        }
                        n += 1;
                    }
                    c => json.push(c),
                }
            }
            json.push_str("\"}");
            let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
            proptest::prop_assert_eq!(parsed["t"].as_str().unwrap(), text.as_str());
            for out in [
                s.scrub_known(json.as_bytes()).map_or(json.clone(), |b| String::from_utf8(b).unwrap()),
                s.redact(&json),
            ] {
                let v: serde_json::Value = serde_json::from_str(&out)
                    .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{json} -> {out}: {e}")))?;
                let t = v["t"].as_str().unwrap();
                proptest::prop_assert!(!t.contains(&k), "{} -> {}", json, out);
                proptest::prop_assert!(!url_decode(t).contains(&k), "{} -> {}", json, out);
            }
        }
    }
}
