//! Little-endian cursors that encode and decode the fixed-layout records guest and host exchange.
#![forbid(unsafe_code)]

/// Writes little-endian fields into a byte buffer; running past the end is reported, not a panic.
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflowed: bool,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Writer {
            buf,
            pos: 0,
            overflowed: false,
        }
    }

    pub fn put_bytes(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.pos..self.pos + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos += bytes.len();
            }
            None => self.overflowed = true,
        }
    }

    pub fn put_u32(&mut self, v: u32) {
        self.put_bytes(&v.to_le_bytes());
    }

    pub fn put_u64(&mut self, v: u64) {
        self.put_bytes(&v.to_le_bytes());
    }

    /// Bytes written so far, or `None` if a write did not fit.
    pub fn finish(self) -> Option<usize> {
        (!self.overflowed).then_some(self.pos)
    }
}

/// Reads little-endian fields from a byte buffer; a short buffer yields `None`.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let src = self.buf.get(self.pos..self.pos.checked_add(N)?)?;
        self.pos += N;
        src.try_into().ok()
    }

    pub fn u32(&mut self) -> Option<u32> {
        self.bytes::<4>().map(u32::from_le_bytes)
    }

    pub fn u64(&mut self) -> Option<u64> {
        self.bytes::<8>().map(u64::from_le_bytes)
    }
}
