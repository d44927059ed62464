//! keepalived integration: the VRRP state keepalived reports (notify hook or
//! FIFO), hooks run on becoming MASTER or BACKUP, keepalived.conf rendered
//! for this peer, and the health check keepalived runs.

mod check;
mod fifo;
mod hooks;
mod notification;
mod render;
mod vrrp;

pub use check::check;
pub use fifo::read_fifo;
pub use hooks::Hooks;
pub use notification::{Notification, VrrpState};
pub use render::{KeepalivedParams, render};
pub use vrrp::Vrrp;
