//! Binary formats at the bottom of the crate: each reads and writes bytes of one format and
//! imports nothing above [`crate::layout`].

pub mod gpt;
pub mod meta;
