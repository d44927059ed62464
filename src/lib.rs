//! lbmesh: a mesh of redundant HAProxy load-balancer VMs fed by phone-home calls.
#![forbid(unsafe_code)]

pub mod clock;
pub mod config;
pub mod haproxy;
pub mod metrics;
pub mod registry;
pub mod secret;
pub mod shared;
pub mod store;
