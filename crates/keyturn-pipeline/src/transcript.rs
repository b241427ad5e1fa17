//! Transcripts: WebVTT (`.vtt`), SubRip (`.srt`) and plain text (`.txt`) into cues; short cues
//! merged; cues chunked by estimated tokens with overlap. Bad input is a typed error naming the
//! line, never a panic.

use std::borrow::Cow;
use std::fmt;

/// Largest transcript read (bytes).
pub const MAX_BYTES: usize = 20 * 1024 * 1024;

/// One cue.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Cue {
    /// Start (ms), when the format has times.
    pub start_ms: Option<u64>,
    /// End (ms).
    pub end_ms: Option<u64>,
    /// Speaker, from a `<v Name>` tag or a `Name:` prefix.
    pub speaker: Option<String>,
    /// Text, tags removed.
    pub text: String,
}

/// Why a file is not a transcript.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Larger than [`MAX_BYTES`].
    #[error("larger than {} MiB", MAX_BYTES / 1024 / 1024)]
    TooLarge,
    /// Contains NUL bytes.
    #[error("binary content, not a transcript")]
    Binary,
    /// Not UTF-8 (nor UTF-16 with a BOM).
    #[error("not UTF-8 text")]
    NotUtf8,
    /// Starts with a UTF-16 BOM but is not valid UTF-16.
    #[error("starts like UTF-16 text but is not valid UTF-16")]
    NotUtf16,
    /// No cue in it.
    #[error("no text in it")]
    Empty,
    /// Malformed at a line.
    #[error("line {line}: {detail}")]
    Malformed {
        /// 1-based line.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// Unknown extension.
    #[error("not a .vtt, .srt or .txt file")]
    UnknownFormat,
}

/// Transcript formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// WebVTT.
    Vtt,
    /// SubRip.
    Srt,
    /// Plain text.
    Txt,
}

impl Format {
    /// By file extension.
    pub fn of(path: &std::path::Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "vtt" => Some(Self::Vtt),
            "srt" => Some(Self::Srt),
            "txt" => Some(Self::Txt),
            _ => None,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Vtt => "vtt",
            Self::Srt => "srt",
            Self::Txt => "txt",
        })
    }
}

/// Bytes to text: size, binary and encoding checks. UTF-8 (a BOM is dropped), and UTF-16 in
/// either byte order when it starts with its BOM (as Windows tools write transcripts); borrowed
/// when the bytes are UTF-8 already.
pub fn decode(bytes: &[u8]) -> Result<Cow<'_, str>, ParseError> {
    if bytes.len() > MAX_BYTES {
        return Err(ParseError::TooLarge);
    }
    let utf16 = match bytes {
        [0xff, 0xfe, rest @ ..] => Some((rest, u16::from_le_bytes as fn([u8; 2]) -> u16)),
        [0xfe, 0xff, rest @ ..] => Some((rest, u16::from_be_bytes as fn([u8; 2]) -> u16)),
        _ => None,
    };
    if let Some((rest, unit)) = utf16 {
        if rest.len() % 2 != 0 {
            return Err(ParseError::NotUtf16);
        }
        let units: Vec<u16> = rest.chunks_exact(2).map(|c| unit([c[0], c[1]])).collect();
        if units.contains(&0) {
            return Err(ParseError::Binary);
        }
        return String::from_utf16(&units)
            .map(Cow::Owned)
            .map_err(|_| ParseError::NotUtf16);
    }
    if bytes.contains(&0) {
        return Err(ParseError::Binary);
    }
    let text = std::str::from_utf8(bytes).map_err(|_| ParseError::NotUtf8)?;
    Ok(Cow::Borrowed(text.strip_prefix('\u{feff}').unwrap_or(text)))
}

