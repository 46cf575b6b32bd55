//! Round trips and API behaviour. Malformed inputs are covered by `tests/gguf_malformed.rs`.

use super::*;
use crate::ggml_type::GgmlType;

fn every_value() -> Metadata {
    let mut md = Metadata::with_label("every.gguf");
    md.insert("general.architecture", "llama");
    md.insert("z.u8", 200u8);
    md.insert("a.i8", -100i8);
    md.insert("m.u16", 60000u16);
    md.insert("b.i16", -30000i16);
    md.insert("y.u32", 4_000_000_000u32);
    md.insert("c.i32", -2_000_000_000i32);
    md.insert("x.f32", 1.5f32);
    // A NaN with a payload: stored as bits, so it must survive exactly.
    md.insert("x.f32_nan", f32::from_bits(0x7fc0_1234));
    md.insert("d.bool_t", true);
    md.insert("d.bool_f", false);
    md.insert("e.string", "héllo wörld ✓ 日本語 🦀");
    md.insert("e.empty_string", "");
    md.insert("w.u64", u64::MAX);
    md.insert("f.i64", i64::MIN);
    md.insert("v.f64", -0.0f64);
    md.insert("arr.u8", vec![0u8, 1, 255]);
    md.insert("arr.i8", vec![-128i8, 0, 127]);
    md.insert("arr.u16", vec![0u16, 65535]);
    md.insert("arr.i16", vec![-32768i16, 32767]);
    md.insert("arr.u32", vec![1u32, 2, 3]);
    md.insert("arr.i32", vec![-1i32, 0, 1]);
    md.insert("arr.f32", vec![0.5f32, -2.25, f32::INFINITY]);
    md.insert("arr.bool", vec![true, false, true]);
    md.insert("arr.string", vec!["a".to_string(), String::new(), "ünï©ødé 🦀".to_string()]);
    md.insert("arr.u64", vec![u64::MAX, 0]);
    md.insert("arr.i64", vec![i64::MIN, i64::MAX]);
    md.insert("arr.f64", vec![std::f64::consts::PI, f64::NEG_INFINITY]);
    // Empty arrays must keep their element type.
    md.insert("empty.u8", Vec::<u8>::new());
    md.insert("empty.i8", Vec::<i8>::new());
    md.insert("empty.u16", Vec::<u16>::new());
    md.insert("empty.i16", Vec::<i16>::new());
    md.insert("empty.u32", Vec::<u32>::new());
    md.insert("empty.i32", Vec::<i32>::new());
    md.insert("empty.f32", Vec::<f32>::new());
    md.insert("empty.bool", Vec::<bool>::new());
    md.insert("empty.string", Vec::<String>::new());
    md.insert("empty.u64", Vec::<u64>::new());
    md.insert("empty.i64", Vec::<i64>::new());
    md.insert("empty.f64", Vec::<f64>::new());
    md
}

fn sample_tensors() -> Vec<(TensorInfoOut, Vec<u8>)> {
    let f32_data: Vec<u8> = (0..24u32).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let q8: Vec<u8> = (0..2 * 34).map(|i| i as u8).collect();
    let f16: Vec<u8> = vec![7u8; 2 * 3];
    vec![
        (TensorInfoOut::new("token_embd.weight", GgmlType::F32, [4u64, 3, 2]), f32_data),
        (TensorInfoOut::new("blk.0.attn_q.weight", GgmlType::Q8_0, [64u64, 1]), q8),
        (TensorInfoOut::new("output_norm.weight", GgmlType::F16, [3u64]), f16),
    ]
}

fn write_sample(path: &std::path::Path, md: &Metadata) -> Vec<(TensorInfoOut, Vec<u8>)> {
    let tensors = sample_tensors();
    let refs: Vec<(TensorInfoOut, &[u8])> = tensors.iter().map(|(t, d)| (t.clone(), d.as_slice())).collect();
    write_gguf(path, md, &refs).unwrap();
    tensors
}

