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

    let mut arg_types = Vec::new();
    let mut reads = Vec::new();
    let mut cols = Vec::new();
    let mut strict = Vec::new();
    let mut names = Vec::new();
    for (i, input) in func.sig.inputs.iter().enumerate() {
        let FnArg::Typed(pat) = input else {
            return Err(err(
                syn::spanned::Spanned::span(input),
                "weir UDFs cannot take `self`",
            ));
        };
        let (inner, nullable) = strip_option(&pat.ty);
        arg_types.push(abi_type(inner)?);
        let ty = &pat.ty;
        let col = format_ident!("__col{}", i);
        let var = format_ident!("__arg{}", i);
        cols.push(quote! {
            let #col = ::weir_udf::__private::Column::new(&*__raw.add(#i));
        });
        reads.push(quote! {
            let #var: #ty = <#ty as ::weir_udf::FromArg>::read(&#col, __row);
        });
        if !nullable {
            strict.push(col.clone());
        }
        names.push(var);
    }

    let (ret_ty, shape) = match &func.sig.output {
        ReturnType::Default => {
            return Err(err(ident.span(), "a weir UDF must return a value"));
        }
        ReturnType::Type(_, ty) => {
            let (ty, shape) = match path_parts(ty) {
                Some((name, args)) if name == "Result" && !args.is_empty() => {
                    let (inner, opt) = strip_option(args[0]);
                    (inner, if opt { Ret::ResultOption } else { Ret::Result })
                }
                Some((name, args)) if name == "Option" && args.len() == 1 => (args[0], Ret::Option),
                _ => (&**ty, Ret::Plain),
            };
            (ty.clone(), shape)
        }
    };
    let ret_name = abi_type(&ret_ty)?;
    let wrap = match shape {
        Ret::Plain => quote! { ::core::result::Result::Ok(::core::option::Option::Some(__value)) },
        Ret::Option => quote! { ::core::result::Result::Ok(__value) },
        Ret::Result => {
            quote! { __value.map(::core::option::Option::Some).map_err(|e| e.to_string()) }
        }
        Ret::ResultOption => quote! { __value.map_err(|e| e.to_string()) },
    };

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
