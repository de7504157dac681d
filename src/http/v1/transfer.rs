//! `Content-Transfer-Encoding: base64` on a v1 upload, decoded as the body streams.
//!
//! The seed lab pipes `base64 cirros.img` into curl with this header; Glance v1 ignored it and
//! stored the base64 text. Here the text is decoded on the way to the blob store, so the image
//! is the original file and its checksum the file's md5. Line breaks and other ASCII white
//! space (what `base64` wraps its output with) are skipped; anything else that is not base64,
//! or data after the closing `=` padding, fails the upload. Memory is the chunk being decoded
//! plus at most three characters carried to the next one.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};

/// The transfer encodings a v1 upload may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferEncoding {
    /// No header, or one of the identity encodings (`binary`, `8bit`, `7bit`).
    Identity,
    Base64,
}

impl TransferEncoding {
    /// Reads a `Content-Transfer-Encoding` value; `None` for encodings not served.
    pub fn parse(value: Option<&str>) -> Option<TransferEncoding> {
        match value
            .map(|value| value.trim().to_ascii_lowercase())
            .as_deref()
        {
            None | Some("" | "binary" | "8bit" | "7bit" | "identity") => {
                Some(TransferEncoding::Identity)
            }
            Some("base64") => Some(TransferEncoding::Base64),
            Some(_) => None,
        }
    }
}

/// Incremental base64 decoding state.
#[derive(Default)]
struct Decoder {
    /// Up to three characters of an unfinished quantum.
    carry: Vec<u8>,
    /// A quantum with `=` padding was decoded: the data has ended.
    ended: bool,
}

impl Decoder {
    /// Decodes what `chunk` completes; keeps an unfinished quantum for the next chunk.
    fn feed(&mut self, chunk: &[u8]) -> Result<Bytes, String> {
        let mut text = std::mem::take(&mut self.carry);
        text.reserve(chunk.len());
        text.extend(
            chunk
                .iter()
                .copied()
                .filter(|byte| !byte.is_ascii_whitespace()),
        );
        if text.is_empty() {
            return Ok(Bytes::new());
        }
        if self.ended {
            return Err("base64 data continues after its padding".into());
        }
        let whole = text.len() / 4 * 4;
        self.carry = text.split_off(whole);
        if whole == 0 {
            return Ok(Bytes::new());
        }
        // Padding may only close the data: it is allowed in the last quantum decoded so far,
        // and anything after it is refused above.
        if let Some(position) = text.iter().position(|&byte| byte == b'=') {
            if position < whole - 4 || !self.carry.is_empty() {
                return Err("base64 data continues after its padding".into());
            }
            self.ended = true;
        }
        STANDARD
            .decode(&text)
            .map(Bytes::from)
            .map_err(|error| format!("the body is not valid base64: {error}"))
    }

    /// The end of the body: an unfinished quantum is an error.
    fn finish(&self) -> Result<(), String> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            Err("the base64 data ends in the middle of a quantum".into())
        }
    }
}

/// Decodes a base64 body as it streams; errors end the stream (and fail the upload).
pub fn decode_base64<S>(body: S) -> impl Stream<Item = Result<Bytes, String>> + Send
where
    S: Stream<Item = Result<Bytes, String>> + Send + Unpin,
{
    futures_util::stream::unfold(
        (body, Decoder::default(), false),
        |(mut body, mut decoder, done)| async move {
            if done {
                return None;
            }
            loop {
                match body.next().await {
                    Some(Ok(chunk)) => match decoder.feed(&chunk) {
                        Ok(decoded) if decoded.is_empty() => continue,
                        Ok(decoded) => return Some((Ok(decoded), (body, decoder, false))),
                        Err(error) => return Some((Err(error), (body, decoder, true))),
                    },
                    Some(Err(error)) => return Some((Err(error), (body, decoder, true))),
                    None => {
                        return match decoder.finish() {
                            Ok(()) => None,
                            Err(error) => Some((Err(error), (body, decoder, true))),
                        };
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_chunks(text: &[u8], size: usize) -> Result<Vec<u8>, String> {
        let mut decoder = Decoder::default();
        let mut out = Vec::new();
        for chunk in text.chunks(size.max(1)) {
            out.extend_from_slice(&decoder.feed(chunk)?);
        }
        decoder.finish()?;
        Ok(out)
    }

    #[test]
    fn wrapped_text_decodes_whatever_the_chunking() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        for cut in [0usize, 1, 2, 998, 999] {
            let original = &data[..data.len() - cut];
            let mut text = Vec::new();
            // `base64` wraps at 76 characters with a newline; add a CRLF too.
            for (i, line) in STANDARD.encode(original).as_bytes().chunks(76).enumerate() {
                text.extend_from_slice(line);
                text.extend_from_slice(if i % 2 == 0 { b"\n" } else { b"\r\n" });
            }
            for size in [1, 3, 4, 5, 77, 4096] {
                assert_eq!(
                    decode_in_chunks(&text, size).as_deref(),
                    Ok(original),
                    "cut {cut} chunk {size}"
                );
            }
        }
    }

    #[test]
    fn bad_base64_is_refused() {
        assert!(decode_in_chunks(b"QUJD*EVG", 3).is_err());
        assert!(
            decode_in_chunks(b"QUJDRA", 4).is_err(),
            "unfinished quantum"
        );
        assert!(
            decode_in_chunks(b"QQ==QUJD", 2).is_err(),
            "data after padding"
        );
        assert!(decode_in_chunks(b"QQ==\nQUJD\n", 100).is_err());
        assert!(decode_in_chunks(b"QQ==", 1).is_ok());
        assert_eq!(decode_in_chunks(b"", 1), Ok(Vec::new()));
    }

    #[test]
    fn encodings() {
        assert_eq!(
            TransferEncoding::parse(Some(" Base64 ")),
            Some(TransferEncoding::Base64)
        );
        assert_eq!(
            TransferEncoding::parse(None),
            Some(TransferEncoding::Identity)
        );
        assert_eq!(
            TransferEncoding::parse(Some("binary")),
            Some(TransferEncoding::Identity)
        );
        assert_eq!(TransferEncoding::parse(Some("quoted-printable")), None);
    }
}
