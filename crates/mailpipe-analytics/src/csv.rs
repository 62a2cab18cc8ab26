//! Suppression lists as CSV, shared by the CLI and the API.

use mailpipe_core::{AppliesTo, EmailAddress, Reason, Scope, Suppression, SuppressionError};
use mailpipe_store::{Store, StoreError};
use mailpipe_token::RecipientHasher;

/// A line of a suppression CSV that cannot be imported.
#[derive(Debug)]
pub struct CsvError {
    pub line: usize,
    pub error: String,
}

/// Why an import did nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Every bad line, by number; nothing was imported.
    #[error("{} bad line(s); nothing was imported", .0.len())]
    BadLines(Vec<CsvError>),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parses a suppression CSV (`email,reason,applies_to`; a reason of
/// [`Reason::from_operator`], applies_to `marketing` or `all`; a header line
/// is allowed) into entries of `scope`. Every line is checked before
/// anything is imported: one bad line and nothing is.
pub fn parse_suppression_csv(
    text: &str,
    scope: &Scope,
    hasher: &RecipientHasher,
) -> Result<Vec<Suppression>, Vec<CsvError>> {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.to_ascii_lowercase().starts_with("email")) {
            continue;
        }
        match parse_line(line, scope, hasher) {
            Ok(s) => entries.push(s),
            Err(error) => errors.push(CsvError { line: i + 1, error }),
        }
    }
    if errors.is_empty() { Ok(entries) } else { Err(errors) }
}

fn parse_line(line: &str, scope: &Scope, hasher: &RecipientHasher) -> Result<Suppression, String> {
    let f: Vec<&str> = line.split(',').map(str::trim).collect();
    let [email, reason, applies_to] = f[..] else {
        return Err(format!("expected 3 fields (email,reason,applies_to), found {}", f.len()));
    };
    let addr = EmailAddress::parse(email).map_err(|e| format!("email: {e}"))?;
    let reason = Reason::from_operator(reason).map_err(|e: SuppressionError| e.to_string())?;
    let applies_to: AppliesTo = applies_to.parse().map_err(|e: SuppressionError| e.to_string())?;
    Ok(Suppression::new(scope.clone(), hasher.hash(&addr.canonical()), reason, applies_to))
}

/// Imports a CSV into `scope`: every line is checked first, and if any is
/// bad none is imported; then the entries go in, in batches
/// ([`mailpipe_store::IMPORT_BATCH`]).
/// Returns how many entries were new.
pub async fn import(
    store: &Store,
    hasher: &RecipientHasher,
    text: &str,
    scope: &Scope,
) -> Result<u64, ImportError> {
    let entries = parse_suppression_csv(text, scope, hasher).map_err(ImportError::BadLines)?;
    Ok(store.import_suppressions(&entries).await?)
}

/// Suppressions as CSV: `scope,recipient_hash,reason,applies_to,created_at`.
pub fn export_csv(entries: &[Suppression]) -> String {
    let mut out = String::from("scope,recipient_hash,reason,applies_to,created_at\n");
    for s in entries {
        out.push_str(&format!(
            "{},{},{},{},{}\n",
            s.scope, s.recipient, s.reason, s.applies_to, s.created_at
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailpipe_core::TenantId;

    fn hasher() -> RecipientHasher {
        RecipientHasher::new(&vec![7u8; 32].into()).unwrap()
    }

    #[test]
    fn a_bad_csv_reports_every_bad_line_and_yields_nothing() {
        let h = hasher();
        let text = "email,reason,applies_to\nok@example.com,manual,all\nnot-an-address,manual,all\nx@example.com,spam,all\ny@example.com,manual\nz@example.com,erasure,all\n";
        let errs = parse_suppression_csv(text, &Scope::Platform, &h).unwrap_err();
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 4, 5, 6]);
        let acme = Scope::Tenant(TenantId::parse("acme").unwrap());
        let good = parse_suppression_csv("a@example.com,unsubscribe,marketing\n", &acme, &h).unwrap();
        assert_eq!(good[0].recipient, h.hash("a@example.com"));
        assert_eq!(
            (&good[0].scope, good[0].reason, good[0].applies_to),
            (&acme, Reason::Unsubscribe, AppliesTo::Marketing)
        );
    }

    #[test]
    fn an_export_names_the_scope_and_never_an_address() {
        let h = hasher();
        let s = Suppression::new(Scope::Platform, h.hash("a@example.com"), Reason::Manual, AppliesTo::All);
        let csv = export_csv(std::slice::from_ref(&s));
        assert!(
            csv.ends_with(&format!("platform,{},manual,all,{}\n", s.recipient.to_hex(), s.created_at)),
            "{csv}"
        );
        assert!(!csv.contains("a@example.com"));
    }
}
