//! `#[weir_udf::scalar]`: turns a plain Rust function into a weir UDF export
//! plus its `weir.udf` manifest record.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{format_ident, quote};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::{
    Expr, ExprLit, FnArg, GenericArgument, ItemFn, Lit, Meta, PathArguments, ReturnType, Token,
    Type,
};

/// How the user's return type maps onto `Result<Option<T>, String>`.
enum Ret {
    Plain,
    Option,
    Result,
    ResultOption,
}

fn err(span: Span, msg: impl std::fmt::Display) -> syn::Error {
    syn::Error::new(span, msg)
}

/// Looks through invisible groups (from `macro_rules!`) and parentheses.
fn ungroup(ty: &Type) -> &Type {
    match ty {
        Type::Group(g) => ungroup(&g.elem),
        Type::Paren(p) => ungroup(&p.elem),
        other => other,
    }
}

/// The last path segment's name and its single generic argument, if any.
fn path_parts(ty: &Type) -> Option<(String, Vec<&Type>)> {
    let Type::Path(p) = ungroup(ty) else {
        return None;
    };
    let seg = p.path.segments.last()?;
    let args = match &seg.arguments {
        PathArguments::AngleBracketed(a) => a
            .args
            .iter()
            .filter_map(|g| match g {
                GenericArgument::Type(t) => Some(t),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some((seg.ident.to_string(), args))
}

/// The ABI type name of a (non-Option) Rust type.
fn abi_type(ty: &Type) -> syn::Result<&'static str> {
    let ty = ungroup(ty);
    let unsupported = || {
        err(
            syn::spanned::Spanned::span(ty),
            "unsupported type for a weir UDF; use bool, i8..i64, u8..u64, f32, f64, &str, String, &[u8], Vec<u8>, Timestamp or Date32",
        )
    };
    match ty {
        Type::Reference(r) => match ungroup(&r.elem) {
            Type::Path(p) if p.path.is_ident("str") => Ok("utf8"),
            Type::Slice(s) => match ungroup(&s.elem) {
                Type::Path(p) if p.path.is_ident("u8") => Ok("binary"),
                _ => Err(unsupported()),
            },
            _ => Err(unsupported()),
        },
        Type::Path(_) => {
            let (name, args) = path_parts(ty).ok_or_else(unsupported)?;
            Ok(match name.as_str() {
                "bool" => "boolean",
                "i8" => "int8",
                "i16" => "int16",
                "i32" => "int32",
                "i64" => "int64",
                "u8" => "uint8",
                "u16" => "uint16",
                "u32" => "uint32",
                "u64" => "uint64",
                "f32" => "float32",
                "f64" => "float64",
                "String" => "utf8",
                "Timestamp" => "timestamp_us",
                "Date32" => "date32",
                "Vec"
                    if args.len() == 1
                        && matches!(args[0], Type::Path(p) if p.path.is_ident("u8")) =>
                {
                    "binary"
                }
                _ => return Err(unsupported()),
            })
        }
        _ => Err(unsupported()),
    }
}

/// Strips one `Option<…>`; says whether it was there.
fn strip_option(ty: &Type) -> (&Type, bool) {
    match path_parts(ty) {
        Some((name, args)) if name == "Option" && args.len() == 1 => (args[0], true),
        _ => (ty, false),
    }
}

struct Options {
    name: Option<String>,
    deterministic: bool,
}

fn parse_options(attr: TokenStream) -> syn::Result<Options> {
    let mut options = Options {
        name: None,
        deterministic: true,
    };
    let metas = Punctuated::<Meta, Token![,]>::parse_terminated.parse(attr)?;
    for meta in metas {
        let Meta::NameValue(nv) = &meta else {
            return Err(err(
                syn::spanned::Spanned::span(&meta),
                "expected `name = \"...\"` or `deterministic = false`",
            ));
        };
        let key = nv
            .path
            .get_ident()
            .map(|i| i.to_string())
            .unwrap_or_default();
        match (key.as_str(), &nv.value) {
            (
                "name",
                Expr::Lit(ExprLit {
                    lit: Lit::Str(s), ..
                }),
            ) => options.name = Some(s.value()),
            (
                "deterministic",
                Expr::Lit(ExprLit {
                    lit: Lit::Bool(b), ..
                }),
            ) => options.deterministic = b.value,
            _ => {
                return Err(err(
                    syn::spanned::Spanned::span(&nv.path),
                    "unknown option; expected `name = \"...\"` or `deterministic = false`",
                ));
            }
        }
    }
    Ok(options)
}

/// The value type a function returns (inside `Option` / `Result`), and the
/// expression turning its `__value` into `Result<Option<T>, String>`.
fn returned(
    output: &ReturnType,
    span: Span,
    missing: &str,
) -> syn::Result<(Type, proc_macro2::TokenStream)> {
    let ReturnType::Type(_, ty) = output else {
        return Err(err(span, missing));
    };
    let (ty, shape) = match path_parts(ty) {
        Some((name, args)) if name == "Result" && !args.is_empty() => {
            let (inner, opt) = strip_option(args[0]);
            (inner, if opt { Ret::ResultOption } else { Ret::Result })
        }
        Some((name, args)) if name == "Option" && args.len() == 1 => (args[0], Ret::Option),
        _ => (&**ty, Ret::Plain),
    };
    let wrap = match shape {
        Ret::Plain => quote! { ::core::result::Result::Ok(::core::option::Option::Some(__value)) },
        Ret::Option => quote! { ::core::result::Result::Ok(__value) },
        Ret::Result => {
            quote! { __value.map(::core::option::Option::Some).map_err(|e| e.to_string()) }
        }
        Ret::ResultOption => quote! { __value.map_err(|e| e.to_string()) },
    };
    Ok((ty.clone(), wrap))
}

/// The code that reads a function's arguments, one column each.
struct Args {
    /// ABI type names.
    types: Vec<&'static str>,
    /// `let __argN: T = …read(&__colN, __row);`
    reads: Vec<proc_macro2::TokenStream>,
    /// `let __colN = Column::new(…);`
    cols: Vec<proc_macro2::TokenStream>,
    /// Columns whose NULLs skip the row (arguments not taken as `Option`).
    strict: Vec<proc_macro2::Ident>,
    /// The `__argN` variables, in order.
    names: Vec<proc_macro2::Ident>,
}

/// Reads `inputs` as the argument columns starting at descriptor `first`.
fn typed_args<'a>(
    inputs: impl Iterator<Item = &'a FnArg>,
    first: usize,
    receiver: &str,
) -> syn::Result<Args> {
    let mut args = Args {
        types: Vec::new(),
        reads: Vec::new(),
        cols: Vec::new(),
        strict: Vec::new(),
        names: Vec::new(),
    };
    for (i, input) in inputs.enumerate() {
        let FnArg::Typed(pat) = input else {
            return Err(err(syn::spanned::Spanned::span(input), receiver));
        };
        let (inner, nullable) = strip_option(&pat.ty);
        args.types.push(abi_type(inner)?);
        let ty = &pat.ty;
        let col = format_ident!("__col{}", i);
        let var = format_ident!("__arg{}", i);
        let at = i + first;
        args.cols.push(quote! {
            let #col = ::weir_udf::__private::Column::new(&*__raw.add(#at));
        });
        args.reads.push(quote! {
            let #var: #ty = <#ty as ::weir_udf::FromArg>::read(&#col, __row);
        });
        if !nullable {
            args.strict.push(col.clone());
        }
        args.names.push(var);
    }
    Ok(args)
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && name.len() <= 64
}

/// Exports a Rust function as a vectorized weir scalar UDF.
///
/// Options: `name = "sql_name"`, `deterministic = false`.
#[proc_macro_attribute]
pub fn scalar(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand(attr, item) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand(attr: TokenStream, item: TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    let options = parse_options(attr)?;
    let func: ItemFn = syn::parse(item)?;
    let ident = &func.sig.ident;
    let sql_name = options.name.unwrap_or_else(|| ident.to_string());
    if !valid_name(&sql_name) {
        return Err(err(
            ident.span(),
            format!("`{sql_name}` is not a valid UDF name: lowercase letters, digits and `_`"),
        ));
    }
    if !func.sig.generics.params.is_empty() {
        return Err(err(ident.span(), "weir UDFs cannot be generic"));
    }

    let Args {
        types: arg_types,
        reads,
        cols,
        strict,
        names,
    } = typed_args(func.sig.inputs.iter(), 0, "weir UDFs cannot take `self`")?;

    let (ret_ty, wrap) = returned(&func.sig.output, ident.span(), "a weir UDF must return a value")?;
    let ret_name = abi_type(&ret_ty)?;

    let record = format!(
        "{{\"abi\":1,\"name\":\"{}\",\"args\":[{}],\"ret\":\"{}\",\"deterministic\":{}}}\n",
        sql_name,
        arg_types
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(","),
        ret_name,
        options.deterministic
    );
    let record_len = record.len();
    let record_bytes = syn::LitByteStr::new(record.as_bytes(), Span::call_site());
    let export = format_ident!("__weir_export_{}", sql_name);
    let meta = format_ident!("__WEIR_MANIFEST_{}", sql_name.to_uppercase());
    let nargs = arg_types.len();

    Ok(quote! {
        #func

        #[doc(hidden)]
        #[unsafe(export_name = #sql_name)]
        pub extern "C" fn #export(__args: u32, __rows: u32) -> u32 {
            unsafe {
                let __raw = __args as usize as *const ::weir_udf::__private::RawArg;
                let _ = #nargs;
                #(#cols)*
                ::weir_udf::__private::run::<#ret_ty, _>(__rows, &[#(#strict),*], |__row| {
                    #(#reads)*
                    let __value = #ident(#(#names),*);
                    #wrap
                })
            }
        }

        #[doc(hidden)]
        #[used]
        #[unsafe(link_section = "weir.udf")]
        static #meta: [u8; #record_len] = *#record_bytes;
    })
}

