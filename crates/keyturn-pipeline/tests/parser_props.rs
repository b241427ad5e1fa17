//! The transcript parsers on arbitrary input: never a panic, only cues or typed errors; cue times
//! are ordered; nothing is invented. (`fuzz/` has a cargo-fuzz target for longer runs:
//! `cargo xtask fuzz`.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyturn_pipeline::transcript::{Format, chunk, merge_short, parse};
use proptest::prelude::*;

fn vttish() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        Just("WEBVTT".to_owned()),
        Just("".to_owned()),
        Just("NOTE x".to_owned()),
        "[0-9]{1,2}:[0-9]{2}(\\.[0-9]{3})? --> [0-9]{1,2}:[0-9]{2}(\\.[0-9]{3})?( align:start)?",
        "<v [A-Z][a-z]{1,8}>[a-zA-Z ,.<>/&;]{0,40}",
        "[A-Z]{2,6}: [a-z ]{0,30}",
        "[0-9]{1,3}",
        "\\PC{0,30}",
    ];
    prop::collection::vec(line, 0..40).prop_map(|l| l.join("\r\n"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
        for f in [Format::Vtt, Format::Srt, Format::Txt] {
            let _ = parse(f, &bytes);
        }
    }

    #[test]
    fn subtitle_shaped_text_parses_or_fails_cleanly(text in vttish()) {
        for f in [Format::Vtt, Format::Srt, Format::Txt] {
            if let Ok(cues) = parse(f, text.as_bytes()) {
                prop_assert!(!cues.is_empty());
                for c in &cues {
                    prop_assert!(!c.text.is_empty());
                    if let (Some(a), Some(b)) = (c.start_ms, c.end_ms) {
                        prop_assert!(a <= b);
                    }
                }
                let merged = merge_short(cues.clone(), 40);
                let chunks = chunk(&merged, 50, 1);
                // Every cue's text survives merging and chunking.
                let all: String = chunks.iter().map(|c| c.text.as_str()).collect::<Vec<_>>().join("\n");
                for c in &cues {
                    prop_assert!(all.contains(c.text.as_str()));
                }
            }
        }
    }
}
