//! Malformed GGUF headers, built byte by byte (independently of the crate's writer): each must be
//! rejected with an error that names the file and the offending key or tensor, and no input may
//! make the parser panic or allocate according to a bogus count.

use std::time::{Duration, Instant};

use switchyard::gguf::{parse_header, parse_header_without, write_gguf, GgufFile, TensorInfoOut};

const LABEL: &str = "t.gguf";

// ---- a tiny hand-rolled encoder ------------------------------------------------------------

fn u32le(v: u32) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn u64le(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn string(s: &[u8]) -> Vec<u8> {
    let mut v = u64le(s.len() as u64);
    v.extend_from_slice(s);
    v
}

// GGUF value type tags.
const T_U8: u32 = 0;
const T_I32: u32 = 5;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U32: u32 = 4;
const T_U64: u32 = 10;
const T_F32: u32 = 6;

// ggml type ids.
const F32: u32 = 0;
const Q8_0: u32 = 8;

/// One key/value pair: raw key bytes and the encoded type tag + value.
#[derive(Clone)]
struct Kv {
    key: Vec<u8>,
    body: Vec<u8>,
}

fn kv(key: &str, tag: u32, value: Vec<u8>) -> Kv {
    let mut body = u32le(tag);
    body.extend(value);
    Kv { key: key.as_bytes().to_vec(), body }
}

fn kv_str(key: &str, s: &str) -> Kv {
    kv(key, T_STRING, string(s.as_bytes()))
}

fn kv_array(key: &str, elem: u32, n: u64, elems: Vec<u8>) -> Kv {
    let mut v = u32le(elem);
    v.extend(u64le(n));
    v.extend(elems);
    kv(key, T_ARRAY, v)
}

#[derive(Clone)]
struct Ti {
    name: Vec<u8>,
    n_dims: u32,
    ne: Vec<u64>,
    ty: u32,
    offset: u64,
}

fn ti(name: &str, ne: &[u64], ty: u32, offset: u64) -> Ti {
    Ti { name: name.as_bytes().to_vec(), n_dims: ne.len() as u32, ne: ne.to_vec(), ty, offset }
}

/// Everything about a file that a test may want to break.
#[derive(Clone)]
struct Spec {
    magic: [u8; 4],
    version: u32,
    n_tensors: Option<u64>,
    n_kv: Option<u64>,
    kvs: Vec<Kv>,
    tensors: Vec<Ti>,
    align: usize,
    /// Bytes of (zero) tensor data after the padded header.
    data_len: usize,
}

impl Spec {
    /// A valid file: 3 keys, an f32 [8] tensor (32 bytes) and a q8_0 [32, 2] tensor (68 bytes,
    /// padded to 96), alignment 32.
    fn valid() -> Spec {
        let tokens = [string(b"a"), string("\u{e9}\u{1f980}".as_bytes())].concat();
        Spec {
            magic: *b"GGUF",
            version: 3,
            n_tensors: None,
            n_kv: None,
            kvs: vec![
                kv_str("general.architecture", "llama"),
                kv("general.alignment", T_U32, u32le(32)),
                kv_array("tokenizer.ggml.tokens", T_STRING, 2, tokens),
                kv_array("flags", T_BOOL, 3, vec![1, 0, 1]),
            ],
            tensors: vec![ti("a", &[8], F32, 0), ti("blk.0.b", &[32, 2], Q8_0, 32)],
            align: 32,
            data_len: 32 + 96,
        }
    }

    fn header(&self) -> Vec<u8> {
        let mut b = self.magic.to_vec();
        b.extend(u32le(self.version));
        b.extend(u64le(self.n_tensors.unwrap_or(self.tensors.len() as u64)));
        b.extend(u64le(self.n_kv.unwrap_or(self.kvs.len() as u64)));
        for k in &self.kvs {
            b.extend(string(&k.key));
            b.extend(&k.body);
        }
        for t in &self.tensors {
            b.extend(string(&t.name));
            b.extend(u32le(t.n_dims));
            for &d in &t.ne {
                b.extend(u64le(d));
            }
            b.extend(u32le(t.ty));
            b.extend(u64le(t.offset));
        }
        b
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = self.header();
        b.resize(b.len().div_ceil(self.align) * self.align, 0);
        // Recognisable, non-zero tensor bytes.
        b.extend((0..self.data_len).map(|i| (i % 251) as u8 + 1));
        b
    }
}

/// Parses `bytes`, expecting an error mentioning the label and every string in `needles`.
#[track_caller]
fn expect_err(bytes: &[u8], needles: &[&str]) -> String {
    let e = match parse_header(bytes, LABEL) {
        Ok(_) => panic!("expected an error mentioning {needles:?}, got Ok"),
        Err(e) => e.to_string(),
    };
    assert!(e.starts_with(LABEL), "error does not name the file: {e}");
    for n in needles {
        assert!(e.contains(n), "error {e:?} does not mention {n:?}");
    }
    e
}

#[track_caller]
fn expect_spec_err(spec: &Spec, needles: &[&str]) -> String {
    expect_err(&spec.bytes(), needles)
}

// ---- the valid baseline --------------------------------------------------------------------

#[test]
fn valid_file_parses_and_round_trips_byte_for_byte() {
    let bytes = Spec::valid().bytes();
    let h = parse_header(&bytes, LABEL).unwrap();
    assert_eq!(h.version, 3);
    assert_eq!(h.alignment, 32);
    assert_eq!(h.metadata.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(h.metadata.get_str_array("tokenizer.ggml.tokens").unwrap(), ["a", "\u{e9}\u{1f980}"]);
    assert_eq!(h.tensors.len(), 2);
    assert_eq!(h.tensors[1].ne, vec![32, 2]);
    assert_eq!(h.data_offset as usize % 32, 0);

    // Our writer must reproduce the hand-built bytes exactly (apart from tensor content, which
    // we copy over).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.gguf");
    let data: Vec<(TensorInfoOut, &[u8])> = h
        .tensors
        .iter()
        .map(|t| {
            let start = (h.data_offset + t.offset) as usize;
            (TensorInfoOut::from(t), &bytes[start..start + t.n_bytes() as usize])
        })
        .collect();
    // The final padding of the hand-built file is tensor bytes in `Spec::bytes`; zero it as a
    // writer would.
    let mut expected = bytes.clone();
    let last = h.tensors.last().unwrap();
    let end = (h.data_offset + last.offset + last.n_bytes()) as usize;
    expected[end..].iter_mut().for_each(|b| *b = 0);
    write_gguf(&path, &h.metadata, &data).unwrap();
    let written = std::fs::read(&path).unwrap();
    assert_eq!(written.len(), expected.len());
    assert_eq!(written, expected);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_data(&f.tensors[0]), data[0].1);
}

// ---- header fields -------------------------------------------------------------------------

#[test]
fn bad_magic() {
    let mut s = Spec::valid();
    s.magic = *b"GGUX";
    expect_spec_err(&s, &["magic", "GGUX"]);
    expect_err(b"", &["magic", "truncated"]);
    expect_err(b"GGU", &["magic"]);
}

#[test]
fn unsupported_versions() {
    for (v, needle) in [(1, "version 1"), (4, "version 4"), (0, "version 0"), (0x0300_0000, "byte-swapped")] {
        let mut s = Spec::valid();
        s.version = v;
        expect_spec_err(&s, &[needle]);
    }
    let mut s = Spec::valid();
    s.version = 2;
    assert_eq!(parse_header(&s.bytes(), LABEL).unwrap().version, 2);
}

#[test]
fn truncated_at_every_byte() {
    let bytes = Spec::valid().bytes();
    let h = parse_header(&bytes, LABEL).unwrap();
    let last = h.tensors.last().unwrap();
    let data_end = (h.data_offset + last.offset + last.n_bytes()) as usize;
    let header_len = Spec::valid().header().len();
    for n in 0..bytes.len() {
        let r = parse_header(&bytes[..n], LABEL);
        if n >= data_end {
            // Only the padding after the last tensor is missing: still a usable file.
            assert!(r.is_ok(), "cut at {n}: {:?}", r.err());
            continue;
        }
        let e = match r {
            Ok(_) => panic!("file cut at byte {n} of {} parsed", bytes.len()),
            Err(e) => e.to_string(),
        };
        assert!(e.starts_with(LABEL), "cut at {n}: {e}");
        if n >= header_len {
            assert!(e.contains("file is only") && e.contains("tensor '"), "cut at {n}: {e}");
        } else if n > 24 {
            // Past the counts, a cut names what was being read.
            assert!(e.contains("key") || e.contains("tensor"), "cut at {n}: {e}");
        }
    }
}

/// A count that cannot fit the file must be rejected before anything is allocated for it.
#[track_caller]
fn expect_fast_err(bytes: &[u8], needles: &[&str]) {
    let t = Instant::now();
    expect_err(bytes, needles);
    assert!(t.elapsed() < Duration::from_secs(1), "took {:?}", t.elapsed());
}

#[test]
fn huge_counts_fail_fast() {
    // A 24-byte file claiming 2^60 tensors.
    let mut b = b"GGUF".to_vec();
    b.extend(u32le(3));
    b.extend(u64le(1 << 60));
    b.extend(u64le(0));
    expect_fast_err(&b, &["1152921504606846976 tensors"]);

    let mut s = Spec::valid();
    s.n_tensors = Some(u64::MAX); // -1 as ggml's int64
    expect_fast_err(&s.bytes(), &["tensors"]);
    s.n_tensors = Some(3);
    expect_fast_err(&s.bytes(), &[]); // claims one more tensor than there is
    let mut s = Spec::valid();
    s.n_kv = Some(1 << 62);
    expect_fast_err(&s.bytes(), &["metadata keys"]);

    // A key whose length claims 2^62 bytes.
    let mut s = Spec::valid();
    s.kvs = vec![];
    s.tensors.clear();
    s.n_kv = Some(1);
    let mut b = s.header();
    b.extend(u64le(1 << 62));
    b.extend(b"abcdefgh");
    expect_fast_err(&b, &["string length 4611686018427387904"]);

    // A string value of huge length names its key.
    let mut s = Spec::valid();
    s.kvs.push(kv("big.string", T_STRING, u64le(u64::MAX)));
    expect_fast_err(&s.bytes(), &["'big.string'", "string length"]);

    // Arrays: fixed-size elements (n * 8 overflows u64) and strings.
    let mut s = Spec::valid();
    s.kvs.push(kv_array("big.u64s", T_U64, u64::MAX / 4, vec![]));
    expect_fast_err(&s.bytes(), &["'big.u64s'", "cannot fit"]);
    let mut s = Spec::valid();
    s.kvs.push(kv_array("big.strings", T_STRING, 1 << 40, vec![]));
    expect_fast_err(&s.bytes(), &["'big.strings'", "cannot fit"]);
    let mut s = Spec::valid();
    s.kvs.push(kv_array("big.u8s", T_U8, 1 << 40, vec![1, 2, 3]));
    expect_fast_err(&s.bytes(), &["'big.u8s'", "cannot fit"]);

    // A tensor name of huge length.
    let mut s = Spec::valid();
    s.tensors.clear();
    s.n_tensors = Some(1);
    let mut b = s.header();
    b.extend(u64le(u64::MAX - 1));
    b.extend([b'x'; 64]);
    expect_fast_err(&b, &["tensor #0", "string length"]);
}

// ---- tensor infos --------------------------------------------------------------------------

#[test]
fn bad_dimension_counts() {
    let mut s = Spec::valid();
    s.tensors[1] = ti("blk.0.b", &[32, 2, 1, 1, 1], Q8_0, 32);
    expect_spec_err(&s, &["'blk.0.b'", "n_dims is 5"]);
    let mut s = Spec::valid();
    s.tensors[0] = ti("a", &[], F32, 0);
    expect_spec_err(&s, &["'a'", "n_dims is 0"]);
    let mut s = Spec::valid();
    s.tensors[0].n_dims = u32::MAX;
    expect_spec_err(&s, &["'a'", "n_dims is 4294967295"]);
}

#[test]
fn tensor_name_length_limit() {
    let mut s = Spec::valid();
    s.tensors[0].name = vec![b'x'; 64];
    expect_spec_err(&s, &["tensor #0", "64 bytes", "at most 63"]);
    s.tensors[0].name = vec![b'x'; 63];
    assert!(parse_header(&s.bytes(), LABEL).is_ok());
}

#[test]
fn bad_tensor_names() {
    let mut s = Spec::valid();
    s.tensors[1].name = b"bad\xffname".to_vec();
    expect_spec_err(&s, &["tensor #1", "UTF-8"]);
    s.tensors[1].name = b"nul\0name".to_vec();
    expect_spec_err(&s, &["tensor #1", "NUL"]);
}

#[test]
fn unknown_tensor_type() {
    for id in [4u32, 5, 31, 1000, u32::MAX] {
        let mut s = Spec::valid();
        s.tensors[1].ty = id;
        expect_spec_err(&s, &["'blk.0.b'", &format!("unknown ggml type id {id}")]);
    }
}

#[test]
fn row_not_a_multiple_of_block_size() {
    let mut s = Spec::valid();
    s.tensors[1].ne = vec![33, 2];
    expect_spec_err(&s, &["'blk.0.b'", "ne[0] = 33", "q8_0", "block size 32"]);
}

#[test]
fn bad_dimensions() {
    let mut s = Spec::valid();
    s.tensors[0].ne = vec![0];
    expect_spec_err(&s, &["'a'", "dimension 0 is 0"]);
    s.tensors[0].ne = vec![u64::MAX]; // -1 as an int64
    expect_spec_err(&s, &["'a'", "dimension 0", "int64"]);
    let mut s = Spec::valid();
    s.tensors[1].ne = vec![1 << 32, 1 << 32];
    expect_spec_err(&s, &["'blk.0.b'", "more elements than fit in an int64"]);
}

#[test]
fn duplicate_key() {
    let mut s = Spec::valid();
    s.kvs.push(kv_str("general.architecture", "gpt2"));
    expect_spec_err(&s, &["duplicate metadata key 'general.architecture'"]);
}

/// `GgufFile::open_without` (a host's tokenizer, which the library never reads) keeps every other
/// key and tensor, and still bounds-checks what it leaves out and refuses duplicates among it.
#[test]
fn keys_left_out_are_checked_but_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.gguf");
    let open_without = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        GgufFile::open_without(&path, "tokenizer.").map_err(|e| e.to_string())
    };
    let mut spec = Spec::valid();
    spec.kvs.push(kv_str("tokenizer.ggml.model", "gpt2"));
    spec.kvs.push(kv("tokenizer.ggml.bos_token_id", T_U32, u32le(1)));
    spec.kvs.push(kv_array("tokenizer.ggml.scores", T_F32, 2, [0.5f32.to_le_bytes(), (-1f32).to_le_bytes()].concat()));
    let bytes = spec.bytes();
    let full = parse_header(&bytes, LABEL).unwrap();
    let f = open_without(&bytes).unwrap();
    assert!(f.metadata.keys().all(|k| !k.starts_with("tokenizer.")));
    assert_eq!(f.metadata.len(), full.metadata.len() - 4);
    assert_eq!(f.metadata.get("flags"), full.metadata.get("flags"));
    assert_eq!(f.tensors, full.tensors);
    assert_eq!(f.data_offset, full.data_offset);

    let mut dup = Spec::valid();
    dup.kvs.push(kv_str("tokenizer.ggml.tokens", "again"));
    let e = open_without(&dup.bytes()).unwrap_err();
    assert!(e.contains("duplicate metadata key 'tokenizer.ggml.tokens'"), "{e}");

    let mut long = Spec::valid();
    long.kvs[2] = kv_array("tokenizer.ggml.tokens", T_STRING, 1 << 40, string(b"a"));
    let e = open_without(&long.bytes()).unwrap_err();
    assert!(e.contains("'tokenizer.ggml.tokens'") && e.contains("cannot fit"), "{e}");

    // general.alignment places the data, so no prefix leaves it out
    let mut aligned = Spec::valid();
    aligned.kvs[1] = kv("general.alignment", T_U32, u32le(64));
    aligned.align = 64;
    aligned.tensors[1].offset = 64;
    aligned.data_len = 64 + 96;
    let full64 = parse_header(&aligned.bytes(), LABEL).unwrap();
    let without = parse_header_without(&aligned.bytes(), LABEL, "general.").unwrap();
    assert_eq!((without.alignment, without.data_offset), (64, full64.data_offset));
    assert!(without.metadata.get("general.architecture").is_none());

    // every truncation of the file short of its last tensor's data fails, none panics
    let last = full.tensors.last().unwrap();
    for n in 0..(full.data_offset + last.offset + last.n_bytes()) as usize {
        assert!(open_without(&bytes[..n]).is_err(), "a file cut at byte {n} was accepted");
    }
}

