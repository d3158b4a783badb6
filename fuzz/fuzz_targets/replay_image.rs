//! Image files replayed as camera frames: the `ReplaySource` reads each file's size when it
//! opens (sizing its buffers for the largest), then decodes it when its turn comes. That decode
//! is private, so this target goes through the public path with a real file: `from_files`, then
//! `next_frame`, exactly what `anovit run --folder` and `anovit evaluate` do.
//!
//! Input: `[flags, ...]`. Bit 0 of `flags`: the file is named `.jpg` (else `.png`): the size is
//! read by extension, the decode guesses the format from the bytes. Bit 1: the file is replaced
//! between open and decode (a folder written to while it is replayed): then two bytes give the
//! length of the first file's bytes, the rest is the file the decode finds.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anovit::capture::{FrameSource, ReplaySource};
use libfuzzer_sys::fuzz_target;

/// A folder of this process's own, in memory when the host has /dev/shm.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = PathBuf::from("/dev/shm");
        let base = if shm.is_dir() { shm } else { std::env::temp_dir() };
        let d = base.join(format!("anovit-fuzz-replay-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("scratch folder");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else { return };
    let replace = flags & 2 != 0;
    let (at_open, at_decode) = if replace {
        let Some((len, rest)) = rest.split_first_chunk::<2>() else { return };
        rest.split_at(usize::from(u16::from_le_bytes(*len)).min(rest.len()))
    } else {
        (rest, rest)
    };
    let path = dir().join(if flags & 1 != 0 { "frame.jpg" } else { "frame.png" });
    std::fs::write(&path, at_open).expect("write scratch file");
    let Ok(mut src) = ReplaySource::from_files([(path.clone(), Some(false), "fuzz")]) else { return };
    let (max_w, max_h) = src.max_size();
    if replace {
        std::fs::write(&path, at_decode).expect("write scratch file");
    }
    let Ok(Some(frame)) = src.next_frame(Duration::ZERO) else { return };
    let m = frame.meta;
    assert!(m.width * m.height <= max_w * max_h, "{}x{} frame from a {max_w}x{max_h} folder", m.width, m.height);
    assert_eq!(frame.data.len(), m.width * m.height * m.format.bytes_per_pixel());
});
