//! HAProxy: render the config from the registry, and keep a real HAProxy running it.

pub mod apply;
pub mod log;
pub mod process;
pub mod render;
pub mod runtime;
pub mod stats;
