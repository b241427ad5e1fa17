//! Text from outside (file and folder names, paths, podcast names, key labels, model names from
//! the state, error messages from upstream) on its way to a terminal: control characters are
//! escaped, so a crafted name cannot move the cursor, retitle the window, hide text or forge a
//! line. Everything the binary prints that it did not write itself goes through [`safe`] (one
//! line) or [`safe_text`] (a message that may span lines).

use std::borrow::Cow;
use std::fmt::Write as _;

/// Characters a terminal may act on rather than show: C0 and C1 controls, DEL, and the Unicode
/// bidirectional overrides and isolates that reorder what is shown ("Trojan Source").
fn dangerous(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| dangerous(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if dangerous(c) && !keep(c) {
            // `\u{1b}`: visible, unambiguous, and what Rust's own escapes look like.
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` fit for one line of a terminal: every control character (newlines and tabs too) escaped
/// as `\u{..}`. Borrowed, with no allocation, when there is nothing to escape.
pub fn safe(s: &str) -> Cow<'_, str> {
    escape(s, |_| false)
}

/// Like [`safe`], but newlines and tabs stay: for messages that span lines by design.
pub fn safe_text(s: &str) -> Cow<'_, str> {
    escape(s, |c| c == '\n' || c == '\t')
}

/// [`safe`] for a path.
pub fn safe_path(p: &std::path::Path) -> String {
    safe(&p.display().to_string()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(safe("Episode 1 – Zoë"), Cow::Borrowed(_)));
        assert_eq!(safe("a\u{1b}]0;x\u{7}b"), "a\\u{1b}]0;x\\u{7}b");
        assert_eq!(safe("csi\u{9b}2J"), "csi\\u{9b}2J");
        assert_eq!(safe("del\u{7f}"), "del\\u{7f}");
        assert_eq!(safe("two\nlines\r"), "two\\u{a}lines\\u{d}");
        assert_eq!(safe("rtl\u{202e}txt"), "rtl\\u{202e}txt");
        assert_eq!(safe_text("two\nlines\t\u{1b}[2J"), "two\nlines\t\\u{1b}[2J");
        for s in ["\u{1b}", "\u{85}", "\u{2067}", "\0"] {
            assert!(!safe(s).chars().any(dangerous), "{s:?}");
        }
    }
}
