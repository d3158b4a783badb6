//! Start-up errors: each says what is wrong and what to do about it.
//!
//! Per-frame problems never use this type: they are counted, logged and turned into the safe
//! verdict by the loop (see `pipeline`).

use std::fmt;
use std::path::PathBuf;

/// Something that stops `anovit` from starting.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read. Check the path and permissions.
    Io {
        /// What was being read.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The bundle's manifest is unreadable or inconsistent. Re-export the bundle with
    /// `scripts/export.py` (or fix the named field).
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The model file does not match its manifest (hash, shape or outputs). The bundle was
    /// edited or corrupted: copy it again from the machine that exported it.
    ModelMismatch {
        /// The model file.
        path: PathBuf,
        /// What does not match.
        why: String,
    },
    /// tract could not load or optimise the model.
    Model {
        /// The model file.
        path: PathBuf,
        /// tract's error chain.
        why: String,
    },
    /// The board profile is invalid. Fix the named key in the TOML file.
    Board {
        /// The profile file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A GPIO line could not be set up. Check the chip path, the line number and permissions
    /// (the udev rules in `board/`), and that no other program holds the line.
    Gpio {
        /// The chip: device path or label.
        chip: String,
        /// The line: offset or name.
        line: String,
        /// What went wrong.
        why: String,
    },
    /// The camera could not be opened or does not do what the profile asks. Check the device
    /// path or name (`anovit camera --list`), the format, size and rate, and permissions.
    Camera {
        /// Device path or name from the profile.
        device: String,
        /// What went wrong.
        why: String,
    },
    /// An input image cannot be used. Check that it is a readable PNG or JPEG.
    Image {
        /// The image file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "cannot read {}: {source}", path.display()),
            Error::Gpio { chip, line, why } => write!(f, "GPIO line {line} of {chip}: {why}"),
            Error::Camera { device, why } => write!(f, "camera {device}: {why}"),
            Error::Manifest { path, why } => {
                write!(f, "bad model manifest {}: {why} (re-export the bundle with scripts/export.py)", path.display())
            }
            Error::ModelMismatch { path, why } => write!(
                f,
                "model file {} does not match its manifest: {why} (the bundle is corrupt or was edited: copy it again)",
                path.display()
            ),
            Error::Model { path, why } => write!(f, "cannot load model {}: {why}", path.display()),
            Error::Board { path, why } => write!(f, "invalid board profile {}: {why}", path.display()),
            Error::Image { path, why } => {
                write!(f, "cannot use image {}: {why} (expected a readable PNG or JPEG)", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Result with the start-up [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
