//! [`PyStr`]: format values the way Python's `str()` does, so parameters logged from Rust read exactly
//! like the ones Sapsan's Python code logs (`True`, `1e-05`, `[16, 16, 16]`, `(8, 8, 8)`, `None`).
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

/// Formats a value like Python's `str()` (and, inside containers, like `repr()`).
///
/// Implemented for `bool` (`True`/`False`), integers, floats (Python's shortest repr: `1e-05`, `0.001`,
/// `1.0`, `1e+16`, `inf`, `nan`; an `f32` prints its own shortest digits, so `1e-3f32` is `0.001`),
/// strings and paths (as they are; quoted like `'a'` inside containers), `char`, `Option` (`None`),
/// `Vec`/slices/arrays/`VecDeque` (`[16, 16, 16]`), tuples up to 8 (`(8, 8, 8)`, `(1,)`), maps
/// (`{'a': 1}`; a `HashMap` is sorted by its formatted keys so the text is stable), sets (`{1, 2}`,
/// `set()`), and references, `Box`, `Rc`, `Arc`, `Cow`.
///
/// Implement it for your own types to use them as config fields:
/// ```
/// use sapsan_core::config::PyStr;
/// enum Device { Cpu, Cuda(u32) }
/// impl PyStr for Device {
///     fn py_str(&self) -> String {
///         match self { Device::Cpu => "cpu".into(), Device::Cuda(i) => format!("cuda:{i}") }
///     }
///     // Inside a list Python shows strings quoted: ['cpu'].
///     fn py_repr(&self) -> String { format!("'{}'", self.py_str()) }
/// }
/// assert_eq!(vec![Device::Cpu, Device::Cuda(1)].py_str(), "['cpu', 'cuda:1']");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be formatted as a Python-style parameter value",
    label = "`{Self}` does not implement `PyStr`",
    note = "implement `sapsan::config::PyStr` for it, or mark the field `#[sapsan(with = path::to::fn)]` \
            (a `fn(&T) -> String`) or `#[sapsan(skip)]`"
)]
pub trait PyStr {
    /// What Python's `str(value)` prints.
    fn py_str(&self) -> String;
    /// What Python's `repr(value)` prints; used for elements of lists, tuples and maps.
    /// Defaults to [`PyStr::py_str`], which is right for numbers, booleans and `None`.
    fn py_repr(&self) -> String {
        self.py_str()
    }
}

// ---- scalars ------------------------------------------------------------------------------

impl PyStr for bool {
    fn py_str(&self) -> String {
        if *self { "True" } else { "False" }.to_owned()
    }
}

macro_rules! int_pystr {
    ($($t:ty)*) => {$(
        impl PyStr for $t {
            fn py_str(&self) -> String { self.to_string() }
        }
    )*};
}
int_pystr!(i8 i16 i32 i64 i128 isize u8 u16 u32 u64 u128 usize);

macro_rules! nonzero_pystr {
    ($($t:ty)*) => {$(
        impl PyStr for $t {
            fn py_str(&self) -> String { self.get().to_string() }
        }
    )*};
}
nonzero_pystr!(std::num::NonZeroU8 std::num::NonZeroU16 std::num::NonZeroU32 std::num::NonZeroU64
    std::num::NonZeroUsize std::num::NonZeroI32 std::num::NonZeroI64);

/// Python's `repr(float)` from Rust's shortest round-trip digits (`{:e}`).
///
/// Python writes the shortest digits `d1d2...dn` with decimal exponent `decpt` (value =
/// `0.d1d2...dn * 10^decpt`) in fixed notation when `-4 < decpt <= 16`, else as
/// `d1.d2...dne±XX` (at least two exponent digits); fixed notation always has a `.0` or a fraction.
fn python_float(shortest_exp: &str, is_nan: bool, is_inf: bool, negative: bool) -> String {
    if is_nan {
        return "nan".into();
    }
    if is_inf {
        return if negative { "-inf" } else { "inf" }.into();
    }
    let (mantissa, exp) = shortest_exp.split_once('e').unwrap_or((shortest_exp, "0"));
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exp: i32 = exp.parse().unwrap_or(0);
    let decpt = exp + 1;
    let n = digits.len() as i32;
    if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-decpt) as usize))
        } else if decpt >= n {
            format!("{sign}{digits}{}.0", "0".repeat((decpt - n) as usize))
        } else {
            let (int, frac) = digits.split_at(decpt as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { "" } else { "." };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{dot}{rest}e{esign}{:02}", exp.unsigned_abs())
    }
}

