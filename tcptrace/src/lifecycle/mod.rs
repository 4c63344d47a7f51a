//! See the crate docs for where this stage sits in the data flow.
