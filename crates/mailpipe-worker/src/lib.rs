//! The send worker: consume, suppress, render, send, record, then acknowledge
