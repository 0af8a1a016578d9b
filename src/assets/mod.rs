//! Talos boot assets: read from a directory or an OCI image archive, checked against pins.

pub mod oci;
