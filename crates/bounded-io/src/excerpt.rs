//! Bad input as an error line quotes it: at most [`MAX_QUOTED`] bytes, then `...` and its
//! length, so a 10 MB token in a file or on the command line makes a one-line error.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::Path;

/// The most bytes of one piece of input an error line quotes.
pub const MAX_QUOTED: usize = 64;

/// A piece of input as an error quotes it: `{}` prints its text, `{:?}` its text quoted and
/// escaped; either way at most [`MAX_QUOTED`] bytes of it, then `... (N bytes)` when it is
/// longer.
#[derive(Clone, Copy)]
pub struct Excerpt<'a>(&'a str);

/// `text` as an error quotes it (see [`Excerpt`]).
pub fn excerpt(text: &str) -> Excerpt<'_> {
    Excerpt(text)
}

/// `path` as an error shows it, cut like any input: a path read from a file (a reproducer's
/// recorded kernel) may be as long as the file.
pub fn path(path: &Path) -> String {
    excerpt(&path.to_string_lossy()).to_string()
}

impl<'a> Excerpt<'a> {
    /// The part shown (cut at a character boundary), and the whole length when it is cut.
    fn parts(self) -> (&'a str, Option<usize>) {
        if self.0.len() <= MAX_QUOTED {
            return (self.0, None);
        }
        let end = (0..=MAX_QUOTED)
            .rev()
            .find(|&i| self.0.is_char_boundary(i))
            .unwrap_or(0);
        (&self.0[..end], Some(self.0.len()))
    }
}

impl fmt::Display for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (shown, cut) = self.parts();
        f.write_str(shown)?;
        cut.map_or(Ok(()), |len| write!(f, "... ({len} bytes)"))
    }
}

impl fmt::Debug for Excerpt<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (shown, cut) = self.parts();
        write!(f, "{shown:?}")?;
        cut.map_or(Ok(()), |len| write!(f, "... ({len} bytes)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_input_is_quoted_whole() {
        assert_eq!(format!("{}", excerpt("zz")), "zz");
        assert_eq!(format!("{:?}", excerpt("a\"b")), "\"a\\\"b\"");
        let exactly = "x".repeat(MAX_QUOTED);
        assert_eq!(format!("{}", excerpt(&exactly)), exactly);
    }

    #[test]
    fn long_input_is_cut_to_64_bytes_then_its_length() {
        let token = "y".repeat(10_000_000);
        let shown = format!("{:?}", excerpt(&token));
        assert_eq!(
            shown,
            format!("\"{}\"... (10000000 bytes)", "y".repeat(MAX_QUOTED))
        );
        assert_eq!(
            format!("{}", excerpt(&token)),
            format!("{}... (10000000 bytes)", "y".repeat(MAX_QUOTED))
        );
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        // 63 ASCII bytes, then a 3-byte character that would straddle byte 64.
        let text = format!("{}€€", "a".repeat(63));
        let shown = format!("{}", excerpt(&text));
        assert_eq!(
            shown,
            format!("{}... ({} bytes)", "a".repeat(63), text.len())
        );
    }
}
