//! Bit packing of quantization codes. Codes of one row are packed little-endian: code k of a
//! row sits at bit offset k*bits of the row's byte string. For 1, 2 and 4 bits that keeps every
//! code inside one byte; for 3 bits, 8 codes fill exactly 3 bytes. Rows are padded to whole
//! bytes by requiring the row length to be a multiple of 8.

/// Bytes holding `n` codes of `bits` bits (n must be a multiple of 8).
pub fn packed_len(n: usize, bits: u8) -> usize {
    n * bits as usize / 8
}

/// Pack `codes` (each < 2^bits) into `out` (exactly `packed_len` bytes).
pub fn pack(codes: &[u8], bits: u8, out: &mut [u8]) {
    debug_assert_eq!(out.len(), packed_len(codes.len(), bits));
    match bits {
        3 => {
            for (src, dst) in codes.chunks_exact(8).zip(out.chunks_exact_mut(3)) {
                let mut v: u32 = 0;
                for (k, &c) in src.iter().enumerate() {
                    v |= (c as u32 & 7) << (3 * k);
                }
                dst.copy_from_slice(&v.to_le_bytes()[..3]);
            }
        }
        1 | 2 | 4 => {
            let per = 8 / bits as usize;
            let mask = (1u8 << bits) - 1;
            for (src, dst) in codes.chunks_exact(per).zip(out.iter_mut()) {
                *dst = src.iter().enumerate().fold(0u8, |acc, (k, &c)| acc | ((c & mask) << (k * bits as usize)));
            }
        }
        8 => out.copy_from_slice(codes),
        _ => unreachable!("bits validated by CodecParams"),
    }
}

/// Unpack `out.len()` codes from `packed`.
pub fn unpack(packed: &[u8], bits: u8, out: &mut [u8]) {
    match bits {
        3 => {
            for (src, dst) in packed.chunks_exact(3).zip(out.chunks_exact_mut(8)) {
                let v = u32::from_le_bytes([src[0], src[1], src[2], 0]);
                for (k, d) in dst.iter_mut().enumerate() {
                    *d = ((v >> (3 * k)) & 7) as u8;
                }
            }
        }
        1 | 2 | 4 => {
            let per = 8 / bits as usize;
            let mask = (1u8 << bits) - 1;
            for (&b, dst) in packed.iter().zip(out.chunks_exact_mut(per)) {
                for (k, d) in dst.iter_mut().enumerate() {
                    *d = (b >> (k * bits as usize)) & mask;
                }
            }
        }
        8 => out.copy_from_slice(packed),
        _ => unreachable!("bits validated by CodecParams"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_width() {
        for bits in [1u8, 2, 3, 4, 8] {
            let codes: Vec<u8> = (0..64u32).map(|i| ((i * 37 + 11) % (1u32 << bits)) as u8).collect();
            let mut packed = vec![0u8; packed_len(codes.len(), bits)];
            pack(&codes, bits, &mut packed);
            let mut back = vec![0u8; codes.len()];
            unpack(&packed, bits, &mut back);
            assert_eq!(back, codes, "bits={bits}");
        }
    }

    #[test]
    fn layout_is_little_endian_within_bytes() {
        let mut packed = [0u8; 1];
        pack(&[1, 2, 3, 0], 2, &mut packed);
        assert_eq!(packed[0], 0b00_11_10_01);
        let mut packed3 = [0u8; 3];
        pack(&[7, 0, 0, 0, 0, 0, 0, 1], 3, &mut packed3);
        assert_eq!(u32::from_le_bytes([packed3[0], packed3[1], packed3[2], 0]), 7 | (1 << 21));
    }
}
