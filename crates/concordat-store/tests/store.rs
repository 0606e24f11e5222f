//! Integration tests of the validated, versioned upload path.

mod support;
mod upload_rules;
mod upload_versions;
