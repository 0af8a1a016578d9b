//! `edgeimage flash`: write an image to one or many disks (or files) at once, safely, and
//! prove by reading back from each device that what landed is what was signed.

pub mod devices;
