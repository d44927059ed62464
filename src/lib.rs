//! lbmesh: a mesh of redundant HAProxy load-balancer VMs fed by phone-home calls.
// Two calls into the C allocator (`src/memory.rs`) are the only unsafe code.
#![deny(unsafe_code)]

pub mod api;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod events;
pub mod failover;
pub mod fault;
pub mod haproxy;
pub mod keepalived;
pub mod logging;
pub mod memory;
pub mod mesh;
pub mod metrics;
pub mod phone_home;
pub mod preflight;
pub mod registry;
pub mod secret;
pub mod shared;
pub mod shutdown;
pub mod status;
pub mod store;
pub mod tasks;
pub mod tls;
