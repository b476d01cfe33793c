//! A release's Kubernetes objects: the install values (spec), the objects made from them
//! (render), and the values read back from a deployed release (live).

pub mod certs;
pub mod live;
pub mod policy;
pub mod render;
pub mod spec;

pub use spec::{InstallSpec, Requested};