/// Parses a transcript.
pub fn parse(format: Format, bytes: &[u8]) -> Result<Vec<Cue>, ParseError> {
    let text = decode(bytes)?;
    let text = text.as_ref();
    let cues = match format {
        Format::Vtt => parse_vtt(text)?,
        Format::Srt => parse_srt(text)?,
        Format::Txt => parse_txt(text),
    };
    let cues: Vec<Cue> = cues.into_iter().filter(|c| !c.text.is_empty()).collect();
    if cues.is_empty() {
        return Err(ParseError::Empty);
    }
    Ok(cues)
}

/// `hh:mm:ss.mmm`, `mm:ss.mmm` (VTT) or `hh:mm:ss,mmm` (SRT) to ms.
fn timestamp(s: &str) -> Option<u64> {
    let s = s.trim();
    let (hms, frac) = s.rsplit_once(['.', ','])?;
    if frac.len() != 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms: u64 = frac.parse().ok()?;
    let parts: Vec<&str> = hms.split(':').collect();
    let (h, m, sec) = match parts.as_slice() {
        [h, m, s] => (
            h.parse::<u64>().ok()?,
            m.parse::<u64>().ok()?,
            s.parse::<u64>().ok()?,
        ),
        [m, s] => (0, m.parse::<u64>().ok()?, s.parse::<u64>().ok()?),
        _ => return None,
    };
    if m >= 60 || sec >= 60 {
        return None;
    }
    Some(((h * 60 + m) * 60 + sec) * 1000 + ms)
}

fn timing(line: &str, lineno: usize) -> Result<(u64, u64), ParseError> {
    let bad = |d: &str| ParseError::Malformed {
        line: lineno,
        detail: d.to_owned(),
    };
    let (a, rest) = line
        .split_once("-->")
        .ok_or_else(|| bad("expected a '-->' timing line"))?;
    // Cue settings follow the end time (VTT): "00:01.000 --> 00:02.000 align:start".
    let b = rest
        .split_whitespace()
        .next()
        .ok_or_else(|| bad("no end time"))?;
    let start = timestamp(a).ok_or_else(|| bad("bad start time"))?;
    let end = timestamp(b).ok_or_else(|| bad("bad end time"))?;
    if end < start {
        return Err(bad("cue ends before it starts"));
    }
    Ok((start, end))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", " ")
        .replace("&lrm;", "")
        .replace("&rlm;", "")
        .replace("&amp;", "&")
}

/// Removes markup (`<i>`, `<c.x>`, `<00:01.000>`, `</v>`), returning text and the first voice.
fn strip_tags(s: &str) -> (String, Option<String>) {
    let mut out = String::with_capacity(s.len());
    let mut voice = None;
    let mut rest = s;
    while let Some(i) = rest.find('<') {
        out.push_str(&rest[..i]);
        let Some(j) = rest[i..].find('>') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let tag = &rest[i + 1..i + j];
        if let Some(v) = tag.strip_prefix('v').filter(|t| t.starts_with([' ', '.'])) {
            // <v Name> or <v.loud Name>
            let name = v.split_once(' ').map_or("", |(_, n)| n).trim();
            if voice.is_none() && !name.is_empty() {
                voice = Some(unescape(name));
            }
        }
        rest = &rest[i + j + 1..];
    }
    out.push_str(rest);
    (unescape(out.trim()), voice)
}

/// `Name: text` with a short, capitalised name: a speaker prefix.
fn speaker_prefix(line: &str) -> (Option<String>, &str) {
    if let Some((name, text)) = line.split_once(':') {
        let n = name.trim();
        let plausible = !n.is_empty()
            && n.len() <= 40
            && n.chars().next().is_some_and(char::is_uppercase)
            && n.split_whitespace().count() <= 4
            && !n.contains(['.', '?', '!', ',', '"'])
            && !text.starts_with("//")
            && !n.chars().all(|c| c.is_ascii_digit());
        if plausible {
            return (Some(n.to_owned()), text.trim_start());
        }
    }
    (None, line)
}

