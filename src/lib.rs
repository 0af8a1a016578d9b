//! edgeimage: signed, byte-reproducible Talos Linux boot media for bare-metal edge hosts.
//!
//! Data flows one way: [`profile`] → [`assets`] → [`compose`] → [`artifact`] (image,
//! manifest, block map) → [`sign`] / [`trust`] → [`verify`]. [`build`] runs the chain up to
//! signing, then [`installer`] makes the installer stick image; [`inspect`] reads an image
//! back; [`verify`] proves an image, a compressed image or a written disk against a trust
//! store; [`personalize`] makes a device's own slot partitions (META keys, `metal-iso`) from
//! a signed image. The binary (`src/main.rs`) only parses arguments and calls these.

pub mod artifact;
pub mod assets;
pub mod build;
pub mod civil;
pub mod compose;
pub mod config;
pub mod extension;
pub mod factory;
pub mod flash;
pub mod format;
pub mod imagecache;
pub mod input;
pub mod inspect;
pub mod install;
pub mod installer;
pub mod kmod;
pub mod layout;
pub mod pe;
pub mod personalize;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod sign;
pub mod synthetic;
pub mod talos;
pub mod template;
pub mod tree;
pub mod trust;
pub mod upgrade_image;
pub mod verify;
