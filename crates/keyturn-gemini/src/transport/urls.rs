//! Which upstream URLs keyturn builds: only from validated segments (a model id, a method of
//! letters, resource ids of `[A-Za-z0-9_-]`), so nothing a client encodes reaches the upstream
//! path, and an upload session only on the configured origin.

use super::{KeyHeader, OpenAiRoute, Transport};

/// A path segment that cannot be sent upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} is not valid: {reason}")]
pub struct InvalidName {
    /// What was wrong (the name, control characters escaped).
    pub what: String,
    /// Why.
    pub reason: &'static str,
}

/// Longest model id accepted.
pub const MAX_MODEL_LEN: usize = 128;

/// Whether `model` (without `models/`) can be a Gemini model id: 1 to 128 of `[A-Za-z0-9._-]`,
/// starting with a letter or digit.
pub fn valid_model(model: &str) -> bool {
    let b = model.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_MODEL_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'))
}

/// Whether `method` can be an API method (`generateContent`, `countTokens`, …): 1 to 64 letters.
pub fn valid_method(method: &str) -> bool {
    !method.is_empty() && method.len() <= 64 && method.bytes().all(|c| c.is_ascii_alphabetic())
}

/// A model name as Gemini spells it in paths, `models/` stripped, if it is a valid id.
pub fn model_id(model: &str) -> Result<&str, InvalidName> {
    let id = model.strip_prefix("models/").unwrap_or(model);
    if valid_model(id) {
        Ok(id)
    } else {
        Err(InvalidName {
            what: format!("model name '{}'", id.escape_debug()),
            reason: "a model id is 1 to 128 letters, digits, '.', '-' or '_', starting with a letter or digit",
        })
    }
}

fn method_name(method: &str) -> Result<&str, InvalidName> {
    if valid_method(method) {
        Ok(method)
    } else {
        Err(InvalidName {
            what: format!("method '{}'", method.escape_debug()),
            reason: "a method is 1 to 64 letters",
        })
    }
}

impl Transport {
    /// The URL of a resource path: `files`, `cachedContents`, `batches`, `{collection}/{id}`,
    /// `batches/{id}:cancel`, `operations/{id}`; each id validated like a resource name (1 to
    /// 128 of `[A-Za-z0-9_-]`), so no `/`, `.`, `%`, `?`, `#` or `:` reaches the upstream path.
    pub fn resource_url(&self, path: &str) -> Result<String, InvalidName> {
        let bad = || InvalidName {
            what: format!(
                "resource path '{}'",
                path.chars().take(200).collect::<String>().escape_debug()
            ),
            reason: "a resource path is files, cachedContents or batches, optionally /ID (1 to 128 letters, digits, '-' or '_'), or batches/ID:cancel",
        };
        const COLLECTIONS: [&str; 4] = ["files", "cachedContents", "batches", "operations"];
        let (collection, rest) = match path.split_once('/') {
            Some((c, r)) => (c, Some(r)),
            None => (path, None),
        };
        if !COLLECTIONS.contains(&collection) {
            return Err(bad());
        }
        match rest {
            None if collection != "operations" => Ok(format!("{}/{collection}", self.base)),
            None => Err(bad()),
            Some(r) => {
                let (id, action) = match r.split_once(':') {
                    Some((id, a)) => (id, Some(a)),
                    None => (r, None),
                };
                if !keyturn_core::resources::valid_id(id) {
                    return Err(bad());
                }
                match action {
                    None => Ok(format!("{}/{collection}/{id}", self.base)),
                    Some("cancel") if collection == "batches" || collection == "operations" => {
                        Ok(format!("{}/{collection}/{id}:cancel", self.base))
                    }
                    Some(_) => Err(bad()),
                }
            }
        }
    }

