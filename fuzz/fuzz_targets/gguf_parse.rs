//! Fuzzes the GGUF header parser. Beyond "never panics", a header that parses must be accepted
//! by the writer and re-encode to itself: the reader and the writer enforce the same rules.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::gguf::{header_bytes, parse_header, parse_header_without, TensorInfoOut};

fuzz_target!(|data: &[u8]| {
    // Leaving keys out (a host's tokenizer) steps over their values without decoding them: it
    // never panics either, and accepts whatever the full parse accepts, with the same layout.
    let without = parse_header_without(data, "fuzz", "t");
    let Ok(h) = parse_header(data, "fuzz") else { return };
    let w = without.expect("leaving keys out rejects a header the full parse accepted");
    assert_eq!((&w.tensors, w.alignment, w.data_offset), (&h.tensors, h.alignment, h.data_offset));
    assert!(w.metadata.keys().eq(h.metadata.keys().filter(|k| !k.starts_with('t'))), "kept keys differ");

    // Every tensor lies inside the input, so slicing tensor data can never fail later.
    for t in &h.tensors {
        let end = h.data_offset + t.offset + t.n_bytes();
        assert!(end <= data.len() as u64, "tensor '{}' ends at {end}, past {}", t.name, data.len());
    }

    // The writer accepts whatever the reader accepts, and the header it writes is exactly as long
    // as the data offset says.
    let infos: Vec<TensorInfoOut> = h.tensors.iter().map(TensorInfoOut::from).collect();
    let enc = header_bytes(&h.metadata, &infos).expect("writer rejects a header the reader accepted");
    assert_eq!(enc.len() as u64, h.data_offset);

    // For v3 input the re-encoded header is the input's, except that the input's padding (which
    // nobody reads) may be non-zero: mismatches are allowed only in the trailing zeros.
    if h.version == 3 && enc.len() <= data.len() {
        let zeros_from = enc.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        let input = &data[..enc.len()];
        assert_eq!(&enc[..zeros_from], &input[..zeros_from], "re-encoded header differs");
    }

    // Parsing the re-encoded file gives the same header, and re-encoding is idempotent.
    let mut file = enc.clone();
    file.extend_from_slice(&data[enc.len().min(data.len())..]);
    let h2 = parse_header(&file, "fuzz").expect("re-encoded header does not parse");
    assert_eq!(h2.tensors, h.tensors);
    assert_eq!((h2.alignment, h2.data_offset), (h.alignment, h.data_offset));
    assert_eq!(header_bytes(&h2.metadata, &infos).expect("re-encode"), enc);
});
