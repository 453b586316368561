//! Ordered JSON trees for everything the fake writes, and the `j!` macro that builds them.
//!
//! Real pi writes object keys in insertion order, and the relay's tests (and ours) compare against its captures.
//! `serde_json::Value` sorts keys unless serde_json's `preserve_order` feature is on, and enabling that feature here
//! would switch it on for every crate built alongside this one (feature unification). So lines are built as [`J`]
//! trees, which keep keys in source order and serialize through serde_json's writer.

use serde::ser::{Serialize, SerializeMap, Serializer};

/// A JSON value whose objects keep their keys in the order they were written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
    /// A value taken from a client's command (an `id`, tool arguments); its own key order is kept as parsed.
    Raw(serde_json::Value),
}

impl J {
    /// Serializes as one compact line with its trailing `\n`, appended to `out`.
    pub(crate) fn write_line(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.push(b'\n');
        Ok(())
    }

    /// The line as a fresh buffer; for output that is written many times.
    pub(crate) fn to_line(&self) -> serde_json::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(256);
        self.write_line(&mut out)?;
        Ok(out)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&J> {
        match self {
            J::Obj(entries) => entries.iter().find(|(k, _)| *k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }
}

impl Serialize for J {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            J::Null => s.serialize_unit(),
            J::Bool(b) => s.serialize_bool(*b),
            J::Int(i) => s.serialize_i64(*i),
            J::Float(f) => s.serialize_f64(*f),
            J::Str(text) => s.serialize_str(text),
            J::Arr(items) => s.collect_seq(items),
            J::Obj(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
            J::Raw(v) => v.serialize(s),
        }
    }
}

impl From<bool> for J {
    fn from(b: bool) -> J {
        J::Bool(b)
    }
}

impl From<i64> for J {
    fn from(i: i64) -> J {
        J::Int(i)
    }
}

impl From<i32> for J {
    fn from(i: i32) -> J {
        J::Int(i64::from(i))
    }
}

impl From<usize> for J {
    fn from(n: usize) -> J {
        J::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

/// Whole numbers become integers, because JavaScript prints `0`, not `0.0`.
impl From<f64> for J {
    fn from(f: f64) -> J {
        // The range check keeps the cast exact; anything outside it stays a float.
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            J::Int(f as i64)
        } else {
            J::Float(f)
        }
    }
}

impl From<&str> for J {
    fn from(s: &str) -> J {
        J::Str(s.to_owned())
    }
}

impl From<String> for J {
    fn from(s: String) -> J {
        J::Str(s)
    }
}

impl From<&String> for J {
    fn from(s: &String) -> J {
        J::Str(s.clone())
    }
}

impl From<Vec<J>> for J {
    fn from(items: Vec<J>) -> J {
        J::Arr(items)
    }
}

impl From<&J> for J {
    fn from(j: &J) -> J {
        j.clone()
    }
}

impl From<serde_json::Value> for J {
    fn from(v: serde_json::Value) -> J {
        J::Raw(v)
    }
}

impl<T: Into<J>> From<Option<T>> for J {
    fn from(v: Option<T>) -> J {
        v.map_or(J::Null, Into::into)
    }
}

/// Builds a [`J`] with `serde_json::json!`-like syntax, keeping object keys in the order written.
///
/// Keys must be string literals. A value is a literal, `null`, a nested `[...]` or `{...}`, or any single token
/// tree that converts `Into<J>`; wrap longer expressions in parentheses: `"usage": (usage_done())`.
macro_rules! j {
    (null) => {
        $crate::json::J::Null
    };
    ([ $($elem:tt),* $(,)? ]) => {
        $crate::json::J::Arr(vec![ $( j!($elem) ),* ])
    };
    ({ $($key:literal : $val:tt),* $(,)? }) => {
        $crate::json::J::Obj(vec![ $( ($key, j!($val)) ),* ])
    };
    ($other:expr) => {
        $crate::json::J::from($other)
    };
}

#[cfg(test)]
mod tests {
    use super::J;

    #[test]
    fn objects_keep_the_key_order_they_were_written_in() {
        let id = serde_json::json!({"z": 1, "a": 2});
        let line = j!({"type": "response", "b": [1, true, null, "s"], "a": {}, "id": (id.clone())})
            .to_line()
            .unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"type\":\"response\",\"b\":[1,true,null,\"s\"],\"a\":{},\"id\":{\"a\":2,\"z\":1}}\n"
        );
    }

    #[test]
    fn floats_print_like_javascript_numbers() {
        let line = j!([0.0, 0.0859375, 3.0]).to_line().unwrap();
        assert_eq!(line, b"[0,0.0859375,3]\n");
    }

    #[test]
    fn lookups_find_top_level_keys_only() {
        let v = j!({"message": {"role": "user"}});
        assert_eq!(
            v.get("message")
                .and_then(|m| m.get("role"))
                .and_then(J::as_str),
            Some("user")
        );
        assert_eq!(v.get("role"), None);
    }
}