/// Metadata equality that treats NaNs as equal when their bits are (PartialEq says NaN != NaN).
fn same_bits(a: &Metadata, b: &Metadata) -> bool {
    a.len() == b.len()
        && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| {
            ka == kb
                && match (va, vb) {
                    (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
                    (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
                    _ => va == vb,
                }
        })
}

#[test]
fn every_value_type_round_trips_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("every.gguf");
    let md = every_value();
    let tensors = write_sample(&path, &md);

    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version, 3);
    assert!(same_bits(&f.metadata, &md));
    let keys: Vec<&str> = f.metadata.keys().collect();
    let want: Vec<&str> = md.keys().collect();
    assert_eq!(keys, want, "key order must be the insertion order");
    assert_eq!(f.metadata.get("e.string").unwrap().as_str(), Some("héllo wörld ✓ 日本語 🦀"));
    assert_eq!(f.metadata.get("empty.f64"), Some(&Value::Array(Array::F64(vec![]))));
    assert_eq!(f.metadata.get("empty.string").unwrap().type_name(), "array[string]");
    assert_eq!(f.tensors.len(), tensors.len());
    for (t, data) in &tensors {
        let info = f.tensor(&t.name).unwrap();
        assert_eq!(TensorInfoOut::from(info), *t);
        assert_eq!(f.tensor_data(info), data.as_slice());
        assert_eq!(info.offset % f.alignment, 0);
    }
}

#[test]
fn read_then_write_is_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.gguf");
    let b = dir.path().join("b.gguf");
    write_sample(&a, &every_value());

    let f = GgufFile::open(&a).unwrap();
    let infos: Vec<TensorInfoOut> = f.tensors.iter().map(TensorInfoOut::from).collect();
    let mut w = GgufWriter::create(&b, &f.metadata, &infos).unwrap();
    for t in &f.tensors {
        w.write_tensor_data(&t.name, f.tensor_data(t)).unwrap();
    }
    w.finish().unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
}

#[test]
fn trailing_ones_in_shape_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ones.gguf");
    let t = TensorInfoOut::new("t", GgmlType::F32, [2u64, 1, 1, 1]);
    write_gguf(&path, &Metadata::new(), &[(t, &[0u8; 8][..])]).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors[0].ne, vec![2, 1, 1, 1]);
}

#[test]
fn alignment_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("align64.gguf");
    let mut md = Metadata::new();
    md.insert("general.name", "x");
    md.insert(KEY_ALIGNMENT, 64u32);
    write_sample(&path, &md);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    let mut expected = 0;
    for t in &f.tensors {
        assert_eq!(t.offset, expected, "{}", t.name);
        expected += t.n_bytes().div_ceil(64) * 64;
    }
    // Every tensor is padded, the last one included, as ggml writes it.
    assert_eq!(f.file_size(), f.data_offset + expected);
    let bytes = std::fs::read(&path).unwrap();
    // Padding is zeros: between the first tensor's data (96 bytes) and the second (offset 128).
    let d = f.data_offset as usize;
    assert!(bytes[d + 96..d + 128].iter().all(|&b| b == 0));
}

#[test]
fn default_alignment_is_32() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a32.gguf");
    write_sample(&path, &Metadata::new());
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.alignment, DEFAULT_ALIGNMENT);
    assert_eq!(f.data_offset % 32, 0);
    assert_eq!(f.tensors[1].offset, 96);
    assert_eq!(f.tensors[2].offset, 96 + 96);
}

#[test]
fn typed_getters_accept_fitting_integers() {
    let mut md = Metadata::with_label("m.gguf");
    md.insert("u8", 7u8);
    md.insert("i32", 12i32);
    md.insert("neg", -1i32);
    md.insert("u64", 5_000_000_000u64);
    md.insert("f64", 0.25f64);
    assert_eq!(md.get_u32("u8").unwrap(), 7);
    assert_eq!(md.get_u32("i32").unwrap(), 12);
    assert_eq!(md.get_u64("i32").unwrap(), 12);
    assert_eq!(md.get_i64("neg").unwrap(), -1);
    assert_eq!(md.get_u64("u64").unwrap(), 5_000_000_000);
    assert_eq!(md.get_f32("f64").unwrap(), 0.25);
    assert!(md.get_u32("u64").is_err());
    assert!(md.get_u64("neg").is_err());
    assert_eq!(md.opt_u32("absent").unwrap(), None);
    assert_eq!(md.opt_u32("u8").unwrap(), Some(7));
}

