//! The guest's console output: optionally streamed to stdout, always kept in a bounded capture
//! for tests and reports. The kvm backend writes what the guest prints on COM1 into it, the
//! sim what its MM logs.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex};

/// Bytes of guest output the capture keeps: the guest decides how much it prints, so the
/// capture is a ring of the most recent output, not an unbounded buffer.
pub const CAPTURE_LIMIT: usize = 1 << 20;

/// The most recent guest output, and how much older output it dropped.
#[derive(Default)]
struct Capture {
    bytes: VecDeque<u8>,
    dropped: u64,
}

/// Where serial bytes go: optionally stdout, always an in-memory capture for tests and reports.
#[derive(Clone)]
pub struct ConsoleSink {
    echo: bool,
    captured: Arc<Mutex<Capture>>,
}

impl ConsoleSink {
    pub fn new(echo: bool) -> Self {
        ConsoleSink {
            echo,
            captured: Arc::default(),
        }
    }

    /// What the guest printed: all of it, or a note of how much was dropped and then the last
    /// [`CAPTURE_LIMIT`] bytes.
    pub fn captured(&self) -> String {
        let capture = self.captured.lock().unwrap_or_else(|e| e.into_inner());
        let (front, back) = capture.bytes.as_slices();
        let text = String::from_utf8_lossy(&[front, back].concat()).into_owned();
        match capture.dropped {
            0 => text,
            n => format!("[... {n} earlier bytes dropped ...]\n{text}"),
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        {
            let mut capture = self.captured.lock().unwrap_or_else(|e| e.into_inner());
            let keep = buf.len().min(CAPTURE_LIMIT);
            let excess = (capture.bytes.len() + keep).saturating_sub(CAPTURE_LIMIT);
            capture.bytes.drain(..excess);
            capture.bytes.extend(&buf[buf.len() - keep..]);
            capture.dropped += (excess + buf.len() - keep) as u64;
        }
        if self.echo {
            let mut out = std::io::stdout().lock();
            out.write_all(buf)?;
            if buf.contains(&b'\n') {
                out.flush()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.echo {
            std::io::stdout().flush()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_capture_keeps_the_most_recent_output_within_its_limit() {
        let mut sink = ConsoleSink::new(false);
        sink.write_all(b"boot\n").unwrap();
        let chunk = vec![b'x'; CAPTURE_LIMIT / 2 + 1];
        for _ in 0..4 {
            sink.write_all(&chunk).unwrap();
        }
        sink.write_all(b"end\n").unwrap();
        let text = sink.captured();
        assert!(text.starts_with("[... "), "{}", &text[..40]);
        assert!(text.ends_with("xend\n"));
        let kept = text.len() - text.find('\n').unwrap() - 1;
        assert_eq!(kept, CAPTURE_LIMIT);
    }
}
