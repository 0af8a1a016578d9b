//! Factory provisioning: one signed base image written to many disks, each device with its
//! own values.
//!
//! [`inventory`] reads which device gets which values (CSV or JSON), checks them against the
//! field kinds and the personalization templates, renders templates and picks the row for a
//! device. [`log`] is the append-only record log of what was written where, and its summary.

mod csv;
pub mod inventory;
pub mod line;
pub mod log;

pub use inventory::render;
pub use inventory::{FieldSpec, Inventory, Kind, Problem, Row};
