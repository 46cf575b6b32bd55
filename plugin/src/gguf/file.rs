//! A GGUF file opened read-only through a memory map: the header is parsed once and tensor
//! data is served as slices of the map, so multi-gigabyte models cost no copies.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::metadata::Metadata;
use super::read::parse_with_index;
use super::tensor::TensorInfo;
use crate::error::{Error, Result};

pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Metadata,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section in the file.
    pub data_offset: u64,
    mmap: memmap2::Mmap,
    /// Name -> position in `tensors`, as parsed (see [`GgufFile::tensor`] for why it is checked).
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("n_kv", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("alignment", &self.alignment)
            .field("data_offset", &self.data_offset)
            .field("file_size", &self.file_size())
            .finish()
    }
}

impl GgufFile {
    /// Maps `path` read-only and validates its header and data layout. Error messages use the
    /// path as given as the file label.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        Self::open_keeping(path.as_ref(), &|_| true)
    }

    /// [`GgufFile::open`] without the metadata keys that start with `prefix` (`general.alignment`
    /// is always kept): they are bounds-checked but not kept, and nothing is allocated for their
    /// values, whose UTF-8 and bool bytes go unchecked. For a reader inside a host that parses
    /// those keys itself (llama.cpp and `tokenizer.`: some 100k strings, which decoded and freed
    /// would leave megabytes of the host's heap fragmented).
    pub fn open_without(path: impl AsRef<Path>, prefix: &str) -> Result<GgufFile> {
        Self::open_keeping(path.as_ref(), &|key| !key.starts_with(prefix))
    }

    fn open_keeping(path: &Path, keep: &dyn Fn(&str) -> bool) -> Result<GgufFile> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the map is read-only and private to this struct. As with any file map, another
        // process truncating or rewriting the file while it is mapped could change or fault the
        // bytes under us; GGUF models are not edited in place (our writer replaces files by
        // rename), and this is the same contract ggml's own loader accepts.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let label = path.display().to_string();
        let (header, index) = parse_with_index(&mmap, &label, keep)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
            mmap,
            index,
        })
    }

    /// The file label used in error messages (the path as given to `open`).
    pub fn label(&self) -> &str {
        self.metadata.label()
    }

    pub fn file_size(&self) -> u64 {
        self.mmap.len() as u64
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

    /// Drop the file's pages from this process's resident memory (they stay in the page cache
    /// and are read back on the next access). For a host that maps the same file itself, pages
    /// read through both maps would otherwise count twice in its RSS.
    pub fn release_resident(&self) {
        self.release_range(0, self.mmap.len());
    }

    /// [`GgufFile::release_resident`] for one tensor's bytes.
    pub fn release_tensor(&self, info: &TensorInfo) {
        if let (Ok(start), Ok(len)) = (usize::try_from(self.data_offset + info.offset), usize::try_from(info.n_bytes()))
        {
            if start.checked_add(len).is_some_and(|end| end <= self.mmap.len()) {
                self.release_range(start, len);
            }
        }
    }

    fn release_range(&self, _start: usize, _len: usize) {
        // SAFETY: the map is a read-only shared file map: MADV_DONTNEED only drops its page
        // table entries, and the next access reads the same bytes from the page cache.
        #[cfg(unix)]
        if _len > 0 {
            let _ = unsafe { self.mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, _start, _len) };
        }
    }

    /// O(1) lookup. The fields are public, so the index is confirmed against `tensors` and a
    /// linear search is the fallback if the caller has edited the list.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        match self.index.get(name).and_then(|&i| self.tensors.get(i)) {
            Some(t) if t.name == name => Some(t),
            _ => self.tensors.iter().find(|t| t.name == name),
        }
    }

    /// The data of a tensor of this file (bounds were validated by `open`).
    ///
    /// # Panics
    /// If `info` describes bytes outside the file, which cannot happen for the entries of
    /// `self.tensors` as parsed; use [`GgufFile::try_tensor_data`] for descriptors of other origin.
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        match self.try_tensor_data(info) {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// The data of `info`, or an error naming the tensor if it lies outside the file.
    pub fn try_tensor_data(&self, info: &TensorInfo) -> Result<&[u8]> {
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(info.n_bytes()));
        let slice = match (start, end) {
            (Some(s), Some(e)) => {
                usize::try_from(s).ok().zip(usize::try_from(e).ok()).and_then(|(s, e)| self.mmap.get(s..e))
            }
            _ => None,
        };
        slice.ok_or_else(|| {
            Error::Invalid(format!(
                "{}: tensor '{}': offset {} + {} bytes lies outside the data section",
                self.label(),
                info.name,
                info.offset,
                info.n_bytes()
            ))
        })
    }

    /// The data of the tensor called `name`, or an error naming the file and the tensor.
    pub fn tensor_data_by_name(&self, name: &str) -> Result<&[u8]> {
        let info =
            self.tensor(name).ok_or_else(|| Error::NotFound(format!("{}: no tensor named '{name}'", self.label())))?;
        self.try_tensor_data(info)
    }
}