#[test]
fn typed_getter_errors_name_key_and_file() {
    let mut md = Metadata::with_label("model.gguf");
    md.insert("llama.block_count", "twelve");
    md.insert("flag", 1u8);
    md.insert("neg", -3i32);
    md.insert("tokens", vec![1u32, 2]);

    let msg = |e: crate::error::Error| e.to_string();
    let e = msg(md.get_u32("llama.embedding_length").unwrap_err());
    assert!(e.contains("model.gguf") && e.contains("'llama.embedding_length'") && e.contains("missing"), "{e}");
    let e = msg(md.get_u32("llama.block_count").unwrap_err());
    assert!(e.contains("model.gguf") && e.contains("'llama.block_count'") && e.contains("string"), "{e}");
    let e = msg(md.get_bool("flag").unwrap_err());
    assert!(e.contains("'flag'") && e.contains("u8") && e.contains("bool"), "{e}");
    let e = msg(md.get_u32("neg").unwrap_err());
    assert!(e.contains("'neg'") && e.contains("-3"), "{e}");
    let e = msg(md.get_str_array("tokens").unwrap_err());
    assert!(e.contains("'tokens'") && e.contains("array[u32]"), "{e}");
    let e = msg(md.get_f32("flag").unwrap_err());
    assert!(e.contains("'flag'"), "{e}");
    let e = msg(md.get_str("neg").unwrap_err());
    assert!(e.contains("'neg'"), "{e}");
    // opt_* still fails on a present key of the wrong type.
    let e = msg(md.opt_str("flag").unwrap_err());
    assert!(e.contains("model.gguf") && e.contains("'flag'"), "{e}");
}

#[test]
fn metadata_label_comes_from_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("labelled.gguf");
    write_sample(&path, &Metadata::new());
    let f = GgufFile::open(&path).unwrap();
    let e = f.metadata.get_u32("nope").unwrap_err().to_string();
    assert!(e.contains("labelled.gguf") && e.contains("'nope'"), "{e}");
}

#[test]
fn insert_replaces_in_place_and_remove_keeps_order() {
    let mut md = Metadata::new();
    md.insert("c", 1u32);
    md.insert("a", 2u32);
    md.insert("b", 3u32);
    assert_eq!(md.insert("a", "two"), Some(Value::U32(2)));
    assert_eq!(md.keys().collect::<Vec<_>>(), ["c", "a", "b"]);
    assert_eq!(md.get_str("a").unwrap(), "two");
    assert_eq!(md.remove("c"), Some(Value::U32(1)));
    assert_eq!(md.remove("c"), None);
    assert_eq!(md.keys().collect::<Vec<_>>(), ["a", "b"]);
    // The index must have been shifted: lookups after the removed entry still work.
    assert_eq!(md.get_u32("b").unwrap(), 3);
    md.insert("d", 4u32);
    assert_eq!(md.keys().collect::<Vec<_>>(), ["a", "b", "d"]);
    assert_eq!(md.get_u32("d").unwrap(), 4);
    assert_eq!(md.len(), 3);
    let collected: Metadata = md.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    assert_eq!(collected, md);
}

#[test]
fn chunked_writes_match_whole_writes() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.gguf");
    let chunked = dir.path().join("chunked.gguf");
    let md = every_value();
    let tensors = write_sample(&whole, &md);
    let infos: Vec<TensorInfoOut> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let mut w = GgufWriter::create(&chunked, &md, &infos).unwrap();
    for (t, data) in &tensors {
        w.begin_tensor(&t.name).unwrap();
        for piece in data.chunks(5) {
            w.write_chunk(piece).unwrap();
        }
        w.end_tensor().unwrap();
    }
    w.finish().unwrap();
    assert_eq!(std::fs::read(&whole).unwrap(), std::fs::read(&chunked).unwrap());
}

fn dir_entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn writer_checks_order_sizes_and_completeness() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.gguf");
    let tensors = sample_tensors();
    let infos: Vec<TensorInfoOut> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let mut w = GgufWriter::create(&path, &Metadata::new(), &infos).unwrap();

    let e = w.write_tensor_data("blk.0.attn_q.weight", &tensors[1].1).unwrap_err().to_string();
    assert!(e.contains("'blk.0.attn_q.weight'") && e.contains("order") && e.contains("'token_embd.weight'"), "{e}");
    let e = w.write_tensor_data("nope", &[]).unwrap_err().to_string();
    assert!(e.contains("'nope'") && e.contains("not in the header"), "{e}");
    let e = w.write_tensor_data("token_embd.weight", &[0u8; 5]).unwrap_err().to_string();
    assert!(e.contains("'token_embd.weight'") && e.contains("5 bytes") && e.contains("96"), "{e}");
    // The failed calls changed nothing: the right call still works.
    w.write_tensor_data("token_embd.weight", &tensors[0].1).unwrap();
    let e = w.write_tensor_data("token_embd.weight", &tensors[0].1).unwrap_err().to_string();
    assert!(e.contains("already written"), "{e}");

    w.begin_tensor("blk.0.attn_q.weight").unwrap();
    w.write_chunk(&[1u8; 60]).unwrap();
    let e = w.write_chunk(&[1u8; 60]).unwrap_err().to_string();
    assert!(e.contains("'blk.0.attn_q.weight'") && e.contains("exceed"), "{e}");
    let e = w.end_tensor().unwrap_err().to_string();
    assert!(e.contains("60 bytes") && e.contains("68"), "{e}");
    let e = w.begin_tensor("output_norm.weight").unwrap_err().to_string();
    assert!(e.contains("incomplete"), "{e}");
    w.write_chunk(&[1u8; 8]).unwrap();
    w.end_tensor().unwrap();

    let e = w.finish().unwrap_err().to_string();
    assert!(e.contains("'output_norm.weight'") && e.contains("never written"), "{e}");
    // A failed finish leaves neither the output nor a temporary file.
    assert!(dir_entries(dir.path()).is_empty(), "{:?}", dir_entries(dir.path()));
}

