//! Everything that talks to Kubernetes: client construction, a release's objects, and
//! database sessions tunnelled through the API server.

pub mod access;
pub mod credential_plugin;
pub mod exec;
pub mod forward;
pub mod lease;
pub mod logs;
pub mod proxy;
pub mod rbac;
pub mod release;
pub mod spdy;
pub mod transport;
pub mod tunnel;
pub mod volume;
pub mod websocket;

pub use access::Cluster;
