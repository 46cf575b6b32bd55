//! A bundle from arbitrary bytes: opening, validating every delta and decoding every expert of
//! every tensor, and routing with its router, must end in Ok or a clear error, never a panic.
//! Seeds: the golden bundle (and any bundle with a router).
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;
use switchyard::bundle::{materialize, Bundle};
use switchyard::codec::Output;
use switchyard::router::PromptRouter;

fuzz_target!(|data: &[u8]| {
    // The reader maps files; a file in memory-backed /dev/shm keeps that cheap.
    let Ok(mut f) = tempfile::NamedTempFile::new_in("/dev/shm") else { return };
    if f.write_all(data).is_err() {
        return;
    }
    if let Ok(Some(router)) = PromptRouter::open(f.path()) {
        // tokens from the input itself, in and out of the vocabulary
        let tokens: Vec<i32> = data.iter().take(64).map(|&b| b as i32 * 7 - 3).collect();
        let _ = router.route(&tokens, None);
        let _ = router.route(&[], Some(0.5));
    }
    let Ok(bundle) = Bundle::open(f.path()) else { return };
    let _ = bundle.verify_base();
    if bundle.validate_all().is_err() {
        return;
    }
    for e in 0..bundle.experts.len() {
        for t in bundle.base_tensors() {
            let Ok(Some(delta)) = bundle.delta(e, &t.name) else { continue };
            // Bounded by the input: every element's base bytes are in the file.
            let mut out = vec![0.0f32; t.n_elements() as usize];
            let _ = materialize(t, bundle.file.tensor_data(t), Some(&delta), Output::F32(&mut out));
        }
    }
});
