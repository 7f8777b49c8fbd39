//! The command-line client, one module per family of commands. Each module owns its
//! clap types and a `run` that carries them out; `output` is the one way to print a
//! table or JSON, `parse` holds the value parsers, `files` the client's local files.

pub mod accounts;
pub mod archive;
pub mod audit;
pub mod backups;
pub mod consoles;
pub mod disks;
pub mod files;
pub mod hosts;
pub mod images;
pub mod limits;
pub mod networks;
pub mod output;
pub mod parse;
pub mod pools;
pub mod roles;
pub mod usage;
pub mod vms;
pub mod xen;
