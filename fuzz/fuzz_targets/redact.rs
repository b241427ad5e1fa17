//! Redaction on arbitrary text: no panic, linear work (libFuzzer flags slow inputs), and nothing
//! left that the scrubber would still find. Run: `cargo xtask fuzz`, or
//! `cargo +nightly fuzz run redact`.
#![no_main]

use keyturn_core::Scrubber;
use libfuzzer_sys::fuzz_target;

const KEY: &str = "made-up-fuzz-key-42";

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let s = Scrubber::from_secrets([KEY]);
    let out = s.redact(&text);
    assert!(!out.contains(KEY));
    assert_eq!(s.scrub_known(out.as_bytes()), None, "{out:?}");
    let shaped = out.as_bytes().windows(39).any(|w| {
        w.starts_with(b"AIza")
            && w[4..]
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
    });
    assert!(!shaped, "{out:?}");
    if let Some(clean) = s.scrub_known(data) {
        assert!(!clean.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
    }
});
