//! Parsing of `#[sapsan(...)]` on a `#[derive(ModelConfig)]` struct and its fields.
use syn::spanned::Spanned;

use crate::common::{Errors, did_you_mean, list, skip_value};

pub const CONTAINER_OPTIONS: &[&str] = &["prefix", "crate"];
pub const FIELD_OPTIONS: &[&str] = &["rename", "skip", "kwargs", "with", "default"];

/// Options of the struct.
#[derive(Default)]
pub struct Container {
    /// `prefix = "data"`: the key prefix (default `model`).
    pub prefix: Option<syn::LitStr>,
    /// `crate = path`: where the runtime is.
    pub krate: Option<syn::Path>,
}

/// Options of one field.
#[derive(Default)]
pub struct Field {
    pub rename: Option<syn::LitStr>,
    pub skip: Option<syn::Path>,
    pub kwargs: Option<syn::Path>,
    pub with: Option<syn::Path>,
    pub default: Option<syn::Expr>,
}

fn set_once<T>(slot: &mut Option<T>, value: T, what: &syn::Path, errors: &mut Errors) {
    if slot.is_some() {
        errors.spanned(what, format!("`{}` is given twice", name_of(what)));
    } else {
        *slot = Some(value);
    }
}

fn name_of(path: &syn::Path) -> String {
    quote::quote!(#path).to_string().replace(' ', "")
}

/// Parses the container's `#[sapsan(...)]` attributes.
pub fn container(attrs: &[syn::Attribute], errors: &mut Errors) -> Container {
    let mut c = Container::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("sapsan")) {
        let res = attr.parse_nested_meta(|meta| {
            let name = name_of(&meta.path);
            match name.as_str() {
                "prefix" => {
                    let lit: syn::LitStr = meta.value()?.parse()?;
                    set_once(&mut c.prefix, lit, &meta.path, errors);
                }
                "crate" => {
                    let v = meta.value()?;
                    let path = if v.peek(syn::LitStr) {
                        v.parse::<syn::LitStr>()?.parse()?
                    } else {
                        v.parse::<syn::Path>()?
                    };
                    set_once(&mut c.krate, path, &meta.path, errors);
                }
                other if FIELD_OPTIONS.contains(&other) => {
                    errors.spanned(
                        &meta.path,
                        format!("`{other}` is a field option; put `#[sapsan({other})]` on a field"),
                    );
                    skip_value(&meta)?;
                }
                other => {
                    errors.spanned(
                        &meta.path,
                        format!(
                            "unknown struct option `{other}` of `#[sapsan(...)]`{}; struct options are {}",
                            did_you_mean(other, CONTAINER_OPTIONS),
                            list(CONTAINER_OPTIONS)
                        ),
                    );
                    skip_value(&meta)?;
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            errors.push(e);
        }
    }
    c
}

/// Parses a field's `#[sapsan(...)]` attributes and checks that they go together.
pub fn field(attrs: &[syn::Attribute], errors: &mut Errors) -> Field {
    let mut f = Field::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("sapsan")) {
        let res = attr.parse_nested_meta(|meta| {
            let name = name_of(&meta.path);
            match name.as_str() {
                "rename" => {
                    let lit: syn::LitStr = meta.value()?.parse()?;
                    set_once(&mut f.rename, lit, &meta.path, errors);
                }
                "skip" => set_once(&mut f.skip, meta.path.clone(), &meta.path, errors),
                "kwargs" => set_once(&mut f.kwargs, meta.path.clone(), &meta.path, errors),
                "with" => {
                    let v = meta.value()?;
                    let path = if v.peek(syn::LitStr) {
                        v.parse::<syn::LitStr>()?.parse()?
                    } else {
                        v.parse::<syn::Path>()?
                    };
                    set_once(&mut f.with, path, &meta.path, errors);
                }
                "default" => {
                    let e: syn::Expr = meta.value()?.parse()?;
                    set_once(&mut f.default, e, &meta.path, errors);
                }
                other if CONTAINER_OPTIONS.contains(&other) => {
                    errors.spanned(
                        &meta.path,
                        format!("`{other}` is a struct option; put `#[sapsan({other} = ...)]` on the struct"),
                    );
                    skip_value(&meta)?;
                }
                other => {
                    errors.spanned(
                        &meta.path,
                        format!(
                            "unknown field option `{other}` of `#[sapsan(...)]`{}; field options are {}",
                            did_you_mean(other, FIELD_OPTIONS),
                            list(FIELD_OPTIONS)
                        ),
                    );
                    skip_value(&meta)?;
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            errors.push(e);
        }
    }
    // Options that cannot go together.
    let given: Vec<(&str, proc_macro2::Span)> = [
        ("rename", f.rename.as_ref().map(|x| x.span())),
        ("skip", f.skip.as_ref().map(|x| x.span())),
        ("kwargs", f.kwargs.as_ref().map(|x| x.span())),
        ("with", f.with.as_ref().map(|x| x.span())),
        ("default", f.default.as_ref().map(|x| x.span())),
    ]
    .into_iter()
    .filter_map(|(n, s)| s.map(|s| (n, s)))
    .collect();
    let exclusive = |a: &str, b: &str| {
        matches!(
            (a, b),
            ("skip", _)
                | (_, "skip")
                | ("kwargs", _)
                | (_, "kwargs")
                | ("with", "default")
                | ("default", "with")
        )
    };
    for (i, (a, _)) in given.iter().enumerate() {
        for (b, span_b) in &given[i + 1..] {
            if exclusive(a, b) {
                let why = match (*a, *b) {
                    ("skip", _) | (_, "skip") => "a skipped field is not logged at all",
                    ("kwargs", _) | (_, "kwargs") => {
                        "a kwargs field has no key or value of its own; its entries are logged as `<prefix> - <name>`"
                    }
                    _ => {
                        "`default` formats the field's value itself; put the formatting in the `default` expression"
                    }
                };
                errors.push(syn::Error::new(
                    *span_b,
                    format!("`{b}` cannot be combined with `{a}`: {why}"),
                ));
            }
        }
    }
    f
}
