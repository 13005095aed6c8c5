//! The Dockerfile parser and key computation on arbitrary text: never a panic. The first line
//! (up to a newline) is used as a `--target` when it is non-empty, so stage lookups are fuzzed too.
#![no_main]

use std::collections::BTreeMap;

use layercache_shared::key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (first, rest) = text.split_once('\n').unwrap_or(("", text));
    let target = (!first.is_empty() && first.len() < 64).then_some(first);
    let mut args = BTreeMap::new();
    args.insert("VERSION".to_string(), "1.0".to_string());
    let _ = key::compute(rest, &args, target, &key::Platform::host());
});
