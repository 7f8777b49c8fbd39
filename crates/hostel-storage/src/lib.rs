//! Disks and images on one host.

pub mod disk;
pub mod tiny;
