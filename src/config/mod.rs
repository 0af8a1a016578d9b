//! Machine configuration, its delivery, META network configuration and Image Factory
//! schematics.
