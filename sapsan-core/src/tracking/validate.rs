//! Client-side checks, identical to the MLflow server's rules, and the JSON encoding of values.
//!
//! Key rules come from [`crate::config::keys`] (the one source of truth shared with the derive).
use crate::config::keys::{MAX_PARAM_VALUE_LEN, MAX_TAG_VALUE_LEN, check_key};
use crate::error::{Error, Result};

use super::LogItem;

/// Checks a metric, param or tag key.
pub fn key(key: &str) -> Result<()> {
    check_key(key).map_err(|rule| Error::InvalidKey {
        key: key.to_owned(),
        rule: rule.to_string(),
    })
}

/// Checks a param value's length (at most 6000 characters).
pub fn param_value(key: &str, value: &str) -> Result<()> {
    value_len(key, value, "param", MAX_PARAM_VALUE_LEN)
}

/// Checks a tag value's length (at most 8000 characters).
pub fn tag_value(key: &str, value: &str) -> Result<()> {
    value_len(key, value, "tag", MAX_TAG_VALUE_LEN)
}

fn value_len(key: &str, value: &str, kind: &'static str, max: usize) -> Result<()> {
    // Byte length bounds the character count: only count characters when it could matter.
    if value.len() <= max {
        return Ok(());
    }
    let len = value.chars().count();
    if len > max {
        return Err(Error::ValueTooLong {
            key: key.to_owned(),
            kind,
            len,
            max,
        });
    }
    Ok(())
}

/// Params are write-once: `Ok(true)` when `new` is to be recorded and sent, `Ok(false)` when the run
/// already holds this very value (nothing to send), [`Error::ParamChanged`] when it holds another.
pub fn param_change(run_id: &str, old: Option<&str>, key: &str, new: &str) -> Result<bool> {
    match old {
        None => Ok(true),
        Some(old) if old == new => Ok(false),
        Some(old) => Err(Error::ParamChanged {
            run_id: run_id.to_owned(),
            key: key.to_owned(),
            old: old.to_owned(),
            new: new.to_owned(),
        }),
    }
}

/// Checks everything about `item` that does not depend on what was logged before.
pub fn item(item: &LogItem) -> Result<()> {
    match item {
        LogItem::Metric(m) => key(&m.key),
        LogItem::Param { key: k, value } => {
            key(k)?;
            param_value(k, value)
        }
        LogItem::Tag { key: k, value } => {
            key(k)?;
            tag_value(k, value)
        }
    }
}

/// JSON for a metric value: a number, or `"NaN"`, `"Infinity"`, `"-Infinity"` (bare NaN is not JSON).
pub fn encode_f64(v: f64) -> serde_json::Value {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "Infinity".into()
    } else if v == f64::NEG_INFINITY {
        "-Infinity".into()
    } else {
        serde_json::Value::from(v)
    }
}

/// Reads a metric value sent either as a number or as one of MLflow's strings.
pub fn decode_f64(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" | "inf" => Some(f64::INFINITY),
            "-Infinity" | "-inf" => Some(f64::NEG_INFINITY),
            other => other.parse().ok(),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracking::Metric;

    #[test]
    fn invalid_key_names_key_and_rule() {
        let e = key("acc@1").unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidKey { ref key, .. } if key == "acc@1"));
        assert!(msg.contains("acc@1") && msg.contains("'@'"), "{msg}");
        assert!(key("a//b").unwrap_err().to_string().contains("//"));
        assert!(
            key(&"k".repeat(251))
                .unwrap_err()
                .to_string()
                .contains("250")
        );
        key("model - lr").unwrap();
    }

    #[test]
    fn value_limits_are_the_servers() {
        param_value("p", &"x".repeat(6000)).unwrap();
        let e = param_value("p", &"x".repeat(6001)).unwrap_err();
        assert!(matches!(
            e,
            Error::ValueTooLong {
                kind: "param",
                len: 6001,
                max: 6000,
                ..
            }
        ));
        assert!(e.to_string().contains("\"p\"") && e.to_string().contains("6000"));
        // Characters, not bytes: 6000 two-byte characters are fine.
        param_value("p", &"é".repeat(6000)).unwrap();
        tag_value("t", &"x".repeat(8000)).unwrap();
        assert!(matches!(
            tag_value("t", &"x".repeat(8001)),
            Err(Error::ValueTooLong {
                kind: "tag",
                max: 8000,
                ..
            })
        ));
    }

    #[test]
    fn items_are_checked() {
        let m = |k: &str, ts| {
            LogItem::Metric(Metric {
                key: k.into(),
                value: 1.0,
                timestamp_ms: ts,
                step: 0,
                model_id: None,
            })
        };
        item(&m("loss", 0)).unwrap();
        assert!(matches!(item(&m("x(y)", 0)), Err(Error::InvalidKey { .. })));
        let p = LogItem::Param {
            key: "/x".into(),
            value: "1".into(),
        };
        assert!(matches!(item(&p), Err(Error::InvalidKey { .. })));
    }

    #[test]
    fn nan_and_inf_round_trip_as_mlflow_strings() {
        assert_eq!(encode_f64(f64::NAN), serde_json::json!("NaN"));
        assert_eq!(encode_f64(f64::INFINITY), serde_json::json!("Infinity"));
        assert_eq!(
            encode_f64(f64::NEG_INFINITY),
            serde_json::json!("-Infinity")
        );
        assert_eq!(encode_f64(1.5), serde_json::json!(1.5));
        assert!(decode_f64(&serde_json::json!("NaN")).unwrap().is_nan());
        assert_eq!(
            decode_f64(&serde_json::json!("Infinity")),
            Some(f64::INFINITY)
        );
        assert_eq!(
            decode_f64(&serde_json::json!("-Infinity")),
            Some(f64::NEG_INFINITY)
        );
        assert_eq!(
            decode_f64(&serde_json::json!(1.7976931348623157e308)),
            Some(f64::MAX)
        );
        assert_eq!(decode_f64(&serde_json::json!(2)), Some(2.0));
        assert_eq!(decode_f64(&serde_json::json!(null)), None);
    }
}
