//! Expansion of `#[derive(ModelConfig)]`: one `ModelConfig` impl whose `parameters()` pushes
//! `<prefix> - <name>` for each field in declaration order, then the kwargs.
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;

use super::attr;
use crate::common::{Errors, runtime_path};
use crate::keys::check_key;

/// Expands the derive on `input`; always returns an impl (a dummy one next to the errors when the
/// input is wrong, so the user sees the errors and not a cascade of "trait not implemented").
pub fn expand(input: TokenStream) -> TokenStream {
    let input: syn::DeriveInput = match syn::parse2(input) {
        Ok(i) => i,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors = Errors::default();
    let container = attr::container(&input.attrs, &mut errors);
    let krate = runtime_path(container.krate.as_ref());
    let ident = &input.ident;
    let (impl_g, ty_g, where_clause) = input.generics.split_for_impl();
    // Emitted only beside compile errors (the build fails), so its body can never run.
    let dummy = quote! {
        impl #impl_g #krate::config::ModelConfig for #ident #ty_g #where_clause {
            fn parameters(&self) -> #krate::Result<#krate::config::Params> {
                ::core::unimplemented!()
            }
        }
    };

    let fields = match &input.data {
        syn::Data::Struct(s) => match &s.fields {
            syn::Fields::Named(named) => &named.named,
            syn::Fields::Unnamed(_) => {
                errors.spanned(
                    &s.fields,
                    "`#[derive(ModelConfig)]` needs a struct with named fields: each field name becomes \
                     a parameter key `<prefix> - <field>`; a tuple struct has no names",
                );
                return finish(errors, dummy);
            }
            syn::Fields::Unit => {
                errors.spanned(
                    ident,
                    "`#[derive(ModelConfig)]` needs a struct with named fields; this unit struct has none \
                     (implement `ModelConfig` by hand to return empty parameters)",
                );
                return finish(errors, dummy);
            }
        },
        syn::Data::Enum(e) => {
            errors.spanned(
                e.enum_token,
                "`#[derive(ModelConfig)]` works on structs with named fields, not enums; implement \
                 `ModelConfig` by hand, or make the enum a field type implementing `PyStr`",
            );
            return finish(errors, dummy);
        }
        syn::Data::Union(u) => {
            errors.spanned(
                u.union_token,
                "`#[derive(ModelConfig)]` works on structs with named fields, not unions",
            );
            return finish(errors, dummy);
        }
    };

    let prefix = container
        .prefix
        .as_ref()
        .map_or_else(|| "model".to_owned(), |p| p.value());
    let prefix_span = container
        .prefix
        .as_ref()
        .map_or_else(Span::call_site, |p| p.span());
    let mut prefix_ok = false;
    if prefix.is_empty() {
        errors.push(syn::Error::new(
            prefix_span,
            "the prefix must not be empty: keys are `<prefix> - <field>` (e.g. `model`, `data`, `chkpnt`)",
        ));
    } else if let Err(rule) = check_key(&format!("{prefix} - x")) {
        errors.push(syn::Error::new(
            prefix_span,
            format!("prefix {prefix:?} makes invalid MLflow keys: {rule}"),
        ));
    } else {
        prefix_ok = true;
    }

    let type_params: Vec<String> = input
        .generics
        .type_params()
        .map(|t| t.ident.to_string())
        .collect();
    let mut extra_bounds: Vec<TokenStream> = Vec::new();
    let mut pushes: Vec<TokenStream> = Vec::new();
    let mut keys: Vec<(String, Span)> = Vec::new();
    let mut kwargs: Option<(&syn::Field, Span)> = None;

    for field in fields {
        let opts = attr::field(&field.attrs, &mut errors);
        let Some(fident) = &field.ident else { continue };
        let ty = &field.ty;
        if opts.skip.is_some() {
            continue;
        }
        if let Some(kw) = &opts.kwargs {
            if let Some((first, _)) = kwargs {
                let first_name = first
                    .ident
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default();
                errors.spanned(
                    kw,
                    format!(
                        "only one field can be `#[sapsan(kwargs)]`; `{first_name}` already is (merge the maps)"
                    ),
                );
            } else {
                kwargs = Some((field, kw.span()));
                if mentions(ty, &type_params) {
                    extra_bounds.push(quote!(#ty: #krate::config::KwargsMap));
                }
            }
            continue;
        }
        let (name, name_span) = match &opts.rename {
            Some(lit) => (lit.value(), lit.span()),
            None => (
                fident.to_string().trim_start_matches("r#").to_owned(),
                fident.span(),
            ),
        };
        let key = format!("{prefix} - {name}");
        match check_key(&key) {
            // A bad prefix is reported once, not once per field.
            Err(_) if !prefix_ok => {}
            Err(rule) => errors.push(syn::Error::new(
                name_span,
                format!(
                    "parameter key {} would be rejected by MLflow: {rule}; choose another name with `#[sapsan(rename = \"...\")]`",
                    shorten(&key)
                ),
            )),
            Ok(()) => {
                if let Some((_, first)) = keys.iter().find(|(k, _)| *k == key) {
                    let mut e = syn::Error::new(
                        name_span,
                        format!("duplicate parameter key {key:?}: two fields map to it; rename one with `#[sapsan(rename = \"...\")]`"),
                    );
                    e.combine(syn::Error::new(*first, format!("{key:?} is first used here")));
                    errors.push(e);
                } else {
                    keys.push((key, name_span));
                }
            }
        }
        let value = if let Some(with) = &opts.with {
            quote_spanned!(with.span()=> #with(&self.#fident))
        } else if let Some(default) = &opts.default {
            quote_spanned!(ty.span()=> #krate::config::format_or_default(&self.#fident, || #default))
        } else {
            if mentions(ty, &type_params) {
                extra_bounds.push(quote!(#ty: #krate::config::PyStr));
            }
            quote_spanned!(ty.span()=> #krate::config::PyStr::py_str(&self.#fident))
        };
        pushes.push(quote!(__sapsan_params.field(#name, #value)?;));
    }
    if let Some((field, span)) = kwargs {
        let fident = &field.ident;
        let ty = &field.ty;
        let arg = quote_spanned!(ty.span()=> &self.#fident);
        pushes.push(quote_spanned!(span=> __sapsan_params.kwargs(#arg)?;));
    }

    if !errors.is_empty() {
        return finish(errors, dummy);
    }
    let mut where_clause = where_clause.cloned().unwrap_or_else(|| syn::WhereClause {
        where_token: Default::default(),
        predicates: Default::default(),
    });
    for b in extra_bounds {
        where_clause.predicates.push(syn::parse_quote!(#b));
    }
    let config_name = ident.to_string();
    quote! {
        #[automatically_derived]
        impl #impl_g #krate::config::ModelConfig for #ident #ty_g #where_clause {
            fn parameters(&self) -> #krate::Result<#krate::config::Params> {
                let mut __sapsan_params = #krate::config::ParamsBuilder::new(#config_name, #prefix);
                #(#pushes)*
                ::core::result::Result::Ok(__sapsan_params.finish())
            }
        }
    }
}

/// The key for a message: quoted, long ones cut to their first 40 characters.
fn shorten(key: &str) -> String {
    if key.chars().count() > 60 {
        format!("{:?}...", key.chars().take(40).collect::<String>())
    } else {
        format!("{key:?}")
    }
}

fn finish(errors: Errors, dummy: TokenStream) -> TokenStream {
    let errs = errors.into_compile_errors();
    quote!(#errs #dummy)
}

/// Whether the type's tokens name one of the struct's type parameters.
fn mentions(ty: &syn::Type, params: &[String]) -> bool {
    fn walk(ts: TokenStream, params: &[String]) -> bool {
        ts.into_iter().any(|tt| match tt {
            TokenTree::Ident(i) => params.iter().any(|p| i == p),
            TokenTree::Group(g) => walk(g.stream(), params),
            _ => false,
        })
    }
    !params.is_empty() && walk(ty.to_token_stream(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expanded(input: TokenStream) -> String {
        expand(input).to_string()
    }

    #[test]
    fn fields_in_order_then_kwargs() {
        let out = expanded(quote! {
            #[sapsan(prefix = "data", crate = ::sapsan_core)]
            struct D {
                #[sapsan(rename = "initial size")] a: u32,
                #[sapsan(skip)] b: u32,
                #[sapsan(kwargs)] kw: Kwargs,
                c: f64,
            }
        });
        let a = out.find("\"initial size\"").unwrap();
        let c = out.find("\"c\"").unwrap();
        let kw = out.find("kwargs (& self . kw)").unwrap();
        assert!(a < c && c < kw, "{out}");
        assert!(!out.contains("self . b"), "{out}");
        assert!(
            out.contains("ParamsBuilder :: new (\"D\" , \"data\")"),
            "{out}"
        );
    }

    #[test]
    fn bad_keys_and_duplicates_are_all_reported() {
        let out = expanded(quote! {
            struct C {
                #[sapsan(rename = "a@b")] x: u32,
                #[sapsan(rename = "y")] z: u32,
                y: u32,
            }
        });
        assert!(out.contains("would be rejected by MLflow"), "{out}");
        assert!(out.contains("duplicate parameter key"), "{out}");
        assert!(out.contains("unimplemented"), "dummy impl: {out}");
    }

    #[test]
    fn generic_fields_get_bounds() {
        let out = expanded(quote! { #[sapsan(crate = x)] struct G<T> { t: T, n: u32 } });
        assert!(out.contains("where T : x :: config :: PyStr"), "{out}");
        assert!(!out.contains("u32 : x"), "{out}");
    }
}
