//! kgate: the ingestion gateway to Apache Kafka. The binary is a thin CLI over this library;
//! ARCHITECTURE.md walks the road of an event through these modules.

pub mod admin;
pub mod avro;
pub mod cmd;
pub mod config;
pub mod coord;
pub mod dlq;
pub mod encode;
pub mod event;
pub mod gateway;
pub mod kafka;
pub mod log;
pub mod metrics;
pub mod pipeline;
pub mod registry;
pub mod serve;
pub mod sink;
pub mod source;
pub mod spool;
pub mod transform;
pub mod ui;
pub mod validate;
