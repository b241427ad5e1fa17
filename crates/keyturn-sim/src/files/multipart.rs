//! A `multipart/related` upload body: the metadata part, then the media part.

/// A multipart upload's metadata, the media part's type, and its bytes.
type Multipart<'a> = (&'a [u8], Option<String>, &'a [u8]);

/// Splits a `multipart/related` body into the metadata part, the media part's type and bytes.
pub(super) fn split_multipart<'a>(
    content_type: &str,
    body: &'a [u8],
) -> Result<Multipart<'a>, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|p| p.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or("multipart upload without a boundary")?;
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = body;
    // Skip the preamble up to the first delimiter.
    let first = find(rest, delim.as_bytes()).ok_or("multipart body without its boundary")?;
    rest = &rest[first + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        let next = find(rest, delim.as_bytes()).ok_or("multipart body not closed")?;
        let part = &rest[..next];
        let part = part.strip_prefix(b"\r\n").unwrap_or(part);
        let part = part.strip_suffix(b"\r\n").unwrap_or(part);
        let (head, data) = match find(part, b"\r\n\r\n") {
            Some(i) => (&part[..i], &part[i + 4..]),
            None => (&b""[..], part),
        };
        let mime = String::from_utf8_lossy(head).lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_owned())
        });
        parts.push((mime, data));
        rest = &rest[next + delim.len()..];
        if parts.len() > 2 {
            return Err("a multipart upload has two parts: metadata and media".into());
        }
    }
    match parts.as_slice() {
        [(_, meta), (mime, data)] => Ok((meta, mime.clone(), data)),
        _ => Err("a multipart upload has two parts: metadata and media".into()),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_related_splits_into_metadata_and_media() {
        let body = b"--xyz\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{\"file\":{\"displayName\":\"a\"}}\r\n--xyz\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.4 bytes\r\n--xyz--\r\n";
        let (meta, mime, data) = split_multipart("multipart/related; boundary=xyz", body).unwrap();
        assert_eq!(meta, b"{\"file\":{\"displayName\":\"a\"}}");
        assert_eq!(mime.as_deref(), Some("application/pdf"));
        assert_eq!(data, b"%PDF-1.4 bytes");
        assert!(split_multipart("multipart/related", body).is_err());
        assert!(split_multipart("multipart/related; boundary=abc", body).is_err());
    }
}
