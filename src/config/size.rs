//! Byte counts written as `100MB`, `64KiB` or a plain number.

use serde::{Deserialize, Deserializer};

/// A byte count: a number, or a string like `100MB`, `64KiB`, `1GB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses `100MB`, `64 KiB`, `1024`.
    pub fn parse(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: f64 = num
            .parse()
            .map_err(|_| format!("`{s}` is not a size; write e.g. `100MB` or `1048576`"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" | "k" => 1000,
            "kib" => 1024,
            "mb" | "m" => 1000 * 1000,
            "mib" => 1024 * 1024,
            "gb" | "g" => 1000 * 1000 * 1000,
            "gib" => 1024 * 1024 * 1024,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{s}`; use B, KB, KiB, MB, MiB, GB or GiB"
                ))
            }
        };
        Ok(ByteSize((num * mult as f64) as u64))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_yaml::Value::deserialize(d)?;
        match &v {
            serde_yaml::Value::Number(n) => n.as_u64().map(ByteSize).ok_or_else(|| {
                serde::de::Error::custom(format!("size must be a whole number, not {n}"))
            }),
            serde_yaml::Value::String(s) => ByteSize::parse(s).map_err(serde::de::Error::custom),
            _ => Err(serde::de::Error::custom(format!(
                "size must be a number or a string like `100MB`, not {}",
                yaml_brief(&v)
            ))),
        }
    }
}

pub(crate) fn yaml_brief(v: &serde_yaml::Value) -> String {
    serde_yaml::to_string(v)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}
