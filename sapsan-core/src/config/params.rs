//! [`Params`] (an ordered parameter map), [`ModelConfig`] (what has one), [`Kwargs`] (extra,
//! user-chosen parameters) and [`KwargsMap`] (what a `#[sapsan(kwargs)]` field may be).
use std::collections::{BTreeMap, HashMap};

use super::keys::check_key;
use super::pystr::PyStr;
use crate::error::{Error, Result};

/// An ordered map of MLflow parameters: `(key, formatted value)` pairs in the order they were
/// added, keys unique. This is what a config reports and what a run logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `key = value`. Fails with [`Error::InvalidKey`] when MLflow would reject the key and
    /// with [`Error::Config`] when the key is already present.
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> Result<()> {
        let key = key.into();
        check_key(&key).map_err(|rule| Error::InvalidKey {
            key: key.clone(),
            rule: rule.to_string(),
        })?;
        if self.contains_key(&key) {
            return Err(Error::Config {
                config: "parameters".into(),
                reason: format!("parameter {key:?} is given twice; every key must be unique"),
            });
        }
        self.0.push((key, value.into()));
        Ok(())
    }

    /// Appends every pair of `other` (same checks as [`Params::insert`]).
    pub fn extend(&mut self, other: Params) -> Result<()> {
        for (k, v) in other.0 {
            self.insert(k, v)?;
        }
        Ok(())
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(k, _)| k.as_str())
    }

    /// The pairs as a vector, in order.
    pub fn into_vec(self) -> Vec<(String, String)> {
        self.0
    }
}

impl IntoIterator for Params {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Params {
    type Item = (&'a str, &'a str);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a str, &'a str),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// A group of parameters that is logged to MLflow: `model - <field>`, `data - <field>`, ...
///
/// Derive it with `#[derive(ModelConfig)]` (see the macro's documentation), or implement it by hand.
/// The trait is object safe, so `&dyn ModelConfig` works.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a parameter group (it does not implement `ModelConfig`)",
    label = "`params(...)` needs a `ModelConfig`",
    note = "add `#[derive(sapsan::ModelConfig)]` to the type, or implement `sapsan::config::ModelConfig` for it"
)]
pub trait ModelConfig {
    /// The parameters in their logging order, keys checked, values formatted like Python's `str()`.
    fn parameters(&self) -> Result<Params>;
}

impl<T: ModelConfig + ?Sized> ModelConfig for &T {
    fn parameters(&self) -> Result<Params> {
        (**self).parameters()
    }
}

impl<T: ModelConfig + ?Sized> ModelConfig for Box<T> {
    fn parameters(&self) -> Result<Params> {
        (**self).parameters()
    }
}

impl<T: ModelConfig + ?Sized> ModelConfig for std::sync::Arc<T> {
    fn parameters(&self) -> Result<Params> {
        (**self).parameters()
    }
}

/// Extra parameters in the order they were added, each formatted when added: the Rust form of
/// Python's `ModelConfig(new_parameter=value)`. Use it as a `#[sapsan(kwargs)]` field.
///
/// ```
/// use sapsan_core::config::Kwargs;
/// let kw = Kwargs::new().with("new_parameter", 0.5).with("layers", [16, 16, 16]);
/// assert_eq!(kw.get("layers"), Some("[16, 16, 16]"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kwargs(Vec<(String, String)>);

impl Kwargs {
    /// No extra parameters.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds `name = value` (replacing an earlier value of `name`, in place), builder style.
    pub fn with(mut self, name: impl Into<String>, value: impl PyStr) -> Self {
        self.insert(name, value);
        self
    }
    /// Adds `name = value` (replacing an earlier value of `name`, in place).
    pub fn insert(&mut self, name: impl Into<String>, value: impl PyStr) {
        let name = name.into();
        let value = value.py_str();
        match self.0.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }
    /// The formatted value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
    /// Number of extra parameters.
    pub fn len(&self) -> usize {
        self.0.len()
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What a `#[sapsan(kwargs)]` field may be: a map from names to formattable values.
///
/// Implemented for [`Kwargs`] (insertion order), `BTreeMap<K, V>` (key order) and `HashMap<K, V>`
/// (sorted by name, so runs are reproducible), with `K: AsRef<str>` and `V: PyStr`, and for
/// `Vec<(K, V)>` (its order).
#[diagnostic::on_unimplemented(
    message = "`#[sapsan(kwargs)]` needs a map from names to formattable values, not `{Self}`",
    label = "not a kwargs map",
    note = "use `sapsan::config::Kwargs`, `BTreeMap<String, V>`, `HashMap<String, V>` or `Vec<(String, V)>` with `V: PyStr`"
)]
pub trait KwargsMap {
    /// The `(name, formatted value)` pairs in logging order.
    fn kwarg_pairs(&self) -> Vec<(String, String)>;
}

impl KwargsMap for Kwargs {
    fn kwarg_pairs(&self) -> Vec<(String, String)> {
        self.0.clone()
    }
}

impl<K: AsRef<str>, V: PyStr> KwargsMap for BTreeMap<K, V> {
    fn kwarg_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.py_str()))
            .collect()
    }
}

impl<K: AsRef<str>, V: PyStr, S> KwargsMap for HashMap<K, V, S> {
    fn kwarg_pairs(&self) -> Vec<(String, String)> {
        let mut v: Vec<_> = self
            .iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.py_str()))
            .collect();
        v.sort();
        v
    }
}

