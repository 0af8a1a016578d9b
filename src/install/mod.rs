//! The offline installer: `edgeimage install`, also run as `/init` of the installer stick's
//! initramfs. It proves the payload's signature, picks the host's disk by the profile's rules,
//! writes and verifies it with the flash engine, records the result on the stick, and
//! reboots into Talos.

pub mod config;
