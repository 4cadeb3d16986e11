//! Sapsan's path templates: Python `str.format` with the two names `checkpoint` and `feature`.
//!
//! Sapsan builds every file name as
//! `path.format(checkpoint=time_granularity * checkpoint, feature=feature)`, for example
//! `data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5` with checkpoint 0 and feature `u` gives
//! `data/t0/u_dim32_fm15.h5`. This module implements the part of Python's format mini-language
//! such templates use, with Python's results:
//!
//! - `{checkpoint}`: Python `str(float)`: `0.0`, `2.5`, `1e-05`.
//! - `{checkpoint:.Nf}`, `{checkpoint:W.Nf}`, `{checkpoint:0W.Nf}` (also `F`): fixed point with `N`
//!   decimals (round half to even, like Python), right-aligned in width `W`, zero-padded with `0`.
//! - `{checkpoint:d}`, `{checkpoint:Wd}`, `{checkpoint:0Wd}`: an integer; the value must be whole.
//! - `{feature}` (or `{feature:s}`): the feature name.
//! - `{{` and `}}`: literal braces.
//!
//! Anything else (unknown names, positional `{}`, other format types) is an [`Error::Setting`]
//! naming the template.
use crate::{Error, Result};

/// Formats Sapsan's path `template` for one file: `{checkpoint...}` becomes `checkpoint`
/// (already multiplied by the time granularity) and `{feature}` becomes `feature`.
///
/// ```
/// use sapsan_core::data::format_path;
/// let p = format_path("data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5", 0.0, "u").unwrap();
/// assert_eq!(p, "data/t0/u_dim32_fm15.h5");
/// ```
pub fn format_path(template: &str, checkpoint: f64, feature: &str) -> Result<String> {
    let mut out = String::with_capacity(template.len() + 8);
    let mut chars = template.char_indices().peekable();
    while let Some((pos, c)) = chars.next() {
        match c {
            '{' if chars.peek().map(|&(_, c)| c) == Some('{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek().map(|&(_, c)| c) == Some('}') => {
                chars.next();
                out.push('}');
            }
            '}' => {
                return Err(bad(
                    template,
                    format!("single '}}' at byte {pos}; write '}}}}' for a literal brace"),
                ));
            }
            '{' => {
                let mut field = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    field.push(c);
                }
                if !closed {
                    return Err(bad(
                        template,
                        format!(
                            "'{{' at byte {pos} is never closed; write '{{{{' for a literal brace"
                        ),
                    ));
                }
                let (name, spec) = match field.split_once(':') {
                    Some((n, s)) => (n, Some(s)),
                    None => (field.as_str(), None),
                };
                match name {
                    "checkpoint" => out.push_str(&format_number(template, checkpoint, spec)?),
                    "feature" => match spec {
                        None | Some("") | Some("s") => out.push_str(feature),
                        Some(s) => {
                            return Err(bad(
                                template,
                                format!(
                                    "unsupported format spec {s:?} for {{feature}}; use plain {{feature}}"
                                ),
                            ));
                        }
                    },
                    other => {
                        return Err(bad(
                            template,
                            format!(
                                "unknown placeholder {{{other}}}; only {{checkpoint}} (with an optional \
                                 format such as :1.0f or :d) and {{feature}} are filled in"
                            ),
                        ));
                    }
                }
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn bad(template: &str, reason: String) -> Error {
    Error::Setting {
        name: "data - path".to_string(),
        value: template.to_string(),
        reason,
    }
}

/// Applies a Python format spec (`[0][width][.precision][type]`) to a number.
fn format_number(template: &str, value: f64, spec: Option<&str>) -> Result<String> {
    let spec = spec.unwrap_or("");
    if spec.is_empty() {
        return Ok(python_float_str(value));
    }
    let unsupported = || {
        bad(
            template,
            format!(
                "unsupported format spec {spec:?} for {{checkpoint}}; supported: plain, :d, :Wd, \
                 :0Wd, :.Nf, :W.Nf, :0W.Nf"
            ),
        )
    };
    let (body, kind) = match spec.chars().last() {
        Some(t @ ('f' | 'F' | 'd')) => (&spec[..spec.len() - 1], Some(t)),
        Some(c) if c.is_ascii_digit() => (spec, None),
        _ => return Err(unsupported()),
    };
    let zero_pad = body.starts_with('0') && body.len() > 1;
    let (width, precision) = match body.split_once('.') {
        Some((w, p)) => (w, Some(p)),
        None => (body, None),
    };
    let parse = |s: &str| -> Result<Option<usize>> {
        if s.is_empty() {
            Ok(None)
        } else if s.chars().all(|c| c.is_ascii_digit()) {
            s.parse().map(Some).map_err(|_| unsupported())
        } else {
            Err(unsupported())
        }
    };
    let width = parse(width)?.unwrap_or(0);
    let precision = match precision {
        Some(p) => Some(parse(p)?.ok_or_else(unsupported)?),
        None => None,
    };
    let digits = match (kind, precision) {
        (Some('d'), Some(_)) => return Err(unsupported()),
        (Some('d'), None) => {
            if value.fract() != 0.0 || !value.is_finite() {
                return Err(bad(
                    template,
                    format!(
                        "{{checkpoint:{spec}}} needs a whole number but time_granularity * checkpoint \
                         = {}; use a float format such as :1.2f",
                        python_float_str(value)
                    ),
                ));
            }
            format!("{:.0}", value.abs())
        }
        (Some(_), p) => format!("{:.*}", p.unwrap_or(6), value.abs()),
        // Python: a width with no type on a float is `str()` padded.
        (None, None) => python_float_str(value.abs()),
        (None, Some(p)) => {
            // Python's general format with precision: rare in templates; keep it strict.
            let _ = p;
            return Err(unsupported());
        }
    };
    let sign = if value.is_sign_negative() && value != 0.0 {
        "-"
    } else {
        ""
    };
    let len = sign.len() + digits.len();
    let pad = width.saturating_sub(len);
    Ok(if zero_pad {
        format!("{sign}{}{digits}", "0".repeat(pad))
    } else {
        format!("{}{sign}{digits}", " ".repeat(pad))
    })
}

/// Python's `str(float)`: shortest round-trip digits, `.0` on whole numbers, exponent form
/// (`1e-05`, `1.5e+20`) below 1e-4 and from 1e16 on.
pub(crate) fn python_float_str(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    let a = v.abs();
    if a == 0.0 || (1e-4..1e16).contains(&a) {
        let s = format!("{v}");
        if s.contains('.') { s } else { s + ".0" }
    } else {
        let s = format!("{v:e}");
        let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
        let (esign, edigits) = match exp.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exp),
        };
        format!("{mantissa}e{esign}{edigits:0>2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAPSAN: &str = "data/t{checkpoint:1.0f}/{feature}_dim32_fm15.h5";

    #[test]
    fn sapsan_example_template() {
        assert_eq!(
            format_path(SAPSAN, 0.0, "u").unwrap(),
            "data/t0/u_dim32_fm15.h5"
        );
        assert_eq!(
            format_path(SAPSAN, 12.0, "tn").unwrap(),
            "data/t12/tn_dim32_fm15.h5"
        );
    }

    #[test]
    fn python_format_results() {
        // Each expected string is what Python 3 prints for the same format.
        let cases: &[(&str, f64, &str)] = &[
            ("{checkpoint}", 0.0, "0.0"),
            ("{checkpoint}", 2.5, "2.5"),
            ("{checkpoint}", 1e-5, "1e-05"),
            ("{checkpoint}", 1.5e20, "1.5e+20"),
            ("{checkpoint}", 3.0, "3.0"),
            ("{checkpoint:1.0f}", 2.5, "2"), // round half to even
            ("{checkpoint:1.0f}", 3.5, "4"),
            ("{checkpoint:.2f}", 0.125, "0.12"),
            ("{checkpoint:6.2f}", 1.5, "  1.50"),
            ("{checkpoint:06.2f}", 1.5, "001.50"),
            ("{checkpoint:06.2f}", -1.5, "-01.50"),
            ("{checkpoint:f}", 1.0, "1.000000"),
            ("{checkpoint:d}", 7.0, "7"),
            ("{checkpoint:4d}", 7.0, "   7"),
            ("{checkpoint:04d}", 7.0, "0007"),
            ("{checkpoint:5}", 2.5, "  2.5"),
            ("{{x}}{feature:s}", 0.0, "{x}u"),
        ];
        for &(t, v, want) in cases {
            assert_eq!(
                format_path(t, v, "u").unwrap(),
                want,
                "template {t} value {v}"
            );
        }
    }

    #[test]
    fn unknown_placeholder_names_template() {
        let e = format_path("data/{time}/{feature}.h5", 0.0, "u")
            .unwrap_err()
            .to_string();
        assert!(e.contains("data/{time}/{feature}.h5"), "{e}");
        assert!(e.contains("unknown placeholder {time}"), "{e}");
        let e = format_path("data/{}.h5", 0.0, "u").unwrap_err().to_string();
        assert!(e.contains("unknown placeholder {}"), "{e}");
    }

    #[test]
    fn bad_specs_and_braces_are_errors() {
        for t in [
            "{checkpoint:x}",
            "{checkpoint:.2d}",
            "{checkpoint:1.2e}",
            "{feature:>5}",
            "t{checkpoint",
            "t}x",
        ] {
            let e = format_path(t, 1.0, "u").unwrap_err().to_string();
            assert!(e.contains(t), "{t}: {e}");
        }
        let e = format_path("{checkpoint:d}", 0.5, "u")
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole number"), "{e}");
    }
}