    /// A collection's list URL with its paging: `page_size` a number, `page_token` encoded as a
    /// query value (whatever it holds, it stays one value).
    pub fn list_url(
        &self,
        collection: &str,
        page_size: Option<u32>,
        page_token: Option<&str>,
    ) -> Result<String, InvalidName> {
        let base = self.resource_url(collection)?;
        if collection.contains('/') {
            return Err(InvalidName {
                what: format!("collection '{}'", collection.escape_debug()),
                reason: "only files, cachedContents and batches are listed",
            });
        }
        let mut url = reqwest::Url::parse(&base).map_err(|_| InvalidName {
            what: "the base URL".to_owned(),
            reason: "it does not parse as a URL",
        })?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(n) = page_size {
                q.append_pair("pageSize", &n.to_string());
            }
            if let Some(t) = page_token {
                q.append_pair("pageToken", t);
            }
        }
        Ok(url.into())
    }

    /// A file's bytes: `{root}/download/{version}/files/{id}:download?alt=media`, from a
    /// `files/{id}` name (a batch job's `responsesFile`), the id validated like any resource id.
    pub fn download_url(&self, file: &str) -> Result<String, InvalidName> {
        match file.strip_prefix("files/") {
            Some(id) if keyturn_core::resources::valid_id(id) => Ok(format!(
                "{}/download/{}/files/{id}:download?alt=media",
                self.root, self.version
            )),
            _ => Err(InvalidName {
                what: format!(
                    "file name '{}'",
                    file.chars().take(200).collect::<String>().escape_debug()
                ),
                reason: "a file name is files/ID (1 to 128 letters, digits, '-' or '_')",
            }),
        }
    }

    /// Where uploads start: `{root}/upload/{version}/files`.
    pub fn upload_url(&self) -> String {
        format!("{}/upload/{}/files", self.root, self.version)
    }

    /// Checks an upload session URL the upstream answered (`X-Goog-Upload-URL`): it must be on
    /// the configured scheme, host and port, at `/upload/{version}/files`, with no userinfo and
    /// no fragment, before a key is ever sent to it. Gemini's carries its session id in the
    /// query (`upload_id`), which is kept.
    pub fn checked_upload_session(&self, answered: &str) -> Result<String, InvalidName> {
        let bad = |reason: &'static str| InvalidName {
            what: "the upload session URL the upstream answered".to_owned(),
            reason,
        };
        let ours = reqwest::Url::parse(&self.upload_url())
            .map_err(|_| bad("the configured base URL does not parse"))?;
        let theirs = reqwest::Url::parse(answered).map_err(|_| bad("it does not parse"))?;
        if theirs.scheme() != ours.scheme()
            || theirs.host_str() != ours.host_str()
            || theirs.port_or_known_default() != ours.port_or_known_default()
        {
            return Err(bad("it points at another host than GEMINI_BASE_URL"));
        }
        if !theirs.username().is_empty()
            || theirs.password().is_some()
            || theirs.fragment().is_some()
        {
            return Err(bad("it carries credentials or a fragment"));
        }
        if theirs.path() != ours.path() {
            return Err(bad("it is not the upload path"));
        }
        Ok(theirs.into())
    }

    /// `{base}/{version}/models/{model}:{method}`, from a valid model id and method.
    pub fn model_url(&self, model: &str, method: &str) -> Result<String, InvalidName> {
        Ok(format!(
            "{}/models/{}:{}",
            self.base,
            model_id(model)?,
            method_name(method)?
        ))
    }

    /// `{base}/{version}/models/{model}`, from a valid model id.
    pub fn model_info_url(&self, model: &str) -> Result<String, InvalidName> {
        Ok(format!("{}/models/{}", self.base, model_id(model)?))
    }

    /// `{base}/{version}/models`.
    pub fn models_url(&self) -> String {
        format!("{}/models", self.base)
    }

    /// `{base}/{version}/openai/{route}`: a fixed path, nothing from the request in it.
    pub fn openai_url(&self, route: OpenAiRoute) -> String {
        format!("{}/openai/{}", self.base, route.path())
    }

    /// The URL of one of the paths keyturn sends without metering: `models`, `models/{model}`
    /// or `models/{model}:{method}`, and on the OpenAI-compatible surface `openai/models` and
    /// `openai/models/{model}`; each segment validated, and the header the key goes in.
    /// Anything else is refused.
    pub fn unmetered_url(&self, path: &str) -> Result<(String, KeyHeader), InvalidName> {
        let Some(rest) = path.strip_prefix("openai/") else {
            return Ok((self.path_url(path)?, KeyHeader::GoogApiKey));
        };
        let url = match rest.strip_prefix("models") {
            Some("") => format!("{}/openai/models", self.base),
            Some(m) if m.starts_with('/') => {
                format!("{}/openai/models/{}", self.base, model_id(&m[1..])?)
            }
            _ => {
                return Err(InvalidName {
                    what: format!("path '{}'", path.escape_debug()),
                    reason: "only openai/models and openai/models/{model} are sent upstream without metering",
                });
            }
        };
        Ok((url, KeyHeader::Bearer))
    }

    /// The URL of one of the paths keyturn sends without metering: `models`, `models/{model}`
    /// or `models/{model}:{method}`, each segment validated. Anything else is refused.
    pub fn path_url(&self, path: &str) -> Result<String, InvalidName> {
        if path == "models" {
            return Ok(self.models_url());
        }
        let Some(name) = path.strip_prefix("models/") else {
            return Err(InvalidName {
                what: format!("path '{}'", path.escape_debug()),
                reason: "only models, models/{model} and models/{model}:{method} are sent upstream",
            });
        };
        match name.split_once(':') {
            Some((model, method)) => self.model_url(model, method),
            None => self.model_info_url(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TransportConfig;

    fn transport(base: &str) -> Transport {
        Transport::new(&TransportConfig {
            base_url: base.to_owned(),
            ..TransportConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn resource_urls_come_only_from_valid_ids() {
        let t = transport("http://127.0.0.1:9/");
        assert_eq!(
            t.resource_url("files/abc-1").unwrap(),
            "http://127.0.0.1:9/v1beta/files/abc-1"
        );
        assert_eq!(
            t.resource_url("batches/b1:cancel").unwrap(),
            "http://127.0.0.1:9/v1beta/batches/b1:cancel"
        );
        assert_eq!(
            t.resource_url("cachedContents").unwrap(),
            "http://127.0.0.1:9/v1beta/cachedContents"
        );
        for bad in [
            "files/../models",
            "files/..",
            "files/%2e%2e",
            "files/a%2Fb",
            "files/a/b",
            "files/a?key=x",
            "files/a#x",
            "files/a:delete",
            "files/",
            "models/x",
            "operations",
            "batches/b1:cancel/x",
            "",
        ] {
            assert!(t.resource_url(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn page_tokens_stay_one_query_value() {
        let t = transport("http://127.0.0.1:9");
        let u = t
            .list_url("files", Some(10), Some("a&key=x#y/../z"))
            .unwrap();
        assert_eq!(
            u,
            "http://127.0.0.1:9/v1beta/files?pageSize=10&pageToken=a%26key%3Dx%23y%2F..%2Fz"
        );
        assert!(t.list_url("files/abc", None, None).is_err());
    }

    #[test]
    fn upload_sessions_must_stay_on_the_configured_host() {
        let t = transport("http://127.0.0.1:9");
        assert_eq!(t.upload_url(), "http://127.0.0.1:9/upload/v1beta/files");
        let ok = "http://127.0.0.1:9/upload/v1beta/files?upload_id=xyz&upload_protocol=resumable";
        assert_eq!(t.checked_upload_session(ok).unwrap(), ok);
        for bad in [
            "http://evil.example:9/upload/v1beta/files?upload_id=x",
            "https://127.0.0.1:9/upload/v1beta/files?upload_id=x",
            "http://127.0.0.1:10/upload/v1beta/files?upload_id=x",
            "http://u:p@127.0.0.1:9/upload/v1beta/files?upload_id=x",
            "http://127.0.0.1:9/upload/v1beta/files/../../x?upload_id=x",
            "http://127.0.0.1:9/v1beta/models?upload_id=x",
            "http://127.0.0.1:9/upload/v1beta/files#frag",
            "not a url",
        ] {
            assert!(t.checked_upload_session(bad).is_err(), "{bad} was accepted");
        }
    }
}
