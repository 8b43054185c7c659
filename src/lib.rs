//! kgate: the ingestion gateway to Apache Kafka. The binary is a thin CLI over this library.

pub mod avro;
pub mod check;
pub mod config;
pub mod encode;
pub mod event;
pub mod kafka;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod run;
pub mod schema_cache;
pub mod schemas;
pub mod source;
pub mod synth;
pub mod tail;
pub mod transform;
