//! HAProxy: render the config from the registry, and keep a real HAProxy running it.

pub mod apply;
pub mod process;
pub mod render;
pub mod runtime;
