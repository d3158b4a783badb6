//! Camera frames into the loop's layouts: `convert::convert` for every `CameraFormat`, then the
//! YUYV-to-RGB helper `camera --save` runs on the result.
//!
//! Input: `[format, width, height, stride lo, stride hi, frame bytes...]`. Only arguments the
//! V4L2 source can produce: the size is the negotiated one (YUYV widths even, as drivers round
//! them), the stride is whatever `bytesperline` the driver reports (0, short, padded), the frame
//! is `bytesused` bytes of any length and content, and `dst` is always sized for the frame
//! (a wrong `dst` is an assert by contract, not an input).
#![no_main]

use anovit::capture::convert::{convert, yuyv_frame, CameraFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, src)) = data.split_first_chunk::<5>() else { return };
    let format = CameraFormat::ALL[usize::from(head[0]) % 4];
    // Small sizes keep each run fast; the arithmetic is the same at 8192.
    let width = match format {
        CameraFormat::Yuyv => 2 * (1 + usize::from(head[1]) % 32),
        _ => 1 + usize::from(head[1]) % 64,
    };
    let height = 1 + usize::from(head[2]) % 64;
    let stride = usize::from(u16::from_le_bytes([head[3], head[4]]));
    let bpp = format.output().bytes_per_pixel();
    let mut dst = vec![0u8; width * height * bpp];
    let Ok(()) = convert(format, src, width, height, stride, &mut dst) else { return };
    match format {
        CameraFormat::Mjpeg => {}
        CameraFormat::Yuyv => {
            // Packed frames stay packed; `camera --save` turns them into RGB like this.
            check_rows(src, &dst, width * 2, stride);
            let mut rgb = vec![0u8; width * height * 3];
            yuyv_frame(&dst, width, &mut rgb);
        }
        CameraFormat::Rgb24 | CameraFormat::Grey => check_rows(src, &dst, width * bpp, stride),
    }
});

/// Uncompressed formats: every output row is the source row at its stride, padding dropped.
fn check_rows(src: &[u8], dst: &[u8], row: usize, stride: usize) {
    let stride = stride.max(row);
    for (y, out) in dst.chunks_exact(row).enumerate() {
        assert_eq!(out, &src[y * stride..y * stride + row], "row {y}");
    }
}