#[test]
fn dropped_writer_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dropped.gguf");
    let tensors = sample_tensors();
    let infos: Vec<TensorInfoOut> = tensors.iter().map(|(t, _)| t.clone()).collect();
    let mut w = GgufWriter::create(&path, &every_value(), &infos).unwrap();
    w.write_tensor_data(&infos[0].name, &tensors[0].1).unwrap();
    drop(w);
    assert!(dir_entries(dir.path()).is_empty(), "{:?}", dir_entries(dir.path()));
}

#[test]
fn finish_replaces_an_existing_file_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.gguf");
    std::fs::write(&path, b"old content").unwrap();
    write_sample(&path, &every_value());
    assert!(GgufFile::open(&path).is_ok());
    assert_eq!(dir_entries(dir.path()), ["model.gguf"]);
}

#[test]
fn writer_validates_like_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.gguf");
    let create =
        |md: &Metadata, t: &[TensorInfoOut]| GgufWriter::create(&path, md, t).map(|_| ()).unwrap_err().to_string();
    let f32 = |name: &str, ne: &[u64]| TensorInfoOut::new(name, GgmlType::F32, ne.to_vec());

    let long = "x".repeat(64);
    let e = create(&Metadata::new(), &[f32(&long, &[1])]);
    assert!(e.contains("64 bytes") && e.contains("bad.gguf"), "{e}");
    assert!(GgufWriter::create(&path, &Metadata::new(), &[f32(&"x".repeat(63), &[1])]).is_ok());
    let e = create(&Metadata::new(), &[f32("a", &[1]), f32("a", &[2])]);
    assert!(e.contains("'a'") && e.contains("twice"), "{e}");
    let e = create(&Metadata::new(), &[f32("a", &[1, 1, 1, 1, 1])]);
    assert!(e.contains("'a'") && e.contains("5 dimensions"), "{e}");
    let e = create(&Metadata::new(), &[f32("a", &[])]);
    assert!(e.contains("0 dimensions"), "{e}");
    let e = create(&Metadata::new(), &[f32("a", &[4, 0])]);
    assert!(e.contains("dimension 1 is 0"), "{e}");
    let e = create(&Metadata::new(), &[f32("a", &[1 << 32, 1 << 32])]);
    assert!(e.contains("int64"), "{e}");
    let e = create(&Metadata::new(), &[TensorInfoOut::new("q", GgmlType::Q4_K, [255u64])]);
    assert!(e.contains("'q'") && e.contains("block size 256"), "{e}");
    let e = create(&Metadata::new(), &[f32("nul\0name", &[1])]);
    assert!(e.contains("NUL"), "{e}");

    for bad in [Value::U32(0), Value::U32(48), Value::U64(32), Value::I32(32)] {
        let mut md = Metadata::new();
        md.insert(KEY_ALIGNMENT, bad.clone());
        let e = create(&md, &[]);
        assert!(e.contains("general.alignment"), "{bad:?}: {e}");
    }
    let mut md = Metadata::new();
    md.insert("", 1u8);
    assert!(create(&md, &[]).contains("empty key"));
    // Nothing was left behind by any of the failed creates.
    let left: Vec<String> = dir_entries(dir.path());
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn version_2_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.gguf");
    write_sample(&path, &every_value());
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[4..8].copy_from_slice(&2u32.to_le_bytes());
    let h = parse_header(&bytes, "v2.gguf").unwrap();
    assert_eq!(h.version, 2);
    assert!(same_bits(&h.metadata, &every_value()));
}

