//! Ordered GGUF metadata: a `Vec` keeps the file order (so a read/write round trip reproduces the
//! bytes) and a `HashMap` from key to position gives O(1) lookup.
//!
//! The typed getters produce errors that name the key and the file (the "label"), because the
//! typical caller is a model loader that just wants `n_embd` and should not have to build its own
//! message when it is missing or of the wrong type.

use std::collections::HashMap;

use super::value::{Array, Value};
use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct Metadata {
    entries: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    /// File name (or other label) used in error messages; not part of the data.
    label: String,
}

/// Equality is about the data (keys, values and their order), not the label.
impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        self.entries == other.entries
    }
}

impl Metadata {
    pub fn new() -> Self {
        Self::default()
    }

    /// Empty metadata whose getter errors will start with `label` (usually the file name).
    pub fn with_label(label: impl Into<String>) -> Self {
        Metadata { label: label.into(), ..Self::default() }
    }

    pub(crate) fn with_capacity(label: &str, n: usize) -> Self {
        Metadata { entries: Vec::with_capacity(n), index: HashMap::with_capacity(n), label: label.to_string() }
    }

    pub fn label(&self) -> &str {
        if self.label.is_empty() {
            "<metadata>"
        } else {
            &self.label
        }
    }

    pub fn set_label(&mut self, label: impl Into<String>) {
        self.label = label.into();
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.entries[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.index.contains_key(key)
    }

    /// Sets `key`. An existing key keeps its position (so editing one value of a file does not
    /// reorder it); a new key is appended. Returns the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        let value = value.into();
        match self.index.get(&key) {
            Some(&i) => Some(std::mem::replace(&mut self.entries[i].1, value)),
            None => {
                self.index.insert(key.clone(), self.entries.len());
                self.entries.push((key, value));
                None
            }
        }
    }

    /// Removes `key`, keeping the order of the others. O(n): removals are rare edits.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.index.remove(key)?;
        let (_, value) = self.entries.remove(pos);
        for (k, _) in &self.entries[pos..] {
            if let Some(i) = self.index.get_mut(k) {
                *i -= 1;
            }
        }
        Some(value)
    }

    /// Entries in file order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &Value)> + '_ {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        self.entries.iter().map(|(k, _)| k.as_str())
    }

    // ---- typed getters -------------------------------------------------------------------

    fn missing(&self, key: &str) -> Error {
        Error::Invalid(format!("{}: missing metadata key '{key}'", self.label()))
    }

    fn wrong(&self, key: &str, value: &Value, expected: &str) -> Error {
        Error::Invalid(format!(
            "{}: metadata key '{key}' is {} {value}, expected {expected}",
            self.label(),
            value.type_name()
        ))
    }

    fn req(&self, key: &str) -> Result<&Value> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    /// Looks `key` up and converts it with `conv`; `Ok(None)` only when the key is absent.
    fn opt_with<'a, T>(
        &'a self,
        key: &str,
        expected: &str,
        conv: impl FnOnce(&'a Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| self.wrong(key, v, expected)),
        }
    }

    fn req_with<'a, T>(&'a self, key: &str, expected: &str, conv: impl FnOnce(&'a Value) -> Option<T>) -> Result<T> {
        let v = self.req(key)?;
        conv(v).ok_or_else(|| self.wrong(key, v, expected))
    }

    /// Any integer type whose value fits in u32 (llama.cpp writes u32, other writers i32/u64).
    pub fn get_u32(&self, key: &str) -> Result<u32> {
        self.req_with(key, "an integer that fits in u32", Value::as_u32)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.req_with(key, "a non-negative integer", Value::as_u64)
    }

    pub fn get_i32(&self, key: &str) -> Result<i32> {
        self.req_with(key, "an integer that fits in i32", Value::as_i32)
    }

    pub fn get_i64(&self, key: &str) -> Result<i64> {
        self.req_with(key, "an integer that fits in i64", Value::as_i64)
    }

    /// An `f32` value, or an `f64` one narrowed (some converters write f64).
    pub fn get_f32(&self, key: &str) -> Result<f32> {
        self.req_with(key, "a float", |v| v.as_f64().map(|x| x as f32))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.req_with(key, "a float", Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<bool> {
        self.req_with(key, "a bool", Value::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.req_with(key, "a string", Value::as_str)
    }

    pub fn get_array(&self, key: &str) -> Result<&Array> {
        self.req_with(key, "an array", Value::as_array)
    }

    pub fn get_str_array(&self, key: &str) -> Result<&[String]> {
        self.req_with(key, "an array of strings", |v| v.as_array().and_then(Array::as_strings))
    }

    // The `opt_*` getters return `Ok(None)` when the key is absent but still fail when it is
    // present with the wrong type: silently ignoring a mistyped key would hide a broken file.

    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        self.opt_with(key, "an integer that fits in u32", Value::as_u32)
    }

    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>> {
        self.opt_with(key, "a non-negative integer", Value::as_u64)
    }

    pub fn opt_i32(&self, key: &str) -> Result<Option<i32>> {
        self.opt_with(key, "an integer that fits in i32", Value::as_i32)
    }

    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        self.opt_with(key, "an integer that fits in i64", Value::as_i64)
    }

    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        self.opt_with(key, "a float", |v| v.as_f64().map(|x| x as f32))
    }

    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        self.opt_with(key, "a float", Value::as_f64)
    }

    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        self.opt_with(key, "a bool", Value::as_bool)
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        self.opt_with(key, "a string", Value::as_str)
    }

    pub fn opt_array(&self, key: &str) -> Result<Option<&Array>> {
        self.opt_with(key, "an array", Value::as_array)
    }

    pub fn opt_str_array(&self, key: &str) -> Result<Option<&[String]>> {
        self.opt_with(key, "an array of strings", |v| v.as_array().and_then(Array::as_strings))
    }
}

impl<K: Into<String>, V: Into<Value>> FromIterator<(K, V)> for Metadata {
    /// Later duplicates replace earlier values in place, like repeated [`Metadata::insert`].
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut m = Metadata::new();
        for (k, v) in iter {
            m.insert(k, v);
        }
        m
    }
}
