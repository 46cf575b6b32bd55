//! llama.cpp's legacy `.dat` importance matrices from arbitrary bytes: never a panic, and
//! every count is checked against the bytes left before anything is allocated.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = switchyard::imatrix::Imatrix::parse_legacy(data, "fuzz") {
        // Whatever parsed came from the input: it cannot hold more values than bytes / 4.
        assert!(m.len() * 4 <= data.len());
    }
});