fn blocks(text: &str) -> Vec<(usize, Vec<&str>)> {
    let mut out = Vec::new();
    let mut cur: Vec<&str> = Vec::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            if !cur.is_empty() {
                out.push((start, std::mem::take(&mut cur)));
            }
            start = i + 2;
        } else {
            if cur.is_empty() {
                start = i + 1;
            }
            cur.push(line);
        }
    }
    if !cur.is_empty() {
        out.push((start, cur));
    }
    out
}

fn cue_from(lines: &[&str], start_ms: u64, end_ms: u64) -> Cue {
    let mut speaker = None;
    let mut parts = Vec::new();
    for l in lines {
        let (t, v) = strip_tags(l);
        if speaker.is_none() {
            speaker = v;
        }
        parts.push(t);
    }
    let mut text = parts.join(" ").trim().to_owned();
    if speaker.is_none() {
        let (s, t) = speaker_prefix(&text);
        if let Some(s) = s {
            speaker = Some(s);
            text = t.to_owned();
        }
    }
    Cue {
        start_ms: Some(start_ms),
        end_ms: Some(end_ms),
        speaker,
        text,
    }
}

/// WebVTT.
pub fn parse_vtt(text: &str) -> Result<Vec<Cue>, ParseError> {
    let all = blocks(text);
    let Some((_, header)) = all.first() else {
        return Err(ParseError::Empty);
    };
    let first = header[0].trim_start_matches('\u{feff}');
    if !(first == "WEBVTT" || first.starts_with("WEBVTT ") || first.starts_with("WEBVTT\t")) {
        return Err(ParseError::Malformed {
            line: 1,
            detail: "a WebVTT file starts with WEBVTT".into(),
        });
    }
    let mut cues = Vec::new();
    for (start, lines) in all.iter().skip(1) {
        let head = lines[0];
        if head.starts_with("NOTE") || head == "STYLE" || head == "REGION" {
            continue;
        }
        // An optional identifier line precedes the timing line.
        let (timing_at, lineno) = if head.contains("-->") {
            (0, *start)
        } else if lines.len() > 1 && lines[1].contains("-->") {
            (1, start + 1)
        } else {
            return Err(ParseError::Malformed {
                line: *start,
                detail: "a cue needs a timing line ('00:00:01.000 --> 00:00:04.000')".into(),
            });
        };
        let (a, b) = timing(lines[timing_at], lineno)?;
        cues.push(cue_from(&lines[timing_at + 1..], a, b));
    }
    Ok(cues)
}

/// SubRip.
pub fn parse_srt(text: &str) -> Result<Vec<Cue>, ParseError> {
    let mut cues = Vec::new();
    for (start, lines) in blocks(text) {
        let (timing_at, lineno) = if lines[0].contains("-->") {
            (0, start)
        } else if lines.len() > 1 && lines[1].contains("-->") {
            (1, start + 1)
        } else {
            return Err(ParseError::Malformed {
                line: start,
                detail: "an SRT cue is a number, a timing line and text".into(),
            });
        };
        let (a, b) = timing(lines[timing_at], lineno)?;
        cues.push(cue_from(&lines[timing_at + 1..], a, b));
    }
    Ok(cues)
}

/// Plain text: one cue per non-empty line, `Name: ` prefixes as speakers.
pub fn parse_txt(text: &str) -> Vec<Cue> {
    text.lines()
        .map(|l| l.trim_end_matches('\r').trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (speaker, t) = speaker_prefix(l);
            Cue {
                start_ms: None,
                end_ms: None,
                speaker,
                text: t.to_owned(),
            }
        })
        .collect()
}

/// Merges cues shorter than `min_chars` into the next cue of the same speaker (subtitle lines are
/// often fragments of one sentence).
pub fn merge_short(cues: Vec<Cue>, min_chars: usize) -> Vec<Cue> {
    let mut out: Vec<Cue> = Vec::with_capacity(cues.len());
    for c in cues {
        if let Some(last) = out.last_mut()
            && last.speaker == c.speaker
            && last.text.chars().count() < min_chars
        {
            last.text.push(' ');
            last.text.push_str(&c.text);
            last.end_ms = c.end_ms.or(last.end_ms);
            continue;
        }
        out.push(c);
    }
    out
}

