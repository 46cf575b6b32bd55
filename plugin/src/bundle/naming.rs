//! Reserved names. Every key and tensor the bundle adds lives under `switchyard.`, so a
//! patched loader can set them apart from the base model with one prefix test.

use crate::error::Result;

pub const PREFIX: &str = "switchyard.";
pub const KEY_FORMAT_VERSION: &str = "switchyard.format_version";
pub const KEY_BASE_FINGERPRINT: &str = "switchyard.base_fingerprint";
pub const KEY_EXPERT_NAMES: &str = "switchyard.expert_names";
/// The newest bundle layout this library reads. Version 2 added low-rank deltas (`lr_a`,
/// `lr_b`); a bundle without them is written as version 1, which older readers still read.
pub const FORMAT_VERSION: u32 = 2;
/// The first version with low-rank deltas.
pub const FORMAT_VERSION_LOW_RANK: u32 = 2;

/// The version a bundle of `experts` is written as: the oldest that holds its deltas.
pub fn format_version_for(experts: &[crate::bundle::ExpertDeltas]) -> u32 {
    let low_rank =
        experts.iter().any(|e| e.tensors.iter().any(|(_, d)| matches!(d, crate::bundle::TensorDelta::LowRank(_))));
    if low_rank {
        FORMAT_VERSION_LOW_RANK
    } else {
        1
    }
}

/// Names that select something other than an expert where experts are chosen by name.
pub const RESERVED_EXPERT_NAMES: &[&str] = &["base", "auto"];

pub fn expert_key(index: usize, field: &str) -> String {
    format!("switchyard.expert.{index}.{field}")
}

/// The GGUF tensor holding `part` of expert `index`'s delta for base tensor `base`.
pub fn delta_tensor(index: usize, base: &str, part: &str) -> String {
    format!("{PREFIX}{index}.{base}.{part}")
}

/// Split a delta tensor name into (expert index, base tensor name, part).
pub fn parse_delta_tensor(name: &str) -> Option<(usize, &str, &str)> {
    let rest = name.strip_prefix(PREFIX)?;
    let (index, rest) = rest.split_once('.')?;
    let index = index.parse().ok()?;
    let (base, part) = rest.rsplit_once('.')?;
    Some((index, base, part))
}

/// Expert names are used in tensor-free keys, file names, HTTP requests and command lines:
/// keep them to letters, digits, '_' and '-', 1 to 48 characters, and not a reserved word.
pub fn check_expert_name(name: &str) -> Result<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if name.is_empty() || name.len() > 48 || !ok_chars {
        crate::bail_invalid!("expert name '{name}' must be 1-48 characters of letters, digits, '_' or '-'");
    }
    if RESERVED_EXPERT_NAMES.contains(&name) {
        crate::bail_invalid!("expert name '{name}' is reserved");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_names_round_trip() {
        let n = delta_tensor(3, "blk.12.ffn_down.weight", "codes");
        assert_eq!(n, "switchyard.3.blk.12.ffn_down.weight.codes");
        assert_eq!(parse_delta_tensor(&n), Some((3, "blk.12.ffn_down.weight", "codes")));
        assert_eq!(parse_delta_tensor("blk.0.attn_q.weight"), None);
    }

    #[test]
    fn expert_names_are_checked() {
        assert!(check_expert_name("math-v2_1").is_ok());
        for bad in ["", "base", "auto", "a b", "x/y", &"a".repeat(49)] {
            assert!(check_expert_name(bad).is_err(), "{bad}");
        }
    }
}
