//! edgeimage: signed, byte-reproducible Talos Linux boot media for bare-metal edge hosts.
//!
//! Data flows one way: [`profile`] → [`assets`] → [`compose`] → [`artifact`]. The binary
//! (`src/main.rs`) only parses arguments and calls [`build`] and [`inspect`].

pub mod assets;
pub mod compose;
pub mod layout;
