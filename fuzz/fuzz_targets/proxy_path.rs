//! The upstream URL builder on arbitrary (already percent-decoded) paths, as the proxy hands them
//! on: anything it accepts is `{base}/v1beta/models[/{model}[:{method}]]` with a valid model id and
//! a method of letters, never another path. Run: `cargo xtask fuzz`, or
//! `cargo +nightly fuzz run proxy_path`.
#![no_main]

use keyturn_gemini::{Transport, TransportConfig, valid_model};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    thread_local! {
        static T: Transport = Transport::new(&TransportConfig {
            base_url: "http://upstream.test".into(),
            ..TransportConfig::default()
        })
        .unwrap();
    }
    T.with(|t| {
        if let Ok(url) = t.path_url(path) {
            let rest = url
                .strip_prefix("http://upstream.test/v1beta/models")
                .unwrap();
            if let Some(name) = rest.strip_prefix('/') {
                let (model, method) = name.split_once(':').unwrap_or((name, "x"));
                assert!(valid_model(model), "{url}");
                assert!(method.bytes().all(|b| b.is_ascii_alphabetic()), "{url}");
            } else {
                assert!(rest.is_empty(), "{url}");
            }
        }
        if let Some((model, method)) = path.split_once(':')
            && let Ok(url) = t.model_url(model, method)
        {
            let model = model.strip_prefix("models/").unwrap_or(model);
            assert!(valid_model(model), "{url}");
            assert_eq!(url, format!("http://upstream.test/v1beta/models/{model}:{method}"));
            assert!(method.bytes().all(|b| b.is_ascii_alphabetic()), "{url}");
        }
    });
});
