//! Everything that talks to Kubernetes: client construction, a release's objects, and
//! database sessions tunnelled through the API server.

pub mod access;
pub mod exec;
pub mod proxy;
pub mod release;
pub mod tunnel;
pub mod volume;

pub use access::Cluster;
