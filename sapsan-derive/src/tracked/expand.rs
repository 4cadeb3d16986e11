//! Expansion of `#[tracked]`: the function keeps its signature and hands its arguments to a
//! companion, `<fn>_tracked`, which returns `Tracked<R>`: the output with its run id. There the
//! body runs in a closure, under `catch_unwind`, between starting a run scope and finishing it
//! with what the body did. All logic is in `sapsan-core`'s `tracking::run::scope`.
use proc_macro2::{TokenStream, TokenTree};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::attr::{self, Companion, Mode};
use crate::common::{Errors, list, runtime_path};

/// Expands `#[tracked(args)] item`. On errors the item is emitted unchanged next to them, so the
/// rest of the crate still sees the function.
pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = attr::parse(args, &mut errors);
    let func: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            let mut errors = Errors::default();
            errors.spanned(
                first_tokens(&item),
                "`#[tracked]` applies to functions and methods with a body (`fn train(...) { ... }`)",
            );
            let errs = errors.into_compile_errors();
            return quote!(#errs #item);
        }
    };
    let sig = &func.sig;
    if let Some(a) = &sig.asyncness {
        errors.spanned(
            a,
            "`#[tracked]` does not support `async fn`: the MLflow client blocks and must not run inside \
             an async runtime; make the function synchronous and call it with `spawn_blocking`",
        );
    }
    if let Some(c) = &sig.constness {
        errors.spanned(
            c,
            "`#[tracked]` cannot apply to a `const fn`: tracking runs at run time",
        );
    }
    if let syn::ReturnType::Type(_, ty) = &sig.output
        && has_impl(ty.to_token_stream())
    {
        errors.spanned(
            ty,
            "`#[tracked]` functions cannot return `impl Trait`: name the return type \
             (one implementing `TrackedOutput`)",
        );
    }

    // Argument names, and which arguments look like a backend.
    let mut arg_names: Vec<String> = Vec::new();
    let mut backends: Vec<&syn::Ident> = Vec::new();
    for input in &sig.inputs {
        match input {
            syn::FnArg::Receiver(_) => arg_names.push("self".into()),
            syn::FnArg::Typed(pt) => {
                if let syn::Pat::Ident(pi) = &*pt.pat {
                    arg_names.push(pi.ident.to_string());
                    if looks_like_backend(&pt.ty, &sig.generics) {
                        backends.push(&pi.ident);
                    }
                }
            }
        }
    }
    let check_arg = |e: &syn::Expr, option: &str, errors: &mut Errors| {
        if let syn::Expr::Path(p) = e
            && let Some(id) = p.path.get_ident()
            && !arg_names.iter().any(|n| id == n)
        {
            let names: Vec<&str> = arg_names.iter().map(String::as_str).collect();
            errors.spanned(
                id,
                format!(
                    "`{option}({id})`: this function has no argument named `{id}` (its arguments: {})",
                    if names.is_empty() { "none".to_owned() } else { list(&names) }
                ),
            );
        }
    };
    for p in &args.params {
        check_arg(p, "params", &mut errors);
    }
    let backend: TokenStream = match &args.backend {
        Some(b) => {
            check_arg(b, "backend", &mut errors);
            b.to_token_stream()
        }
        None => match backends.as_slice() {
            [one] => one.to_token_stream(),
            [] => {
                errors.spanned(
                    &sig.ident,
                    "`#[tracked]` needs a tracking backend: add an argument such as `backend: &impl Backend` \
                     (or `&MlflowBackend`, `&FakeBackend`, `Arc<B>`), or name one with \
                     `#[tracked(..., backend = <expression>)]`",
                );
                TokenStream::new()
            }
            many => {
                let names: Vec<String> = many.iter().map(ToString::to_string).collect();
                let names: Vec<&str> = names.iter().map(String::as_str).collect();
                errors.spanned(
                    &sig.ident,
                    format!(
                        "several arguments look like backends ({}); say which one to track with `#[tracked(..., backend = <name>)]`",
                        list(&names)
                    ),
                );
                TokenStream::new()
            }
        },
    };

    if !errors.is_empty() {
        let errs = errors.into_compile_errors();
        // The backend argument is used only by the expansion: don't add "unused" warnings.
        return quote!(#errs #[allow(unused_variables)] #func);
    }
    let Some((mode, _)) = args.mode else {
        return func.into_token_stream();
    };
    let rt = runtime_path(args.krate.as_ref());
    let scope = quote!(#rt::tracking::run::scope);
    let mode_tokens = match mode {
        Mode::Train => quote!(#scope::Mode::Train),
        Mode::Evaluate => quote!(#scope::Mode::Evaluate),
    };
    let name = args.name.as_ref().map_or_else(
        || sig.ident.to_string().trim_start_matches("r#").to_owned(),
        syn::LitStr::value,
    );
    let parent = match &args.parent {
        Some((p, _)) => quote_spanned! {p.span()=>
            ::core::option::Option::Some(::std::string::ToString::to_string(
                ::core::convert::AsRef::<str>::as_ref(&(#p)),
            ))
        },
        None => quote!(::core::option::Option::None),
    };
    let (ret_ty, ret_span) = match &sig.output {
        syn::ReturnType::Default => (quote!(()), sig.ident.span()),
        syn::ReturnType::Type(_, ty) => (ty.to_token_stream(), ty.span()),
    };
    let start = quote_spanned!(ret_span=> #scope::RunScope::start_tracked::<#ret_ty>);
    let backend_handle =
        quote_spanned!(backend.span()=> #scope::BackendArg::backend_handle(&(#backend)));
    let params = args.params.iter().map(|p| {
        let arg = quote_spanned!(p.span()=> &(#p));
        quote!(__sapsan_scope.params_tracked(#arg);)
    });
    let mutability = if args.params.is_empty() {
        quote!()
    } else {
        quote!(mut)
    };
    let block = &func.block;
    // An expression of type `Tracked<R>`: the run, with the body caught in it.
    let tracked_call = quote! {
        match #start(#backend_handle, #mode_tokens, #name, #parent) {
            ::core::result::Result::Err(__sapsan_tracked) => __sapsan_tracked,
            ::core::result::Result::Ok(#mutability __sapsan_scope) => {
                #(#params)*
                let __sapsan_body = ::std::panic::catch_unwind(
                    ::core::panic::AssertUnwindSafe(|| -> #ret_ty #block)
                );
                __sapsan_scope.finish_tracked(__sapsan_body)
            }
        }
    };
    let attrs = &func.attrs;
    let vis = &func.vis;
    let companion = match &args.companion {
        Companion::None => {
            return quote! {
                #(#attrs)*
                #vis #sig {
                    let __sapsan_tracked: #scope::Tracked<#ret_ty> = #tracked_call;
                    __sapsan_tracked.output
                }
            };
        }
        Companion::Named(id) => id.clone(),
        Companion::Default => {
            let id = &sig.ident;
            let bare = id.to_string();
            let bare = bare.trim_start_matches("r#");
            syn::Ident::new(&format!("{bare}_tracked"), id.span())
        }
    };

    // The companion: the function's arguments, `Tracked<R>` back, the body inside.
    let mut companion_sig = sig.clone();
    companion_sig.ident = companion.clone();
    companion_sig.output = syn::parse_quote_spanned!(ret_span=> -> #scope::Tracked<#ret_ty>);
    let doc = format!(
        " Runs `{}` in its MLflow run and returns its output together with the run's id, status \
         and errors (`{}::tracking::run::scope::Tracked`). Generated by `#[tracked]`.",
        sig.ident,
        rt.to_string().replace(' ', "")
    );
    let companion_attrs = attrs.iter().filter(|a| companion_keeps(a));

    // The function: same signature, its arguments passed on to the companion.
    let mut wrapper_sig = sig.clone();
    let mut forwarded: Vec<TokenStream> = Vec::new();
    for (i, input) in wrapper_sig.inputs.iter_mut().enumerate() {
        match input {
            syn::FnArg::Receiver(r) => {
                r.mutability = None;
                forwarded.push(quote!(self));
            }
            syn::FnArg::Typed(pt) => match &mut *pt.pat {
                syn::Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                    pi.mutability = None;
                    forwarded.push(pi.ident.to_token_stream());
                }
                other => {
                    let id = format_ident!("__sapsan_arg{}", i);
                    *other = syn::parse_quote!(#id);
                    forwarded.push(id.to_token_stream());
                }
            },
        }
    }
    let in_impl = sig
        .inputs
        .iter()
        .any(|i| matches!(i, syn::FnArg::Receiver(_)))
        || names_self(sig.to_token_stream());
    let path = if in_impl {
        quote_spanned!(sig.ident.span()=> Self::#companion)
    } else {
        quote_spanned!(sig.ident.span()=> #companion)
    };
    let generic_args: Vec<TokenStream> = sig
        .generics
        .params
        .iter()
        .filter_map(|g| match g {
            syn::GenericParam::Type(t) => Some(t.ident.to_token_stream()),
            syn::GenericParam::Const(c) => Some(c.ident.to_token_stream()),
            syn::GenericParam::Lifetime(_) => None,
        })
        .collect();
    let turbofish = if generic_args.is_empty() {
        quote!()
    } else {
        quote!(::<#(#generic_args),*>)
    };
    // `allow(dead_code)`: a caller of the companion alone uses the function too (the function
    // calls the companion, so this also keeps the companion from being reported).
    quote! {
        #(#attrs)*
        #[allow(dead_code)]
        #vis #wrapper_sig {
            #path #turbofish(#(#forwarded),*).output
        }

        #[doc = #doc]
        #(#companion_attrs)*
        #vis #companion_sig {
            #tracked_call
        }
    }
}

/// Whether the companion carries attribute `a` of the function too: not its doc comment (it has
/// its own), `must_use` (`Tracked` is must-use) or a symbol name (two items cannot share one).
fn companion_keeps(a: &syn::Attribute) -> bool {
    let path = a.path();
    let doc_comment = path.is_ident("doc") && matches!(a.meta, syn::Meta::NameValue(_));
    let dropped = ["must_use", "no_mangle", "export_name", "link_section"];
    !doc_comment
        && !dropped.iter().any(|d| path.is_ident(d))
        && !matches!(&a.meta, syn::Meta::List(l) if l.path.is_ident("unsafe"))
}

/// Whether `ts` names `Self` (so the function is in an `impl` or a trait).
fn names_self(ts: TokenStream) -> bool {
    ts.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == "Self",
        TokenTree::Group(g) => names_self(g.stream()),
        _ => false,
    })
}

/// The first few tokens of an item, to point an error at (`struct Foo`, `impl X`).
fn first_tokens(item: &TokenStream) -> TokenStream {
    item.clone()
        .into_iter()
        .filter(|t| !matches!(t, TokenTree::Punct(p) if p.as_char() == '#'))
        .filter(|t| !matches!(t, TokenTree::Group(g) if g.delimiter() == proc_macro2::Delimiter::Bracket))
        .take(2)
        .collect()
}

fn has_impl(ts: TokenStream) -> bool {
    ts.into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == "impl",
        TokenTree::Group(g) => has_impl(g.stream()),
        _ => false,
    })
}

/// Whether `ty` is (a reference to, an `Arc`/`Box`/`Rc` of) something named `...Backend`: a
/// `dyn`/`impl` bound, a type such as `MlflowBackend`, or a generic parameter bounded by one.
fn looks_like_backend(ty: &syn::Type, generics: &syn::Generics) -> bool {
    fn names_backend(path: &syn::Path) -> bool {
        path.segments
            .last()
            .is_some_and(|s| s.ident.to_string().ends_with("Backend"))
    }
    fn bounds_backend<'a>(mut bounds: impl Iterator<Item = &'a syn::TypeParamBound>) -> bool {
        bounds.any(|b| matches!(b, syn::TypeParamBound::Trait(t) if names_backend(&t.path)))
    }
    match ty {
        syn::Type::Reference(r) => looks_like_backend(&r.elem, generics),
        syn::Type::Paren(p) => looks_like_backend(&p.elem, generics),
        syn::Type::TraitObject(t) => bounds_backend(t.bounds.iter()),
        syn::Type::ImplTrait(t) => bounds_backend(t.bounds.iter()),
        syn::Type::Path(p) if p.qself.is_none() => {
            let Some(last) = p.path.segments.last() else {
                return false;
            };
            if ["Arc", "Rc", "Box"].iter().any(|w| last.ident == w)
                && let syn::PathArguments::AngleBracketed(a) = &last.arguments
            {
                return a.args.iter().any(
                    |g| matches!(g, syn::GenericArgument::Type(t) if looks_like_backend(t, generics)),
                );
            }
            if names_backend(&p.path) {
                return true;
            }
            let Some(id) = p.path.get_ident() else {
                return false;
            };
            let in_params = generics
                .type_params()
                .any(|tp| tp.ident == *id && bounds_backend(tp.bounds.iter()));
            let in_where = generics.where_clause.as_ref().is_some_and(|w| {
                w.predicates.iter().any(|pred| match pred {
                    syn::WherePredicate::Type(pt) => {
                        matches!(&pt.bounded_ty, syn::Type::Path(bp) if bp.path.is_ident(id))
                            && bounds_backend(pt.bounds.iter())
                    }
                    _ => false,
                })
            });
            in_params || in_where
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(s: &str) -> syn::Type {
        syn::parse_str(s).unwrap()
    }

    #[test]
    fn backend_types_are_recognised() {
        let g: syn::Generics = syn::parse_str("<B: sapsan::tracking::Backend, C: Clone>").unwrap();
        for t in [
            "&B",
            "&FakeBackend",
            "&sapsan::tracking::MlflowBackend",
            "&dyn Backend",
            "&impl Backend",
            "Arc<MlflowBackend>",
            "&std::sync::Arc<dyn Backend>",
        ] {
            assert!(looks_like_backend(&ty(t), &g), "{t}");
        }
        for t in ["&C", "&Config", "u32", "Arc<Config>"] {
            assert!(!looks_like_backend(&ty(t), &g), "{t}");
        }
    }

    #[test]
    fn expansion_wraps_the_body_and_keeps_the_signature() {
        let out = expand(
            quote!(train, params(cfg), crate = ::sapsan_core),
            quote! {
                /// Doc.
                pub fn fit<'a>(cfg: &'a Cfg, backend: &FakeBackend) -> Result<Out, Error> { body() }
            },
        )
        .to_string();
        assert!(out.contains("# [doc = r\" Doc.\"] # [allow (dead_code)] pub fn fit < 'a > (cfg : & 'a Cfg , backend : & FakeBackend) -> Result < Out , Error >"), "{out}");
        assert!(
            out.contains("start_tracked :: < Result < Out , Error > >"),
            "{out}"
        );
        assert!(out.contains("backend_handle (& (backend))"), "{out}");
        assert!(out.contains("params_tracked (& (cfg))"), "{out}");
        assert!(out.contains("\"fit\""), "{out}");
        // The function hands its arguments to the companion and returns the output alone.
        assert!(
            out.contains("{ fit_tracked (cfg , backend) . output }"),
            "{out}"
        );
        // The companion: same arguments, `Tracked<R>` back, the body caught in it.
        assert!(out.contains("pub fn fit_tracked < 'a > (cfg : & 'a Cfg , backend : & FakeBackend) -> :: sapsan_core :: tracking :: run :: scope :: Tracked < Result < Out , Error > >"), "{out}");
        assert!(out.contains(":: std :: panic :: catch_unwind (:: core :: panic :: AssertUnwindSafe (|| -> Result < Out , Error > { body () }))"), "{out}");
        assert!(out.contains("finish_tracked (__sapsan_body)"), "{out}");
        // The doc comment stays on the function; the companion has its own.
        assert_eq!(out.matches("Doc.").count(), 1, "{out}");
    }

    #[test]
    fn methods_patterns_and_generics_are_passed_on() {
        let out = expand(
            quote!(evaluate, crate = ::sapsan_core),
            quote! {
                fn score<'a, T: Clone, const N: usize>(mut self, (a, b): (u8, u8), mut n: u32, backend: &FakeBackend) {}
            },
        )
        .to_string();
        assert!(out.contains("fn score < 'a , T : Clone , const N : usize > (self , __sapsan_arg1 : (u8 , u8) , n : u32 , backend : & FakeBackend)"), "{out}");
        assert!(
            out.contains(
                "Self :: score_tracked :: < T , N > (self , __sapsan_arg1 , n , backend) . output"
            ),
            "{out}"
        );
        // The companion keeps the patterns as written.
        assert!(out.contains("fn score_tracked < 'a , T : Clone , const N : usize > (mut self , (a , b) : (u8 , u8) , mut n : u32 , backend : & FakeBackend)"), "{out}");
    }

    #[test]
    fn companion_can_be_renamed_or_left_out() {
        let item = quote!(
            fn fit(backend: &FakeBackend) -> u8 {
                1
            }
        );
        let renamed = expand(quote!(train, companion = fit_run), item.clone()).to_string();
        assert!(renamed.contains("fit_run (backend) . output"), "{renamed}");
        assert!(
            renamed.contains("fn fit_run (backend : & FakeBackend)"),
            "{renamed}"
        );
        let alone = expand(quote!(train, companion = false), item.clone()).to_string();
        assert_eq!(alone.matches("fn ").count(), 1, "{alone}");
        assert!(!alone.contains("fit_tracked"), "{alone}");
        assert!(alone.contains("__sapsan_tracked . output"), "{alone}");
        let wrong = expand(quote!(train, companion = "fit_run"), item).to_string();
        assert!(
            wrong.contains("`companion` takes a function name"),
            "{wrong}"
        );
    }

    #[test]
    fn misuse_is_reported_with_the_item_kept() {
        let out = expand(
            quote!(evaluate, params(nope)),
            quote!(
                fn f(x: u32) {}
            ),
        )
        .to_string();
        assert!(out.contains("no argument named `nope`"), "{out}");
        assert!(out.contains("needs a tracking backend"), "{out}");
        assert!(out.contains("fn f (x : u32) { }"), "{out}");
    }
}
