//! Disks and images on one host.

pub mod debian;
pub mod disk;
pub mod pool;
pub mod seed;
pub mod sysuser;
pub mod tiny;
