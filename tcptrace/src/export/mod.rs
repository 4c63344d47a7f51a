//! The Prometheus exporter (`tcptrace serve`): the text exposition document built from the
//! socket table and aggregates at each scrape, the HTTP server that serves it, and its settings.
//!
//! See `deploy/README.md` for the metric list, a scrape config and alert rules.

pub mod answer;
pub mod auth;
pub mod config;
pub mod current;
pub mod exposition;
pub mod http;
pub mod metrics;
pub mod process;
pub mod web_config;

pub use config::{ConfigError, Overrides, ServeConfig};
pub use current::Cardinality;
pub use metrics::{Scrape, render};
pub use web_config::{WebConfig, WebConfigError, WebConfigSource};
