//! The transcript parsers on arbitrary bytes: no panic, ordered cue times, nothing lost in
//! merging and chunking. Run: `cargo xtask fuzz` (bounded), or `cargo +nightly fuzz run transcripts`.
#![no_main]

use keyturn_pipeline::transcript::{Format, chunk, merge_short, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for f in [Format::Vtt, Format::Srt, Format::Txt] {
        if let Ok(cues) = parse(f, data) {
            assert!(!cues.is_empty());
            for c in &cues {
                if let (Some(a), Some(b)) = (c.start_ms, c.end_ms) {
                    assert!(a <= b);
                }
            }
            let chunks = chunk(&merge_short(cues, 40), 50, 1);
            assert!(!chunks.is_empty());
        }
    }
});
