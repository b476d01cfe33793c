//! A release as deployed: what exists (observe), what state it is in (assess), whether its
//! database answers (probe), and the DeploymentStatus document (report).

pub mod apply;
pub mod assess;
pub mod changes;
pub mod cnpg;
pub mod cnpg_upgrade;
pub mod evidence;
pub mod kind;
pub mod observe;
pub mod probe;
pub mod report;
pub mod restart;
pub mod rollout;
pub mod rotation;
pub mod status;
pub mod to_cluster;
pub mod uninstall;
pub mod writes;

pub use assess::{assess, Phase};
pub use observe::{observe, Observed};
