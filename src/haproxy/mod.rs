//! HAProxy: render the config from the registry, and keep a real HAProxy running it.
//!
//! `layout` places servers in backend slots, `render` turns a layout into
//! config text, `plan` decides each next step (pure), `execute` performs
//! it, `apply` is the loop between them; `process` runs HAProxy,
//! `runtime` talks to its sockets, `log` receives its log and `stats`
//! reads its view of server health; `adopt` reads back what an HAProxy left
//! running by an earlier lbmesh serves.

pub mod adopt;
pub mod apply;
pub mod execute;
pub mod layout;
pub mod log;
pub mod plan;
pub mod process;
pub mod render;
pub mod runtime;
pub mod stats;