#[test]
fn duplicate_tensor() {
    let mut s = Spec::valid();
    s.tensors[1] = ti("a", &[8], F32, 32);
    s.data_len = 64;
    expect_spec_err(&s, &["tensor 'a' appears twice"]);
}

#[test]
fn misaligned_offset() {
    let mut s = Spec::valid();
    s.tensors[1].offset = 33;
    expect_spec_err(&s, &["tensor 'blk.0.b'", "offset 33 is not a multiple of alignment 32"]);
}

#[test]
fn offsets_out_of_order_or_with_gaps() {
    let mut s = Spec::valid();
    s.tensors[0].offset = 96;
    s.tensors[1].offset = 0;
    expect_spec_err(&s, &["tensor 'a'", "offset 96", "gap"]);
    let mut s = Spec::valid();
    s.tensors[1].offset = 0;
    expect_spec_err(&s, &["tensor 'blk.0.b'", "out of order", "'a'"]);
    let mut s = Spec::valid();
    s.tensors[1].offset = 64;
    s.data_len = 64 + 96;
    expect_spec_err(&s, &["tensor 'blk.0.b'", "offset 64", "expected 32"]);
    let mut s = Spec::valid();
    s.tensors[1].offset = u64::MAX - 31;
    expect_spec_err(&s, &["tensor 'blk.0.b'"]);
}

