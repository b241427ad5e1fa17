//! Reading upstream bodies with a bound.
//!
//! An upstream answer is outside input: a broken or hostile server (or a redirect-free proxy in
//! front of Gemini) can send a body that never ends, or an event stream whose one event never
//! ends. Reading such a body whole would hold it all in memory. Every body this crate reads goes
//! through one of these bounds instead:
//!
//! - an answer: [`MAX_ANSWER_BYTES`], refused past it (a Gemini answer is far smaller: 100
//!   embeddings of 3,072 dimensions are about 6 MB of JSON);
//! - an error: [`MAX_ERROR_BYTES`], the rest is not read (Google's errors are a few kilobytes;
//!   the classifier reads what came);
//! - one server-sent event: [`MAX_EVENT_BYTES`], the stream fails past it.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use crate::transport::describe;

/// The largest successful answer read whole.
pub const MAX_ANSWER_BYTES: usize = 32 << 20;
/// How much of an error answer is read.
pub const MAX_ERROR_BYTES: usize = 64 << 10;
/// The largest single event of a streamed answer.
pub const MAX_EVENT_BYTES: usize = 16 << 20;

/// Reads a successful answer whole, refusing one larger than `limit`.
pub async fn read_answer(resp: reqwest::Response, limit: usize) -> Result<Bytes, String> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut body = resp.bytes_stream();
    let mut out = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(describe)?;
        if out.len() + chunk.len() > limit {
            return Err(too_large(limit));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.freeze())
}

/// Reads at most `limit` bytes of an error answer; the rest is dropped with the connection.
/// A body cut by the network yields what arrived.
pub async fn read_error(resp: reqwest::Response, limit: usize) -> Bytes {
    let mut body = resp.bytes_stream();
    let mut out = BytesMut::new();
    while let Some(Ok(chunk)) = body.next().await {
        let room = limit - out.len();
        out.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if out.len() == limit {
            break;
        }
    }
    out.freeze()
}

fn too_large(limit: usize) -> String {
    format!("the answer was larger than {} MiB", limit >> 20)
}

/// A byte stream that fails once one server-sent event (the bytes between two blank lines)
/// grows past `limit`, so the event parser never buffers an endless event.
///
/// It also hands the parser whole lines only: a parser given a long line piece by piece scans
/// what it holds again at each piece, which costs the square of the line's length.
pub fn bounded_events<S, E>(
    inner: S,
    limit: usize,
) -> impl Stream<Item = Result<Bytes, EventTooLarge<E>>> + Send
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
{
    let state = (inner, EventScan::default(), BytesMut::new(), false);
    futures::stream::unfold(
        state,
        move |(mut inner, mut scan, mut partial, ended)| async move {
            if ended {
                return None;
            }
            loop {
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        if scan.feed(&chunk) > limit {
                            let failed = Err(EventTooLarge::Limit(limit));
                            return Some((failed, (inner, scan, BytesMut::new(), true)));
                        }
                        let Some(cut) = chunk.iter().rposition(|&b| b == b'\n') else {
                            partial.extend_from_slice(&chunk);
                            continue;
                        };
                        let mut lines = std::mem::take(&mut partial);
                        lines.extend_from_slice(&chunk[..=cut]);
                        partial.extend_from_slice(&chunk[cut + 1..]);
                        return Some((Ok(lines.freeze()), (inner, scan, partial, false)));
                    }
                    Some(Err(e)) => {
                        let failed = Err(EventTooLarge::Inner(e));
                        return Some((failed, (inner, scan, BytesMut::new(), true)));
                    }
                    None if partial.is_empty() => return None,
                    None => {
                        let rest = Ok(std::mem::take(&mut partial).freeze());
                        return Some((rest, (inner, scan, partial, true)));
                    }
                }
            }
        },
    )
}

/// Why a bounded event stream failed.
#[derive(Debug, thiserror::Error)]
pub enum EventTooLarge<E> {
    /// The transport failed.
    #[error(transparent)]
    Inner(E),
    /// One event grew past the limit.
    #[error("one event of the streamed answer was larger than {} MiB", .0 >> 20)]
    Limit(usize),
}

/// Where a scan of an event stream stands: the bytes of the event in progress and of its
/// current line (a line of only `\r` is blank).
#[derive(Default)]
struct EventScan {
    event: usize,
    line: usize,
}

impl EventScan {
    /// Takes in a chunk and returns the size of the event in progress at its end, or the
    /// largest event completed inside it, whichever is larger.
    fn feed(&mut self, chunk: &[u8]) -> usize {
        let mut largest = 0;
        for &b in chunk {
            match b {
                b'\n' if self.line == 0 => {
                    largest = largest.max(self.event);
                    self.event = 0;
                }
                b'\n' => self.line = 0,
                b'\r' => {}
                _ => {
                    self.line += 1;
                    self.event += 1;
                }
            }
        }
        largest.max(self.event)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_measured_between_blank_lines_whatever_the_line_ends() {
        let mut s = EventScan::default();
        assert_eq!(s.feed(b"data: abc\n\n"), 9);
        assert_eq!(s.feed(b"data: ab"), 8);
        assert_eq!(s.feed(b"c\r\n\r\ndata: x"), 9, "the finished event counts");
        assert_eq!(s.feed(b"\n\n"), 7);
        assert_eq!(
            s.feed(b"data: 1\ndata: 2\n"),
            14,
            "lines of one event add up"
        );
    }

    #[tokio::test]
    async fn a_stream_fails_when_one_event_outgrows_the_limit_and_stays_failed() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"data: 12345\n\n")),
            Ok(Bytes::from_static(b"data: 1234")),
            Ok(Bytes::from_static(b"567890\n\n")),
            Ok(Bytes::from_static(b"data: 1\n\n")),
        ];
        let out: Vec<_> = bounded_events(futures::stream::iter(chunks), 12)
            .collect()
            .await;
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].as_ref().unwrap(), &b"data: 12345\n\n"[..]);
        assert!(
            matches!(out[1], Err(EventTooLarge::Limit(12))),
            "and nothing after"
        );
    }

    #[tokio::test]
    async fn lines_are_handed_on_whole_and_a_last_unfinished_line_at_the_end() {
        let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
            Ok(Bytes::from_static(b"data: 1")),
            Ok(Bytes::from_static(b"23")),
            Ok(Bytes::from_static(b"\n\ndata: 4")),
            Ok(Bytes::from_static(b"5\n\ndata: 6")),
        ];
        let out: Vec<Bytes> = bounded_events(futures::stream::iter(chunks), 100)
            .map(Result::unwrap)
            .collect()
            .await;
        let want: [&[u8]; 3] = [b"data: 123\n\n", b"data: 45\n\n", b"data: 6"];
        assert_eq!(out, want);
    }
}