impl PyStr for f64 {
    fn py_str(&self) -> String {
        python_float(
            &format!("{self:e}"),
            self.is_nan(),
            self.is_infinite(),
            self.is_sign_negative(),
        )
    }
}

/// An `f32` prints its own shortest digits (`0.1f32` is `0.1`, not `0.10000000149011612`).
impl PyStr for f32 {
    fn py_str(&self) -> String {
        python_float(
            &format!("{self:e}"),
            self.is_nan(),
            self.is_infinite(),
            self.is_sign_negative(),
        )
    }
}

/// Python's `repr(str)`: single quotes unless the text has `'` and no `"`; escapes backslash, the
/// quote, `\n`, `\r`, `\t` and other control characters.
fn python_str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let v = c as u32;
                if v < 0x100 {
                    out.push_str(&format!("\\x{v:02x}"));
                } else {
                    out.push_str(&format!("\\u{v:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

impl PyStr for str {
    fn py_str(&self) -> String {
        self.to_owned()
    }
    fn py_repr(&self) -> String {
        python_str_repr(self)
    }
}

impl PyStr for String {
    fn py_str(&self) -> String {
        self.clone()
    }
    fn py_repr(&self) -> String {
        python_str_repr(self)
    }
}

impl PyStr for char {
    fn py_str(&self) -> String {
        self.to_string()
    }
    fn py_repr(&self) -> String {
        python_str_repr(&self.to_string())
    }
}

/// Paths print as their text (lossy UTF-8), like the `str` paths Sapsan keeps; quoted in containers.
impl PyStr for Path {
    fn py_str(&self) -> String {
        self.to_string_lossy().into_owned()
    }
    fn py_repr(&self) -> String {
        python_str_repr(&self.to_string_lossy())
    }
}

impl PyStr for PathBuf {
    fn py_str(&self) -> String {
        self.as_path().py_str()
    }
    fn py_repr(&self) -> String {
        self.as_path().py_repr()
    }
}

impl PyStr for () {
    fn py_str(&self) -> String {
        "()".into()
    }
}

// ---- wrappers -----------------------------------------------------------------------------

/// `None` for `None`, the value itself otherwise (Python has no `Some`).
impl<T: PyStr> PyStr for Option<T> {
    fn py_str(&self) -> String {
        self.as_ref().map_or_else(|| "None".into(), PyStr::py_str)
    }
    fn py_repr(&self) -> String {
        self.as_ref().map_or_else(|| "None".into(), PyStr::py_repr)
    }
}

macro_rules! deref_pystr {
    ($($(#[$m:meta])* [$($g:tt)*] $t:ty;)*) => {$(
        $(#[$m])*
        impl<$($g)*> PyStr for $t {
            fn py_str(&self) -> String { (**self).py_str() }
            fn py_repr(&self) -> String { (**self).py_repr() }
        }
    )*};
}
deref_pystr! {
    [T: PyStr + ?Sized] &T;
    [T: PyStr + ?Sized] &mut T;
    [T: PyStr + ?Sized] Box<T>;
    [T: PyStr + ?Sized] Rc<T>;
    [T: PyStr + ?Sized] Arc<T>;
    [T: PyStr + ToOwned + ?Sized] Cow<'_, T>;
}

// ---- sequences ----------------------------------------------------------------------------

fn join_repr<'a, T: PyStr + 'a>(items: impl IntoIterator<Item = &'a T>) -> String {
    items
        .into_iter()
        .map(PyStr::py_repr)
        .collect::<Vec<_>>()
        .join(", ")
}

impl<T: PyStr> PyStr for [T] {
    fn py_str(&self) -> String {
        format!("[{}]", join_repr(self))
    }
}

impl<T: PyStr, const N: usize> PyStr for [T; N] {
    fn py_str(&self) -> String {
        self.as_slice().py_str()
    }
}

impl<T: PyStr> PyStr for Vec<T> {
    fn py_str(&self) -> String {
        self.as_slice().py_str()
    }
}

impl<T: PyStr> PyStr for VecDeque<T> {
    fn py_str(&self) -> String {
        format!("[{}]", join_repr(self))
    }
}

fn set_str(mut items: Vec<String>, sort: bool) -> String {
    if items.is_empty() {
        return "set()".into();
    }
    if sort {
        items.sort();
    }
    format!("{{{}}}", items.join(", "))
}

impl<T: PyStr> PyStr for BTreeSet<T> {
    fn py_str(&self) -> String {
        set_str(self.iter().map(PyStr::py_repr).collect(), false)
    }
}

/// Sorted by the formatted elements, so the text does not change from run to run.
impl<T: PyStr, S> PyStr for HashSet<T, S> {
    fn py_str(&self) -> String {
        set_str(self.iter().map(PyStr::py_repr).collect(), true)
    }
}

fn map_str(mut items: Vec<(String, String)>, sort: bool) -> String {
    if sort {
        items.sort();
    }
    let body: Vec<String> = items
        .into_iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    format!("{{{}}}", body.join(", "))
}

impl<K: PyStr, V: PyStr> PyStr for BTreeMap<K, V> {
    fn py_str(&self) -> String {
        map_str(
            self.iter()
                .map(|(k, v)| (k.py_repr(), v.py_repr()))
                .collect(),
            false,
        )
    }
}

/// Sorted by the formatted keys, so the text does not change from run to run.
impl<K: PyStr, V: PyStr, S> PyStr for HashMap<K, V, S> {
    fn py_str(&self) -> String {
        map_str(
            self.iter()
                .map(|(k, v)| (k.py_repr(), v.py_repr()))
                .collect(),
            true,
        )
    }
}

macro_rules! tuple_pystr {
    ($(($($n:tt $t:ident),+))*) => {$(
        impl<$($t: PyStr),+> PyStr for ($($t,)+) {
            fn py_str(&self) -> String {
                let parts: Vec<String> = vec![$(self.$n.py_repr()),+];
                if parts.len() == 1 {
                    format!("({},)", parts[0])
                } else {
                    format!("({})", parts.join(", "))
                }
            }
        }
    )*};
}
tuple_pystr! {
    (0 A)
    (0 A, 1 B)
    (0 A, 1 B, 2 C)
    (0 A, 1 B, 2 C, 3 D)
    (0 A, 1 B, 2 C, 3 D, 4 E)
    (0 A, 1 B, 2 C, 3 D, 4 E, 5 F)
    (0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G)
    (0 A, 1 B, 2 C, 3 D, 4 E, 5 F, 6 G, 7 H)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every expected string below was printed by CPython 3 (`python3 -c 'print(str(x))'`).
    #[test]
    fn floats_match_python_repr() {
        let cases: &[(f64, &str)] = &[
            (1e-5, "1e-05"),
            (1e-4, "0.0001"),
            (0.0001, "0.0001"),
            (0.001, "0.001"),
            (1e-3 * 1e-2, "1e-05"),
            (1.0, "1.0"),
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (0.1 + 0.2, "0.30000000000000004"),
            (123456789012345678.0, "1.2345678901234568e+17"),
            (1234567890123456.0, "1234567890123456.0"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (1e100, "1e+100"),
            (1e-100, "1e-100"),
            (1.5e-7, "1.5e-07"),
            (-2.5e-5, "-2.5e-05"),
            (123.456, "123.456"),
            (0.5, "0.5"),
            (-3.0, "-3.0"),
            (f64::MAX, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
            (f64::NAN, "nan"),
        ];
        for (v, want) in cases {
            assert_eq!(v.py_str(), *want, "{v:e}");
        }
    }

    #[test]
    fn f32_uses_its_own_shortest_digits() {
        assert_eq!(1e-3f32.py_str(), "0.001");
        assert_eq!(0.1f32.py_str(), "0.1");
        assert_eq!(1e-5f32.py_str(), "1e-05");
        assert_eq!(3.0f32.py_str(), "3.0");
        assert_eq!(f32::NAN.py_str(), "nan");
    }

    #[test]
    fn scalars_strings_and_paths() {
        assert_eq!(true.py_str(), "True");
        assert_eq!(false.py_str(), "False");
        assert_eq!(10u32.py_str(), "10");
        assert_eq!((-7i64).py_str(), "-7");
        assert_eq!("./logs/".py_str(), "./logs/");
        assert_eq!(String::from("u, b").py_str(), "u, b");
        assert_eq!(
            PathBuf::from("data/t{checkpoint:1.0f}/x.h5").py_str(),
            "data/t{checkpoint:1.0f}/x.h5"
        );
        assert_eq!(None::<f64>.py_str(), "None");
        assert_eq!(Some(1e-5).py_str(), "1e-05");
        assert_eq!(Some("cpu").py_str(), "cpu");
    }

    #[test]
    fn containers_match_python_str() {
        assert_eq!(vec![16, 16, 16].py_str(), "[16, 16, 16]");
        assert_eq!([32usize; 3].py_str(), "[32, 32, 32]");
        assert_eq!((8, 8, 8).py_str(), "(8, 8, 8)");
        assert_eq!((1,).py_str(), "(1,)");
        assert_eq!(Vec::<i32>::new().py_str(), "[]");
        assert_eq!(vec!["u", "b"].py_str(), "['u', 'b']");
        assert_eq!(vec![1.0, 1e-5].py_str(), "[1.0, 1e-05]");
        assert_eq!(vec![Some(1), None].py_str(), "[1, None]");
        assert_eq!(vec![true, false].py_str(), "[True, False]");
        assert_eq!((1, "a", 2.5).py_str(), "(1, 'a', 2.5)");
        assert_eq!(vec![(1, 2), (3, 4)].py_str(), "[(1, 2), (3, 4)]");
        assert_eq!(vec![vec![1], vec![]].py_str(), "[[1], []]");
        let m: BTreeMap<&str, i32> = [("b", 2), ("a", 1)].into();
        assert_eq!(m.py_str(), "{'a': 1, 'b': 2}");
        let h: HashMap<String, f64> = [("x".to_owned(), 0.5), ("a".to_owned(), 1e16)].into();
        assert_eq!(h.py_str(), "{'a': 1e+16, 'x': 0.5}");
        assert_eq!(BTreeSet::<i32>::new().py_str(), "set()");
        assert_eq!(BTreeSet::from([2, 1]).py_str(), "{1, 2}");
    }

    #[test]
    fn string_repr_quotes_like_python() {
        // python3 -c "print(['it''s', 'say \"hi\"', 'both \' \"', 'a\\\\b', 'line\n', '\x01'])"
        assert_eq!(vec!["it's"].py_str(), "[\"it's\"]");
        assert_eq!(vec!["say \"hi\""].py_str(), "['say \"hi\"']");
        assert_eq!(vec!["both ' \""].py_str(), "['both \\' \"']");
        assert_eq!(vec!["a\\b"].py_str(), "['a\\\\b']");
        assert_eq!(vec!["line\n"].py_str(), "['line\\n']");
        assert_eq!(vec!["\u{1}"].py_str(), "['\\x01']");
        assert_eq!(vec!["é"].py_str(), "['é']");
    }
}