#[test]
fn file_without_tensors_and_missing_final_padding() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.gguf");
    let mut md = Metadata::new();
    md.insert("k", "v");
    write_gguf(&path, &md, &[]).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert!(f.tensors.is_empty());
    assert_eq!(f.file_size(), f.data_offset);

    // Some writers omit the padding after the last tensor; the data still fits, so accept.
    let p2 = dir.path().join("s.gguf");
    write_sample(&p2, &Metadata::new());
    let bytes = std::fs::read(&p2).unwrap();
    let h = parse_header(&bytes, "s.gguf").unwrap();
    let last = h.tensors.last().unwrap();
    let end = (h.data_offset + last.offset + last.n_bytes()) as usize;
    assert!(end < bytes.len());
    assert!(parse_header(&bytes[..end], "s.gguf").is_ok());
    let e = parse_header(&bytes[..end - 1], "s.gguf").unwrap_err().to_string();
    assert!(e.contains("'output_norm.weight'") && e.contains("file is only"), "{e}");
}

#[test]
fn file_lookup_helpers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("look.gguf");
    let tensors = write_sample(&path, &Metadata::new());
    let mut f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensor_data_by_name("output_norm.weight").unwrap(), tensors[2].1.as_slice());
    let e = f.tensor_data_by_name("missing").unwrap_err().to_string();
    assert!(e.contains("look.gguf") && e.contains("'missing'"), "{e}");
    let mut foreign = f.tensors[0].clone();
    foreign.offset = 1 << 40;
    assert!(f.try_tensor_data(&foreign).is_err());
    // Editing the public list must not make the index lie.
    f.tensors.remove(0);
    assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().name, "blk.0.attn_q.weight");
    assert!(f.tensor("token_embd.weight").is_none());
    assert!(format!("{f:?}").contains("n_tensors"));
}

#[test]
fn empty_file_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.gguf");
    std::fs::write(&path, b"").unwrap();
    let e = GgufFile::open(&path).unwrap_err().to_string();
    assert!(e.contains("empty.gguf"), "{e}");
}

#[test]
fn value_helpers() {
    assert_eq!(Value::from(3u16).as_u32(), Some(3));
    assert_eq!(Value::from(-3i64).as_u64(), None);
    assert_eq!(Value::from(vec!["a".to_string()]).type_name(), "array[string]");
    let long = Value::from("x".repeat(200));
    assert!(long.to_string().len() < 80);
    assert_eq!(Value::from(vec![1.0f32; 1000]).to_string(), "[1000 x f32]");
    assert_eq!(ValueType::from_u32(9), Some(ValueType::Array));
    assert_eq!(ValueType::from_u32(13), None);
    for id in 0..13 {
        assert_eq!(ValueType::from_u32(id).unwrap().id(), id);
    }
}

/// The vocabulary-only GGUF files shipped in llama.cpp's source tree (written by gguf-py), when a
/// llama.cpp build has been cached by `scripts/build-llama.sh`; skipped otherwise. They must parse
/// and re-encode to the same bytes, up to the header padding that gguf-py omits when a file has
/// no tensors and the version number of v2 files.
#[test]
fn real_vocab_files_round_trip_when_available() {
    // The same default as scripts/lib.sh.
    let cache = std::env::var_os("SWITCHYARD_CACHE").map(std::path::PathBuf::from).or_else(|| {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))?;
        Some(base.join("switchyard"))
    });
    let Some(cache) = cache else {
        eprintln!("no cache folder: skipped");
        return;
    };
    let Ok(builds) = std::fs::read_dir(cache.join("llama")) else {
        eprintln!("no cached llama.cpp build: skipped");
        return;
    };
    let mut files: Vec<std::path::PathBuf> = builds
        .flatten()
        .filter_map(|b| std::fs::read_dir(b.path().join("src/models")).ok())
        .flat_map(|d| d.flatten().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "gguf"))
        .collect();
    files.sort();
    files.dedup_by(|a, b| a.file_name() == b.file_name());
    for path in files.iter().take(8) {
        let f = GgufFile::open(path).unwrap();
        assert!(f.metadata.get_str("tokenizer.ggml.model").is_ok(), "{}", path.display());
        let infos: Vec<TensorInfoOut> = f.tensors.iter().map(TensorInfoOut::from).collect();
        let mut enc = header_bytes(&f.metadata, &infos).unwrap();
        assert_eq!(enc.len() as u64, f.data_offset, "{}", path.display());
        let mut orig = f.bytes().to_vec();
        orig.resize(enc.len().max(orig.len()), 0);
        enc[4..8].copy_from_slice(&f.version.to_le_bytes());
        assert!(orig.starts_with(&enc), "{} does not round-trip", path.display());
    }
}