#[test]
fn data_beyond_end_of_file() {
    let mut s = Spec::valid();
    s.data_len = 32 + 67;
    expect_spec_err(&s, &["tensor 'blk.0.b'", "file is only"]);
    s.data_len = 0;
    expect_spec_err(&s, &["tensor 'a'", "file is only"]);
}

// ---- metadata ------------------------------------------------------------------------------

#[test]
fn bad_alignment_values() {
    let cases = [
        kv("general.alignment", T_U32, u32le(0)),
        kv("general.alignment", T_U32, u32le(3)),
        kv("general.alignment", T_U32, u32le(48)),
        kv("general.alignment", T_I32, u32le(32)),
        kv("general.alignment", T_U64, u64le(32)),
        kv_str("general.alignment", "32"),
    ];
    for c in cases {
        let mut s = Spec::valid();
        s.kvs[1] = c;
        expect_spec_err(&s, &["general.alignment"]);
    }
    // A valid larger alignment changes the data offset and the expected tensor offsets.
    let mut s = Spec::valid();
    s.kvs[1] = kv("general.alignment", T_U32, u32le(64));
    s.align = 64;
    s.tensors[1].offset = 64;
    s.data_len = 64 + 68;
    let h = parse_header(&s.bytes(), LABEL).unwrap();
    assert_eq!(h.alignment, 64);
    assert_eq!(h.data_offset % 64, 0);
    s.tensors[1].offset = 32;
    expect_spec_err(&s, &["offset 32 is not a multiple of alignment 64"]);
}

