//! The MoE recordings a run leaves for switchyard to read, from arbitrary bytes: routing traces
//! (JSON lines) and captured FFN inputs (safetensors). Never a panic; whatever parses stays
//! within the bounds its header promised.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = switchyard::moe::trace::Trace::read(data, "fuzz") {
        for token in &t.tokens {
            assert_eq!(token.layers.len(), t.n_layers);
            assert!(token.layers.iter().flatten().all(|&(e, w)| (e as usize) < t.n_experts && w >= 0.0));
        }
    }
    if let Ok(c) = switchyard::moe::capture::Capture::parse(data, "fuzz") {
        assert!(c.layers.iter().all(|l| l.len() % c.n_embd == 0 && l.len() * 4 <= data.len()));
    }
});
