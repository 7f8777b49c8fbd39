//! The QEMU driver: an async QMP client, the command line rendered from a VM's
//! definition, process launch with least privilege, and the KVM probe.

pub mod argv;
pub mod platform;
pub mod probe;
pub mod process;
pub mod qmp;

pub use argv::{render, Incoming, RuntimePaths};
pub use qmp::{Qmp, QmpError, QmpEvent};