#[test]
fn nested_array() {
    let mut s = Spec::valid();
    s.kvs.push(kv_array("nested", T_ARRAY, 1, [u32le(T_U8), u64le(1), vec![7]].concat()));
    expect_spec_err(&s, &["'nested'", "nested arrays"]);
}

#[test]
fn unknown_value_types() {
    let mut s = Spec::valid();
    s.kvs.push(kv("odd", 13, vec![0; 8]));
    expect_spec_err(&s, &["'odd'", "unknown value type id 13"]);
    let mut s = Spec::valid();
    s.kvs.push(kv_array("odd.array", 99, 0, vec![]));
    expect_spec_err(&s, &["'odd.array'", "unknown value type id 99"]);
}

#[test]
fn bad_keys_and_strings() {
    let mut s = Spec::valid();
    s.kvs.push(Kv { key: b"k\xc3".to_vec(), body: [u32le(T_U8), vec![1]].concat() });
    expect_spec_err(&s, &["metadata key #4", "UTF-8"]);
    let mut s = Spec::valid();
    s.kvs.push(Kv { key: vec![], body: [u32le(T_U8), vec![1]].concat() });
    expect_spec_err(&s, &["metadata key #4", "empty"]);
    let mut s = Spec::valid();
    s.kvs.push(kv("general.name", T_STRING, string(b"caf\xe9")));
    expect_spec_err(&s, &["'general.name'", "UTF-8"]);
    let mut s = Spec::valid();
    s.kvs.push(kv_array("tokens", T_STRING, 2, [string(b"ok"), string(b"\xff")].concat()));
    expect_spec_err(&s, &["element 1 of metadata key 'tokens'", "UTF-8"]);
}