/// `snake_case` of a type name (`TopK` → `top_k`).
fn snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Exports the methods of an `impl` block as a vectorized weir aggregate
/// function (docs/abi.md §9).
///
/// The type holds one group's state: `Default` makes an empty group, and
/// it implements `weir_udf::State` (see `weir_udf::state!`). Methods:
/// `update(&mut self, args…)`, `merge(&mut self, other: Self)`,
/// `finish(&self) -> T` (or `Option<T>`, `Result<…>`), and optionally
/// `retract(&mut self, args…)` with the arguments of `update`.
///
/// Options: `name = "sql_name"` (default: the type's name in snake case),
/// `deterministic = false`.
#[proc_macro_attribute]
pub fn aggregate(attr: TokenStream, item: TokenStream) -> TokenStream {
    match expand_aggregate(attr, item) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

fn expand_aggregate(attr: TokenStream, item: TokenStream) -> syn::Result<proc_macro2::TokenStream> {
    let options = parse_options(attr)?;
    let block: syn::ItemImpl = syn::parse(item)?;
    let self_ty = &block.self_ty;
    let type_name = match ungroup(self_ty) {
        Type::Path(p) => p
            .path
            .segments
            .last()
            .map(|s| s.ident.to_string())
            .unwrap_or_default(),
        _ => String::new(),
    };
    let span = syn::spanned::Spanned::span(self_ty);
    if !block.generics.params.is_empty() || block.trait_.is_some() {
        return Err(err(span, "#[weir_udf::aggregate] goes on a plain, non-generic `impl Type { … }`"));
    }
    let sql_name = options.name.unwrap_or_else(|| snake(&type_name));
    if !valid_name(&sql_name) || sql_name.len() > 50 {
        return Err(err(
            span,
            format!("`{sql_name}` is not a valid aggregate name: lowercase letters, digits and `_`, at most 50"),
        ));
    }
    let method = |name: &str| {
        block.items.iter().find_map(|i| match i {
            syn::ImplItem::Fn(f) if f.sig.ident == name => Some(f),
            _ => None,
        })
    };
    let need = |name: &str| {
        method(name).ok_or_else(|| err(span, format!("an aggregate needs a method `{name}`")))
    };
    let update = need("update")?;
    need("merge")?;
    let finish = need("finish")?;
    let retract = method("retract");

    // The arguments of `update` (and `retract`): after `&mut self`.
    // Column 0 of a fold is the group ids; the arguments follow.
    let Args {
        types: arg_types,
        reads,
        cols,
        strict,
        names,
    } = typed_args(update.sig.inputs.iter().skip(1), 1, "unexpected receiver")?;
    let fold_result = |f: &syn::ImplItemFn| match &f.sig.output {
        ReturnType::Default => quote! { ::core::result::Result::Ok(()) },
        ReturnType::Type(..) => quote! { __value.map_err(|e| e.to_string()) },
    };
    let update_wrap = fold_result(update);

    let (ret_ty, finish_wrap) = returned(&finish.sig.output, span, "`finish` must return a value")?;
    let ret_name = abi_type(&ret_ty)?;

    let record = format!(
        "{{\"abi\":1,\"kind\":\"aggregate\",\"name\":\"{}\",\"args\":[{}],\"ret\":\"{}\",\"state\":[\"binary\"],\"deterministic\":{},\"retract\":{}}}\n",
        sql_name,
        arg_types
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(","),
        ret_name,
        options.deterministic,
        retract.is_some()
    );
    let record_len = record.len();
    let record_bytes = syn::LitByteStr::new(record.as_bytes(), Span::call_site());
    let meta = format_ident!("__WEIR_MANIFEST_{}", sql_name.to_uppercase());
    let groups = format_ident!("__WEIR_GROUPS_{}", sql_name.to_uppercase());
    let e_update = format!("{sql_name}__update");
    let e_merge = format!("{sql_name}__merge");
    let e_retract = format!("{sql_name}__retract");
    let e_state = format!("{sql_name}__state");
    let e_evaluate = format!("{sql_name}__evaluate");
    let f_update = format_ident!("__weir_{}_update", sql_name);
    let f_merge = format_ident!("__weir_{}_merge", sql_name);
    let f_retract = format_ident!("__weir_{}_retract", sql_name);
    let f_state = format_ident!("__weir_{}_state", sql_name);
    let f_evaluate = format_ident!("__weir_{}_evaluate", sql_name);

    let fold_export = |export: &str, func: &proc_macro2::Ident, call: proc_macro2::TokenStream, wrap: &proc_macro2::TokenStream| {
        quote! {
            #[doc(hidden)]
            #[unsafe(export_name = #export)]
            pub extern "C" fn #func(__args: u32, __rows: u32, __groups: u32) -> u32 {
                unsafe {
                    let __raw = __args as usize as *const ::weir_udf::__private::RawArg;
                    let __ids = ::weir_udf::__private::Column::new(&*__raw);
                    #(#cols)*
                    ::weir_udf::__private::fold(&#groups, __rows, __groups, &__ids, &[#(#strict),*], |__group: &mut #self_ty, __row| {
                        #(#reads)*
                        let __value = #call;
                        #wrap
                    })
                }
            }
        }
    };
    let update_export = fold_export(&e_update, &f_update, quote! { __group.update(#(#names),*) }, &update_wrap);
    let retract_export = match retract {
        Some(r) => {
            let wrap = fold_result(r);
            fold_export(&e_retract, &f_retract, quote! { __group.retract(#(#names),*) }, &wrap)
        }
        None => quote! {},
    };

    Ok(quote! {
        #block

        #[doc(hidden)]
        static #groups: ::weir_udf::__private::Groups<#self_ty> = ::weir_udf::__private::Groups::new();

        #update_export
        #retract_export

        #[doc(hidden)]
        #[unsafe(export_name = #e_merge)]
        pub extern "C" fn #f_merge(__args: u32, __rows: u32, __groups: u32) -> u32 {
            unsafe {
                let __raw = __args as usize as *const ::weir_udf::__private::RawArg;
                let __ids = ::weir_udf::__private::Column::new(&*__raw);
                let __state = ::weir_udf::__private::Column::new(&*__raw.add(1));
                ::weir_udf::__private::fold(&#groups, __rows, __groups, &__ids, &[__state], |__group: &mut #self_ty, __row| {
                    let __bytes: &[u8] = <&[u8] as ::weir_udf::FromArg>::read(&__state, __row);
                    let __other: #self_ty = ::weir_udf::__private::load_state(__bytes)?;
                    __group.merge(__other);
                    ::core::result::Result::Ok(())
                })
            }
        }

        #[doc(hidden)]
        #[unsafe(export_name = #e_state)]
        pub extern "C" fn #f_state(__n: u32, __consume: u32) -> u32 {
            unsafe { ::weir_udf::__private::emit_state(&#groups, __n, __consume) }
        }

        #[doc(hidden)]
        #[unsafe(export_name = #e_evaluate)]
        pub extern "C" fn #f_evaluate(__n: u32, __consume: u32) -> u32 {
            unsafe {
                ::weir_udf::__private::emit::<#self_ty, #ret_ty, _>(&#groups, __n, __consume, |__group| {
                    let __value = __group.finish();
                    #finish_wrap
                })
            }
        }

        #[doc(hidden)]
        #[used]
        #[unsafe(link_section = "weir.udf")]
        static #meta: [u8; #record_len] = *#record_bytes;
    })
}
