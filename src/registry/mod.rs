//! The Confluent-compatible schema registry: its config section ([`config`]), a client of its
//! REST API ([`client`]), and the cache of the schemas a running gateway encodes with
//! ([`cache`]).

pub mod cache;
pub mod client;
pub mod config;

pub use cache::{Latest, RegisterError, SchemaCache};
pub use client::{
    incompatibility_reasons, RegisteredSchema, RegistryClient, RegistryError, Version,
};
pub use config::{subject, validate_config, RegistryConfig, RegistryTlsConfig, SubjectStrategy};
