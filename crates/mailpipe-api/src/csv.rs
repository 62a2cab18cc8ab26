//! Suppression lists as CSV, shared by the CLI and the API.

use mailpipe_core::EmailAddress;
use mailpipe_store::SuppressionRow;

/// A line of a suppression CSV that cannot be imported.
#[derive(Debug)]
pub struct CsvError {
    pub line: usize,
    pub error: String,
}

/// Parses a suppression CSV (`email,reason,applies_to`; reason one of
/// hard_bounce, complaint, unsubscribe, manual; applies_to marketing or
/// all; a header line is allowed). Every line is checked before anything is
/// imported: one bad line and nothing is.
pub fn parse_suppression_csv(
    text: &str,
    scope: Option<&str>,
    hash: impl Fn(&str) -> String,
) -> Result<Vec<SuppressionRow>, Vec<CsvError>> {
    let mut rows = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || (i == 0 && line.to_ascii_lowercase().starts_with("email")) {
            continue;
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        let err = |e: String| CsvError { line: i + 1, error: e };
        if f.len() != 3 {
            errors.push(err(format!("expected 3 fields (email,reason,applies_to), found {}", f.len())));
            continue;
        }
        let addr = match EmailAddress::parse(f[0]) {
            Ok(a) => a,
            Err(e) => {
                errors.push(err(format!("email: {e}")));
                continue;
            }
        };
        if !["hard_bounce", "complaint", "unsubscribe", "manual"].contains(&f[1]) {
            errors.push(err(format!(
                "reason {:?}: expected hard_bounce, complaint, unsubscribe or manual",
                f[1]
            )));
            continue;
        }
        if !["marketing", "all"].contains(&f[2]) {
            errors.push(err(format!("applies_to {:?}: expected marketing or all", f[2])));
            continue;
        }
        rows.push(SuppressionRow {
            scope_tenant: scope.unwrap_or("").to_owned(),
            recipient_hash: hash(&addr.canonical()),
            reason: f[1].to_owned(),
            applies_to: f[2].to_owned(),
            created_at: mailpipe_core::now_ms(),
        });
    }
    if errors.is_empty() { Ok(rows) } else { Err(errors) }
}

/// Suppressions as CSV: `scope,recipient_hash,reason,applies_to,created_at`.
pub fn export_csv(rows: &[SuppressionRow]) -> String {
    let mut out = String::from("scope,recipient_hash,reason,applies_to,created_at\n");
    for r in rows {
        let scope = if r.scope_tenant.is_empty() { "platform" } else { r.scope_tenant.as_str() };
        out.push_str(&format!(
            "{scope},{},{},{},{}\n",
            r.recipient_hash, r.reason, r.applies_to, r.created_at
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_csv_reports_every_bad_line_and_yields_nothing() {
        let text = "email,reason,applies_to\nok@example.com,manual,all\nnot-an-address,manual,all\nx@example.com,spam,all\ny@example.com,manual\n";
        let errs = parse_suppression_csv(text, None, |a| a.to_owned()).unwrap_err();
        assert_eq!(errs.iter().map(|e| e.line).collect::<Vec<_>>(), [3, 4, 5]);
        let good = parse_suppression_csv("a@example.com,unsubscribe,marketing\n", Some("acme"), |a| {
            format!("h({a})")
        })
        .unwrap();
        assert_eq!(good[0].recipient_hash, "h(a@example.com)");
        assert_eq!(good[0].scope_tenant, "acme");
    }
}
