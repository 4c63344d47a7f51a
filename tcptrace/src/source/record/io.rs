//! Reading that tells a short file apart from a failing one.

use std::io::{ErrorKind, Read};

use super::error::RecordError;

/// Fills `buf` as far as the input goes; returns how many bytes it got (less than `buf.len()`
/// only at end of input). `offset` is where `buf` starts in the file, for the error message.
pub(super) fn read_full<R: Read>(
    r: &mut R,
    buf: &mut [u8],
    offset: u64,
) -> Result<usize, RecordError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            // A reader that claims more than it was offered is broken; never slice past the end.
            Ok(n) => got += n.min(buf.len() - got),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(RecordError::Io {
                    offset: offset + got as u64,
                    source,
                });
            }
        }
    }
    Ok(got)
}
