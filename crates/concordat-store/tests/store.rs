//! Integration tests of the validated, versioned upload path.

#[macro_use]
mod support;
mod shared_trail;
mod upload_rules;
mod upload_versions;
