//! Parsing of the `#[tracked(...)]` options.
use proc_macro2::{Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;

use crate::common::{Errors, did_you_mean, list, skip_value};

pub const OPTIONS: &[&str] = &[
    "train",
    "evaluate",
    "name",
    "params",
    "backend",
    "parent",
    "companion",
    "crate",
];

/// Train or evaluate, with the span it was written at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Train,
    Evaluate,
}

/// The `<fn>_tracked` companion: its name, or none (`companion = false`).
pub enum Companion {
    /// `<fn>_tracked`.
    Default,
    /// `companion = name`.
    Named(syn::Ident),
    /// `companion = false`: no companion (a method of a trait impl cannot have one).
    None,
}

/// The parsed options.
pub struct Args {
    pub mode: Option<(Mode, Span)>,
    pub name: Option<syn::LitStr>,
    pub params: Vec<syn::Expr>,
    pub backend: Option<syn::Expr>,
    pub parent: Option<(syn::Expr, Span)>,
    pub companion: Companion,
    pub krate: Option<syn::Path>,
}

/// Parses `args`, collecting every problem in `errors`.
pub fn parse(args: TokenStream, errors: &mut Errors) -> Args {
    let mut a = Args {
        mode: None,
        name: None,
        params: Vec::new(),
        backend: None,
        parent: None,
        companion: Companion::Default,
        krate: None,
    };
    let mut seen: Vec<String> = Vec::new();
    let mut unknown = false;
    let parser = syn::meta::parser(|meta| {
        let path = &meta.path;
        let name = quote::quote!(#path).to_string().replace(' ', "");
        let span = syn::spanned::Spanned::span(&meta.path);
        if OPTIONS.contains(&name.as_str()) && seen.contains(&name) {
            errors.push(syn::Error::new(span, format!("`{name}` is given twice")));
            return skip_value(&meta);
        }
        seen.push(name.clone());
        match name.as_str() {
            "train" | "evaluate" => {
                let mode = if name == "train" {
                    Mode::Train
                } else {
                    Mode::Evaluate
                };
                if let Some((m, _)) = a.mode {
                    let first = if m == Mode::Train {
                        "train"
                    } else {
                        "evaluate"
                    };
                    errors.push(syn::Error::new(
                        span,
                        format!("conflicting modes: `{first}` and `{name}`; a function is either a train run or an evaluate run"),
                    ));
                } else {
                    a.mode = Some((mode, span));
                }
            }
            "name" => a.name = Some(meta.value()?.parse()?),
            "params" => {
                let content;
                syn::parenthesized!(content in meta.input);
                let list: Punctuated<syn::Expr, syn::Token![,]> =
                    content.parse_terminated(syn::Expr::parse, syn::Token![,])?;
                a.params.extend(list);
            }
            "backend" => a.backend = Some(meta.value()?.parse()?),
            "parent" => a.parent = Some((meta.value()?.parse()?, span)),
            "companion" => {
                let value: syn::Expr = meta.value()?.parse()?;
                match &value {
                    syn::Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Bool(b),
                        ..
                    }) if !b.value => a.companion = Companion::None,
                    syn::Expr::Path(p) if p.qself.is_none() && p.path.get_ident().is_some() => {
                        a.companion = Companion::Named(p.path.segments[0].ident.clone());
                    }
                    _ => errors.push(syn::Error::new_spanned(
                        &value,
                        "`companion` takes a function name (`companion = fit_with_run`) or `false` \
                         (no companion, e.g. for a method of a trait impl); without it the companion \
                         is `<fn>_tracked`",
                    )),
                }
            }
            "crate" => {
                let v = meta.value()?;
                a.krate = Some(if v.peek(syn::LitStr) {
                    v.parse::<syn::LitStr>()?.parse()?
                } else {
                    v.parse()?
                });
            }
            other => {
                unknown = true;
                errors.push(syn::Error::new(
                    span,
                    format!(
                        "unknown `#[tracked]` option `{other}`{}; options are {}",
                        did_you_mean(other, OPTIONS),
                        list(OPTIONS)
                    ),
                ));
                skip_value(&meta)?;
            }
        }
        Ok(())
    });
    if let Err(e) = parser.parse2(args) {
        errors.push(e);
    }
    // After an unknown option (likely a misspelt mode) "missing mode" would only repeat it.
    if a.mode.is_none() && !unknown {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing mode: write `#[tracked(train)]` or `#[tracked(evaluate)]`",
        ));
    }
    if let (Some((Mode::Train, _)), Some((_, span))) = (a.mode, &a.parent) {
        errors.push(syn::Error::new(
            *span,
            "`parent` conflicts with `train`: a train run is always top-level; only evaluate runs nest under a parent",
        ));
    }
    a
}

use syn::parse::Parse;
