//! The base fingerprint: BLAKE3 over every base tensor's name, type, shape and bytes, in file
//! order. Deltas are differences against exact base values, so applying them to any other
//! base (a re-quantized one, a different fine-tune) must be refused, not silently done.

use crate::gguf::GgufFile;

use super::naming::PREFIX;

pub fn base_fingerprint(file: &GgufFile) -> String {
    let mut h = blake3::Hasher::new();
    for t in file.tensors.iter().filter(|t| !t.name.starts_with(PREFIX)) {
        h.update(t.name.as_bytes());
        h.update(&[0]);
        h.update(&(t.ty as u32).to_le_bytes());
        h.update(&(t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            h.update(&d.to_le_bytes());
        }
        h.update_rayon(file.tensor_data(t));
    }
    h.finalize().to_hex().to_string()
}
