//! PostgreSQL and SQLite storage for mailpipe: ledger, events, suppressions, templates, dead letters
