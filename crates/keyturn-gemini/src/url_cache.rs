//! reqwest parses a `&str` URL on every send; a transport keeps the URLs it sends to parsed.

/// The URLs a transport has sent to, parsed once: reqwest parses a `&str` URL on every send
/// (with IDNA host processing), 5 to 7 % of `keyturn serve`'s time at one connection, while a
/// pool sends to a handful of model URLs over and over. Bounded: past [`ParsedUrls::MOST`]
/// distinct URLs (upload sessions are each new) the rest are parsed on each send, as before.
#[derive(Debug, Default)]
pub(crate) struct ParsedUrls(
    parking_lot::RwLock<std::collections::HashMap<Box<str>, reqwest::Url>>,
);

impl ParsedUrls {
    const MOST: usize = 256;

    /// `url` parsed, from the cache when it was parsed before. A URL that does not parse is
    /// handed to reqwest as text, so its error stays reqwest's own.
    pub(crate) fn get(&self, url: &str) -> Option<reqwest::Url> {
        if let Some(u) = self.0.read().get(url) {
            return Some(u.clone());
        }
        let parsed = reqwest::Url::parse(url).ok()?;
        let mut map = self.0.write();
        if map.len() < Self::MOST {
            map.insert(url.into(), parsed.clone());
        }
        Some(parsed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_parses_once_and_the_cache_stays_bounded() {
        let cache = ParsedUrls::default();
        let url = "http://127.0.0.1:9/v1beta/models/gemini-2.5-flash:generateContent";
        let first = cache.get(url).unwrap();
        assert_eq!(first.as_str(), url);
        assert_eq!(
            cache.get(url).unwrap(),
            first,
            "the cached parse is the same URL"
        );
        assert_eq!(cache.0.read().len(), 1);
        for i in 0..2 * ParsedUrls::MOST {
            let u = format!("http://127.0.0.1:9/upload/v1beta/files?upload_id={i}");
            assert_eq!(cache.get(&u).unwrap().as_str(), u);
        }
        assert_eq!(
            cache.0.read().len(),
            ParsedUrls::MOST,
            "never more than MOST entries"
        );
        assert!(
            cache.get("not a url").is_none(),
            "reqwest reports its own error for these"
        );
    }
}