#[test]
fn bool_bytes_other_than_0_and_1() {
    let mut s = Spec::valid();
    s.kvs.push(kv("b", T_BOOL, vec![2]));
    expect_spec_err(&s, &["'b'", "bool byte is 2"]);
    let mut s = Spec::valid();
    s.kvs[3] = kv_array("flags", T_BOOL, 3, vec![1, 0, 0x80]);
    expect_spec_err(&s, &["'flags' element 2", "bool byte is 128"]);
}

#[test]
fn truncated_values_name_their_key() {
    let mut s = Spec::valid();
    s.tensors.clear();
    s.data_len = 0;
    s.kvs.push(kv("last.u32", T_U32, vec![1, 2]));
    let b = s.header();
    expect_err(&b, &["truncated", "'last.u32'"]);
}

// ---- mutations -----------------------------------------------------------------------------

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn seeded_mutations_never_panic() {
    let base = Spec::valid().bytes();
    let header_len = Spec::valid().header().len();
    let interesting: [u8; 8] = [0x00, 0x01, 0x02, 0x04, 0x3f, 0x40, 0x7f, 0xff];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut err) = (0, 0);
    for round in 0..20_000 {
        let mut b = base.clone();
        let edits = 1 + rng.below(4);
        for _ in 0..edits {
            // Mostly hit the header, where the structure is.
            let pos = if rng.below(8) == 0 { rng.below(b.len()) } else { rng.below(header_len) };
            match rng.below(4) {
                0 => b[pos] ^= 1 << rng.below(8),
                1 => b[pos] = interesting[rng.below(interesting.len())],
                2 => b[pos] = rng.next() as u8,
                _ => {
                    // Overwrite a whole little-endian u64 with an extreme value.
                    let v = [0u64, 1, 63, 64, u32::MAX as u64, i64::MAX as u64, u64::MAX][rng.below(7)];
                    let end = (pos + 8).min(b.len());
                    b[pos..end].copy_from_slice(&v.to_le_bytes()[..end - pos]);
                }
            }
        }
        if rng.below(10) == 0 {
            let cut = rng.below(b.len());
            b.truncate(cut);
        }
        let r = std::panic::catch_unwind(|| parse_header(&b, LABEL).map(|_| ()).map_err(|e| e.to_string()));
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => {
                assert!(e.starts_with(LABEL), "round {round}: {e}");
                err += 1
            }
            Err(_) => panic!("parse_header panicked in round {round} on {b:02x?}"),
        }
    }
    // Both outcomes must actually occur, or the mutations are not exercising anything.
    assert!(ok > 100 && err > 100, "ok {ok}, err {err}");
}