/// Estimated tokens of a text (≈ 4 characters a token, rounded up).
pub fn estimate_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// A chunk of consecutive cues.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Chunk {
    /// Position in the episode.
    pub index: usize,
    /// First cue's start (ms).
    pub start_ms: Option<u64>,
    /// Last cue's end (ms).
    pub end_ms: Option<u64>,
    /// The text, one `Speaker: line` per cue.
    pub text: String,
}

/// Chunks cues to about `target_tokens` each, repeating the last `overlap_cues` cues of a chunk at
/// the start of the next so a sentence cut at a boundary is seen whole once.
pub fn chunk(cues: &[Cue], target_tokens: usize, overlap_cues: usize) -> Vec<Chunk> {
    let line = |c: &Cue| match &c.speaker {
        Some(s) => format!("{s}: {}", c.text),
        None => c.text.clone(),
    };
    let mut chunks = Vec::new();
    let mut i = 0;
    while i < cues.len() {
        let mut j = i;
        let mut tokens = 0;
        while j < cues.len() && (j == i || tokens + estimate_tokens(&cues[j].text) <= target_tokens)
        {
            tokens += estimate_tokens(&cues[j].text);
            j += 1;
        }
        chunks.push(Chunk {
            index: chunks.len(),
            start_ms: cues[i].start_ms,
            end_ms: cues[j - 1].end_ms,
            text: cues[i..j].iter().map(line).collect::<Vec<_>>().join("\n"),
        });
        if j >= cues.len() {
            break;
        }
        i = j.saturating_sub(overlap_cues).max(i + 1);
    }
    chunks
}

