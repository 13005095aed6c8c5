//! The tarball reader on arbitrary bytes: it must return `Ok` or an error, never panic, hang or
//! allocate without bound. Layers go to an in-memory sink.
#![no_main]

use std::io::Read;

use layercache_shared::archive::{BlobSink, Limits, read_archive};
use libfuzzer_sys::fuzz_target;

/// Keeps only each layer's length: reading it is what exercises the reader.
struct LenSink;

impl BlobSink for LenSink {
    type Handle = u64;
    fn store(&mut self, content: &mut dyn Read) -> std::io::Result<u64> {
        std::io::copy(content, &mut std::io::sink())
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = read_archive(data, &mut LenSink, &Limits::default());
});
