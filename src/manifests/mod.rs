//! A release's Kubernetes objects: the install values (spec) and the objects made from them
//! (render).

pub mod render;
pub mod spec;

pub use spec::InstallSpec;
