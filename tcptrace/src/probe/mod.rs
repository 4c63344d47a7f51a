//! See the crate docs for where this stage sits in the data flow.
pub mod btf;
pub mod kernel;
pub mod tracefs;
