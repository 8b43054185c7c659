//! The `${...}` reference syntax, read the same way by the environment interpolation and by
//! templates (`transform::template`).

/// A piece of a string with `${...}` references: literal text or the text inside a reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text as is (`$${` already turned into `${`).
    Lit(String),
    /// What stands between `${` and `}`.
    Ref(&'a str),
}

/// Splits `s` at `${...}` references; `$${` is a literal `${`. Shared by templates and the
/// config's environment interpolation, so that both read `${` the same way.
pub fn split_refs(s: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        lit.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(stripped) = after.strip_prefix("${") {
            lit.push_str("${");
            rest = stripped;
        } else if let Some(inner) = after.strip_prefix('{') {
            let end = inner.find('}').ok_or_else(|| {
                format!("unclosed `${{` in `{s}`; close it with `}}` or write `$${{` for a literal")
            })?;
            if !lit.is_empty() {
                pieces.push(Piece::Lit(std::mem::take(&mut lit)));
            }
            pieces.push(Piece::Ref(&inner[..end]));
            rest = &inner[end + 1..];
        } else {
            lit.push('$');
            rest = after;
        }
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        pieces.push(Piece::Lit(lit));
    }
    Ok(pieces)
}
