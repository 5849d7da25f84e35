//! Finding the end of a chunked HTTP/1.1 body (RFC 9112, section 7.1) while it is relayed as it
//! is: the bytes are passed on untouched, only their framing is followed.

/// Where a chunked body stands after the bytes seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Chunked {
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Reading a chunk size: `digits` hex digits so far, worth `size`.
    #[default]
    SizeStart,
    Size {
        size: u64,
    },
    /// After the size: an extension (ignored) until CRLF, or the CRLF itself.
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, each ending in CRLF, until an empty one.
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// The chunked framing is broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body")]
pub(crate) struct Malformed;

/// Chunk sizes past this are refused (they would overflow, and no answer is that large).
const MAX_CHUNK: u64 = 1 << 48;

impl Chunked {
    /// Follows `buf`; returns how many of its bytes belong to the body and whether the body
    /// ended there (the rest, if any, is not part of it).
    pub fn advance(&mut self, buf: &[u8]) -> Result<(usize, bool), Malformed> {
        let mut i = 0;
        while i < buf.len() {
            let b = buf[i];
            self.state = match self.state {
                State::SizeStart => State::Size {
                    size: u64::from(hex(b).ok_or(Malformed)?),
                },
                State::Size { size } => match (b, hex(b)) {
                    (_, Some(d)) => {
                        if size > MAX_CHUNK {
                            return Err(Malformed);
                        }
                        State::Size {
                            size: size * 16 + u64::from(d),
                        }
                    }
                    (b'\r', _) => State::SizeLf { size },
                    (b';' | b' ' | b'\t', _) => State::Extension { size },
                    _ => return Err(Malformed),
                },
                State::Extension { size } => match b {
                    b'\r' => State::SizeLf { size },
                    b'\n' => return Err(Malformed),
                    _ => State::Extension { size },
                },
                State::SizeLf { size } => match (b, size) {
                    (b'\n', 0) => State::TrailerStart,
                    (b'\n', n) => State::Data { left: n },
                    _ => return Err(Malformed),
                },
                State::Data { left } => {
                    // Skip the chunk's data in one step.
                    let take = (buf.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data { left }
                    };
                    continue;
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::SizeStart,
                State::DataCr | State::DataLf => return Err(Malformed),
                State::TrailerStart => match b {
                    b'\r' => State::EndLf,
                    b'\n' => return Err(Malformed),
                    _ => State::Trailer,
                },
                State::Trailer => match b {
                    b'\r' => State::TrailerLf,
                    b'\n' => return Err(Malformed),
                    _ => State::Trailer,
                },
                State::TrailerLf if b == b'\n' => State::TrailerStart,
                State::EndLf if b == b'\n' => State::Done,
                State::TrailerLf | State::EndLf => return Err(Malformed),
                State::Done => return Ok((i, true)),
            };
            i += 1;
            if self.state == State::Done {
                return Ok((i, true));
            }
        }
        Ok((i, self.state == State::Done))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` in pieces of `step` bytes; returns the body's length and whether it ended.
    fn feed(body: &[u8], step: usize) -> Result<(usize, bool), Malformed> {
        let mut c = Chunked::default();
        let mut used = 0;
        for piece in body.chunks(step) {
            let (n, done) = c.advance(piece)?;
            used += n;
            if done {
                return Ok((used, true));
            }
        }
        Ok((used, false))
    }

    #[test]
    fn finds_the_end_of_bodies_fed_in_any_pieces() {
        let body = b"5\r\nhello\r\n1a;ext=1\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-t: 1\r\n\r\nGET / HTTP/1.1";
        let end = body.len() - b"GET / HTTP/1.1".len();
        for step in 1..=body.len() {
            assert_eq!(feed(body, step), Ok((end, true)), "step {step}");
        }
        assert_eq!(feed(b"0\r\n\r\n", 2), Ok((5, true)));
    }

    #[test]
    fn an_unfinished_body_is_not_ended() {
        assert_eq!(feed(b"5\r\nhel", 3), Ok((6, false)));
        assert_eq!(feed(b"0\r\n", 3), Ok((3, false)));
        assert_eq!(feed(b"0\r\nx: y\r\n", 1), Ok((9, false)));
    }

    #[test]
    fn broken_framing_is_refused() {
        for bad in [
            &b"x\r\n"[..],
            b"5\nhello\r\n",
            b"5\r\nhelloXY",
            b"0\r\n\n",
            b"fffffffffffffffffff\r\n",
            b"\r\n",
        ] {
            assert_eq!(
                feed(bad, 1),
                Err(Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
