//! anovit: inline visual inspection on conveyor belts with an AnoViT model run by tract.
//!
//! The frame path is `capture -> preprocess -> model -> scoring -> decision -> actuation`, with
//! the status display and telemetry beside it; [`pipeline::Inspector`] wires them. Hardware edges
//! are traits with host stand-ins (`FrameSource`, `embedded_hal::digital::OutputPin`,
//! `embedded_graphics::DrawTarget`, [`clock::Clock`]), so the whole loop runs and is tested on any
//! host. The model bundle (`docs/BUNDLE.md`) is the contract with the training side.
#![deny(missing_docs)]

pub mod actuation;
pub mod bench;
pub mod board;
pub mod broadcast;
pub mod bundle;
pub mod calibrate;
pub mod capture;
pub mod clock;
pub mod dataset;
pub mod decision;
pub mod deconv;
pub mod display;
pub mod ejector;
pub mod error;
pub mod evaluate;
pub mod fleet;
pub mod fuse;
pub mod golden;
#[cfg(feature = "hw-gpio")]
pub mod gpio;
pub mod logger;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod preprocess;
pub mod quant;
pub mod scoring;
pub mod service;
mod simd;
pub mod soak;
pub mod synth;
pub mod telemetry;