impl<K: AsRef<str>, V: PyStr> KwargsMap for Vec<(K, V)> {
    fn kwarg_pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(k, v)| (k.as_ref().to_owned(), v.py_str()))
            .collect()
    }
}

/// Builds the parameter map of one config; what `#[derive(ModelConfig)]` generates calls this.
/// Usable by hand-written [`ModelConfig`] impls too.
#[derive(Debug)]
pub struct ParamsBuilder {
    config: &'static str,
    prefix: &'static str,
    params: Params,
}

impl ParamsBuilder {
    /// A builder for config type `config` (named in errors) whose keys are `<prefix> - <name>`.
    pub fn new(config: &'static str, prefix: &'static str) -> Self {
        Self {
            config,
            prefix,
            params: Params::new(),
        }
    }

    fn error(&self, reason: String) -> Error {
        Error::Config {
            config: self.config.to_owned(),
            reason,
        }
    }

    /// Adds `<prefix> - <name> = value`, checking the key.
    pub fn field(&mut self, name: &str, value: String) -> Result<()> {
        let key = format!("{} - {name}", self.prefix);
        if let Err(rule) = check_key(&key) {
            return Err(self.error(format!("parameter key {key:?} is invalid: {rule}")));
        }
        if self.params.contains_key(&key) {
            return Err(self.error(format!("parameter {key:?} is given twice")));
        }
        self.params.0.push((key, value));
        Ok(())
    }

    /// Adds every kwarg as `<prefix> - <name>`. A kwarg whose key MLflow would reject, or which
    /// would replace a field's parameter, is an [`Error::Config`] naming it.
    pub fn kwargs(&mut self, map: &(impl KwargsMap + ?Sized)) -> Result<()> {
        for (name, value) in map.kwarg_pairs() {
            let key = format!("{} - {name}", self.prefix);
            if let Err(rule) = check_key(&key) {
                return Err(self.error(format!(
                    "kwarg {name:?} gives the MLflow key {key:?}, which is invalid: {rule}; rename the kwarg"
                )));
            }
            if self.params.contains_key(&key) {
                return Err(self.error(format!(
                    "kwarg {name:?} would replace the parameter {key:?} set by a field; rename the kwarg"
                )));
            }
            self.params.0.push((key, value));
        }
        Ok(())
    }

    /// The finished map.
    pub fn finish(self) -> Params {
        self.params
    }
}

/// What a `#[sapsan(default = expr)]` field may be: an `Option` whose `None` is replaced by `expr`.
#[diagnostic::on_unimplemented(
    message = "`#[sapsan(default = ...)]` applies to `Option<T>` fields, not `{Self}`",
    label = "not an `Option`",
    note = "make the field an `Option<T>` whose `None` means \"derive it\", or drop `default`"
)]
pub trait OptionalField {
    /// The value inside.
    type Value: PyStr;
    /// The value, if set.
    fn value(&self) -> Option<&Self::Value>;
}

impl<T: PyStr> OptionalField for Option<T> {
    type Value = T;
    fn value(&self) -> Option<&T> {
        self.as_ref()
    }
}

/// Formats an optional field: its value when set, else the derived default `default()`.
pub fn format_or_default<O: OptionalField + ?Sized>(
    field: &O,
    default: impl FnOnce() -> O::Value,
) -> String {
    match field.value() {
        Some(v) => v.py_str(),
        None => default().py_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_keep_order_and_refuse_bad_or_duplicate_keys() {
        let mut p = Params::new();
        p.insert("model - b", "1").unwrap();
        p.insert("model - a", "2").unwrap();
        assert_eq!(p.keys().collect::<Vec<_>>(), ["model - b", "model - a"]);
        assert!(matches!(
            p.insert("model - a", "3"),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            p.insert("acc@1", "3"),
            Err(Error::InvalidKey { .. })
        ));
        assert_eq!(p.get("model - a"), Some("2"));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn builder_checks_kwargs() {
        let mut b = ParamsBuilder::new("Cfg", "model");
        b.field("lr", 1e-3.py_str()).unwrap();
        b.kwargs(&Kwargs::new().with("x", 1)).unwrap();
        let err = b.kwargs(&Kwargs::new().with("lr", 2)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "config Cfg: kwarg \"lr\" would replace the parameter \"model - lr\" set by a field; rename the kwarg"
        );
        let err = b.kwargs(&Kwargs::new().with("a@b", 2)).unwrap_err();
        assert!(err.to_string().contains("\"model - a@b\""), "{err}");
        let p = b.finish();
        assert_eq!(
            p.into_vec(),
            [
                ("model - lr".to_owned(), "0.001".to_owned()),
                ("model - x".to_owned(), "1".to_owned())
            ]
        );
    }

    #[test]
    fn kwargs_maps_order() {
        let kw = Kwargs::new().with("b", 1).with("a", 2).with("b", 3);
        assert_eq!(
            kw.kwarg_pairs(),
            [("b".into(), "3".into()), ("a".into(), "2".into())]
        );
        let h: HashMap<&str, bool> = [("z", true), ("c", false)].into();
        assert_eq!(
            h.kwarg_pairs(),
            [("c".into(), "False".into()), ("z".into(), "True".into())]
        );
    }

    #[test]
    fn optional_default() {
        assert_eq!(format_or_default(&None::<f64>, || 1e-3 * 1e-2), "1e-05");
        assert_eq!(format_or_default(&Some(0.5), || 1.0), "0.5");
    }
}
