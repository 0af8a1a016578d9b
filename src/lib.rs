//! edgeimage: signed, byte-reproducible Talos Linux boot media for bare-metal edge hosts.
//!
//! Data flows one way: [`profile`] → [`assets`] → [`compose`] → [`artifact`]. [`build`] runs
//! that chain; [`inspect`] reads an image back. The binary (`src/main.rs`) only parses
//! arguments and calls these.

pub mod artifact;
pub mod assets;
pub mod build;
pub mod compose;
pub mod config;
pub mod extension;
pub mod inspect;
pub mod layout;
pub mod pe;
pub mod plan;
pub mod profile;
pub mod progress;
pub mod synthetic;
pub mod talos;
pub mod tree;
