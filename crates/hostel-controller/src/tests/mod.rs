//! The controller's own tests, without QEMU: a real store (SQLite in a temporary
//! directory) and the operations called as the REST layer, the SSH gateway or a system
//! actor would call them, each with its context (`crate::testing`).

mod actors;
mod tenants;