/// `hh:mm:ss` for a cue time.
pub fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf16_with_a_bom_in_either_order_and_utf8_with_a_bom_decode() {
        let text = "WEBVTT\n\n00:01.000 --> 00:02.000\n<v Zoë>Grüße, 世界\n";
        let mut le = vec![0xff, 0xfe];
        le.extend(text.encode_utf16().flat_map(u16::to_le_bytes));
        let mut be = vec![0xfe, 0xff];
        be.extend(text.encode_utf16().flat_map(u16::to_be_bytes));
        let mut bom8 = vec![0xef, 0xbb, 0xbf];
        bom8.extend(text.as_bytes());
        for bytes in [&le, &be, &bom8] {
            assert_eq!(decode(bytes).unwrap(), text);
            let cues = parse(Format::Vtt, bytes).unwrap();
            assert_eq!(cues[0].speaker.as_deref(), Some("Zoë"));
            assert_eq!(cues[0].text, "Grüße, 世界");
        }
        // An odd length, a lone surrogate, a NUL: refused, never a panic.
        assert_eq!(decode(&le[..le.len() - 1]), Err(ParseError::NotUtf16));
        assert_eq!(decode(&[0xff, 0xfe, 0x00, 0xd8]), Err(ParseError::NotUtf16));
        assert_eq!(
            decode(&[0xff, 0xfe, 0x41, 0x00, 0x00, 0x00]),
            Err(ParseError::Binary)
        );
        // UTF-8 text is borrowed, not copied.
        assert!(matches!(decode(text.as_bytes()), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn vtt_with_bom_crlf_notes_styles_identifiers_settings_and_voices() {
        let text = "\u{feff}WEBVTT - a show\r\n\r\nNOTE made by hand\r\nover two lines\r\n\r\nSTYLE\r\n::cue { color: red }\r\n\r\nintro-1\r\n00:00:01.000 --> 00:00:04.500 align:start position:10%\r\n<v Ada Lovelace>Hello <i>there</i> &amp; welcome.</v>\r\n\r\n00:05.000 --> 00:07.000\r\n<v.loud Charles>Thanks, Ada.\r\nIt is good to be here.\r\n";
        let cues = parse(Format::Vtt, text.as_bytes()).unwrap();
        assert_eq!(cues.len(), 2);
        assert_eq!(cues[0].speaker.as_deref(), Some("Ada Lovelace"));
        assert_eq!(cues[0].text, "Hello there & welcome.");
        assert_eq!((cues[0].start_ms, cues[0].end_ms), (Some(1000), Some(4500)));
        assert_eq!(cues[1].speaker.as_deref(), Some("Charles"));
        assert_eq!(cues[1].text, "Thanks, Ada. It is good to be here.");
        assert_eq!(cues[1].start_ms, Some(5000));
    }

    #[test]
    fn srt_and_txt_with_speaker_prefixes() {
        let srt = "1\n00:00:01,000 --> 00:00:02,000\nGRACE: Ships need software.\n\n2\n00:00:02,500 --> 00:00:03,000\nThey do.\n";
        let cues = parse(Format::Srt, srt.as_bytes()).unwrap();
        assert_eq!(cues[0].speaker.as_deref(), Some("GRACE"));
        assert_eq!(cues[1].speaker, None);
        let txt =
            "Host: Welcome back.\n\nThis line has no speaker: but a colon later, after words.\n";
        let cues = parse(Format::Txt, txt.as_bytes()).unwrap();
        assert_eq!(cues[0].speaker.as_deref(), Some("Host"));
        assert_eq!(cues[1].speaker, None);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert_eq!(parse(Format::Vtt, b"\x00\x01\x02"), Err(ParseError::Binary));
        assert_eq!(
            parse(Format::Txt, &[0x48, 0xe9, 0x41]),
            Err(ParseError::NotUtf8)
        );
        // A UTF-16 BOM followed by half a code unit.
        assert_eq!(
            parse(Format::Txt, &[0xff, 0xfe, 0x41]),
            Err(ParseError::NotUtf16)
        );
        assert_eq!(parse(Format::Txt, b"  \n\n "), Err(ParseError::Empty));
        assert!(matches!(
            parse(Format::Vtt, b"hello\n\n00:01.000 --> 00:02.000\nx"),
            Err(ParseError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            parse(Format::Vtt, b"WEBVTT\n\n00:01.000 --> nope\nx"),
            Err(ParseError::Malformed { line: 3, .. })
        ));
        assert!(matches!(
            parse(Format::Srt, b"1\n00:00:05,000 --> 00:00:01,000\nx"),
            Err(ParseError::Malformed { .. })
        ));
        assert_eq!(parse(Format::Vtt, b"WEBVTT\n"), Err(ParseError::Empty));
    }

    #[test]
    fn merging_and_chunking_with_overlap() {
        let cue = |t: &str, s: Option<&str>| Cue {
            start_ms: Some(0),
            end_ms: Some(1),
            speaker: s.map(str::to_owned),
            text: t.to_owned(),
        };
        let merged = merge_short(
            vec![
                cue("So", Some("A")),
                cue("we began.", Some("A")),
                cue("Yes", Some("B")),
            ],
            10,
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].text, "So we began.");
        let cues: Vec<Cue> = (0..10).map(|i| cue(&"x".repeat(40 + i), None)).collect();
        let chunks = chunk(&cues, 30, 1);
        assert!(chunks.len() >= 4);
        // Each chunk starts with the previous chunk's last cue.
        for w in chunks.windows(2) {
            let last_of_prev = w[0].text.lines().last().unwrap();
            assert_eq!(w[1].text.lines().next().unwrap(), last_of_prev);
        }
        let all: String = chunks
            .iter()
            .map(|c| c.text.clone())
            .collect::<Vec<_>>()
            .join("\n");
        for c in &cues {
            assert!(all.contains(&c.text));
        }
    }
}
