//! Findings are part of the output schema (`keepalive-schema`); re-exported for the rules.

pub use keepalive_schema::finding::*;
