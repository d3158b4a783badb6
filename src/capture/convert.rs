//! Camera pixel formats into the loop's frame layouts (RGB8, GREY8 or packed YUYV, rows
//! without padding), written into a buffer the caller owns, so capture allocates nothing per
//! frame in this crate. YUYV stays packed: the preprocessing converts the pixels it samples.

use std::io::Cursor;

use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use super::PixelFormat;

/// Formats a camera can deliver that the loop understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CameraFormat {
    /// Packed 4:2:2 Y0 U Y1 V (the common webcam format).
    Yuyv,
    /// Interleaved 8-bit R, G, B (V4L2 `RGB3`).
    Rgb24,
    /// 8-bit luminance.
    Grey,
    /// Motion JPEG: one JPEG image per frame.
    Mjpeg,
}

impl CameraFormat {
    /// Every format, in the order tried when the profile leaves the choice to the camera:
    /// uncompressed first (no decoding cost, no compression artefacts).
    pub const ALL: [CameraFormat; 4] =
        [CameraFormat::Yuyv, CameraFormat::Rgb24, CameraFormat::Grey, CameraFormat::Mjpeg];

    /// The V4L2 four-character code.
    pub fn fourcc(self) -> [u8; 4] {
        match self {
            CameraFormat::Yuyv => *b"YUYV",
            CameraFormat::Rgb24 => *b"RGB3",
            CameraFormat::Grey => *b"GREY",
            CameraFormat::Mjpeg => *b"MJPG",
        }
    }

    /// The format with this four-character code, if the loop understands it.
    pub fn from_fourcc(code: [u8; 4]) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.fourcc() == code)
    }

    /// The layout frames have once converted.
    pub fn output(self) -> PixelFormat {
        match self {
            CameraFormat::Grey => PixelFormat::Gray8,
            CameraFormat::Yuyv => PixelFormat::Yuyv,
            CameraFormat::Rgb24 | CameraFormat::Mjpeg => PixelFormat::Rgb8,
        }
    }

    /// Smallest number of bytes a valid frame row can have (MJPEG rows have no fixed size).
    fn min_stride(self, width: usize) -> usize {
        match self {
            CameraFormat::Yuyv => width * 2,
            CameraFormat::Rgb24 => width * 3,
            CameraFormat::Grey => width,
            CameraFormat::Mjpeg => 0,
        }
    }
}

/// Why a frame's bytes could not be converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConvertError {
    /// Fewer bytes than the negotiated size needs.
    Short {
        /// Bytes the frame needs.
        need: usize,
        /// Bytes it has.
        got: usize,
    },
    /// The JPEG data could not be decoded.
    Jpeg(String),
    /// The JPEG's size is not the negotiated one.
    JpegSize {
        /// The JPEG's width.
        width: usize,
        /// The JPEG's height.
        height: usize,
    },
}

impl std::fmt::Display for ConvertError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConvertError::Short { need, got } => write!(f, "frame has {got} bytes, the negotiated format needs {need}"),
            ConvertError::Jpeg(why) => write!(f, "MJPEG frame does not decode: {why}"),
            ConvertError::JpegSize { width, height } => {
                write!(f, "MJPEG frame is {width}x{height}, not the negotiated size")
            }
        }
    }
}

/// Converts one frame of `width` x `height` with `stride` bytes per source row into `dst`
/// (`width * height * output().bytes_per_pixel()` bytes).
pub fn convert(
    format: CameraFormat,
    src: &[u8],
    width: usize,
    height: usize,
    stride: usize,
    dst: &mut [u8],
) -> Result<(), ConvertError> {
    let stride = stride.max(format.min_stride(width));
    let out_row = width * format.output().bytes_per_pixel();
    assert_eq!(dst.len(), out_row * height, "destination sized for another frame");
    if format == CameraFormat::Mjpeg {
        return decode_jpeg(src, width, height, dst);
    }
    // The last row may end without its padding.
    let need = if height == 0 { 0 } else { stride * (height - 1) + format.min_stride(width) };
    if src.len() < need {
        return Err(ConvertError::Short { need, got: src.len() });
    }
    for (row, out) in dst.chunks_exact_mut(out_row).enumerate() {
        let line = &src[row * stride..row * stride + format.min_stride(width)];
        match format {
            CameraFormat::Rgb24 | CameraFormat::Grey | CameraFormat::Yuyv => out.copy_from_slice(line),
            CameraFormat::Mjpeg => unreachable!("handled above"),
        }
    }
    Ok(())
}

/// One YUYV pixel (its luma and its pair's chroma) as RGB, BT.601 limited range (what UVC
/// webcams send), integer arithmetic with 8 fractional bits.
#[inline]
pub fn yuyv_to_rgb(y: u8, u: u8, v: u8) -> [u8; 3] {
    let clamp = |t: i32| (t >> 8).clamp(0, 255) as u8;
    let (u, v) = (i32::from(u) - 128, i32::from(v) - 128);
    let c = 298 * (i32::from(y) - 16) + 128;
    [clamp(c + 409 * v), clamp(c - 100 * u - 208 * v), clamp(c + 516 * u)]
}

/// One row of YUYV into RGB (for saving and showing frames; the loop samples YUYV directly).
pub fn yuyv_row(src: &[u8], dst: &mut [u8]) {
    for (pair, rgb) in src.chunks_exact(4).zip(dst.chunks_exact_mut(6)) {
        rgb[..3].copy_from_slice(&yuyv_to_rgb(pair[0], pair[1], pair[3]));
        rgb[3..].copy_from_slice(&yuyv_to_rgb(pair[2], pair[1], pair[3]));
    }
    // An odd width leaves one pixel without a pair: repeat the last converted one.
    let n = dst.len() / 3;
    if n % 2 == 1 && n > 1 {
        let (head, tail) = dst.split_at_mut(3 * (n - 1));
        tail.copy_from_slice(&head[3 * (n - 2)..]);
    }
}

/// A packed YUYV frame of `width` pixels per row into RGB24 (`dst`: 3 bytes per pixel).
pub fn yuyv_frame(src: &[u8], width: usize, dst: &mut [u8]) {
    for (s, d) in src.chunks_exact(2 * width).zip(dst.chunks_exact_mut(3 * width)) {
        yuyv_row(s, d);
    }
}

fn decode_jpeg(src: &[u8], width: usize, height: usize, dst: &mut [u8]) -> Result<(), ConvertError> {
    // Bounding the size up front stops a corrupt header from asking for a huge buffer.
    let opts = DecoderOptions::default()
        .jpeg_set_out_colorspace(ColorSpace::RGB)
        .set_max_width(width)
        .set_max_height(height)
        .set_strict_mode(true);
    let mut dec = JpegDecoder::new_with_options(Cursor::new(src), opts);
    dec.decode_headers().map_err(|e| ConvertError::Jpeg(e.to_string()))?;
    let info = dec.info().ok_or_else(|| ConvertError::Jpeg("no image header".into()))?;
    if (info.width as usize, info.height as usize) != (width, height) {
        return Err(ConvertError::JpegSize { width: info.width as usize, height: info.height as usize });
    }
    dec.decode_into(dst).map_err(|e| ConvertError::Jpeg(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yuyv_rows_of_any_width_match_the_pixel_formula() {
        for width in 1..41usize {
            let src: Vec<u8> = (0..2 * width.max(2)).map(|i| (i * 37 % 251) as u8).collect();
            let mut dst = vec![0u8; 3 * width];
            yuyv_row(&src[..4 * (width / 2) + 2 * (width % 2)], &mut dst);
            for x in 0..width {
                // Odd width: the last pixel repeats the one before it.
                let p = if width % 2 == 1 && width > 1 && x == width - 1 { x - 1 } else { x };
                let (y, u, v) =
                    (src[2 * p] as i32, src[4 * (p / 2) + 1] as i32 - 128, src[4 * (p / 2) + 3] as i32 - 128);
                let c = 298 * (y - 16) + 128;
                let want = [c + 409 * v, c - 100 * u - 208 * v, c + 516 * u].map(|t| (t >> 8).clamp(0, 255) as u8);
                if width > 1 {
                    assert_eq!(dst[3 * x..3 * x + 3], want, "width {width}, pixel {x}");
                }
            }
        }
    }

    #[test]
    fn yuyv_reference_colours() {
        // Y, U, V of BT.601 limited-range white, black, red and mid grey.
        let px = |y: u8, u: u8, v: u8| [y, u, y, v];
        let src: Vec<u8> = [px(235, 128, 128), px(16, 128, 128), px(81, 90, 240), px(126, 128, 128)].concat();
        let mut packed = vec![0; 8 * 2];
        convert(CameraFormat::Yuyv, &src, 8, 1, 16, &mut packed).unwrap();
        assert_eq!(packed, src, "YUYV frames stay packed");
        let mut dst = vec![0; 8 * 3];
        yuyv_row(&packed, &mut dst);
        let close = |got: &[u8], want: [u8; 3]| got.iter().zip(want).all(|(&g, w)| g.abs_diff(w) <= 2);
        assert!(close(&dst[0..3], [255, 255, 255]), "{:?}", &dst[0..3]);
        assert!(close(&dst[6..9], [0, 0, 0]), "{:?}", &dst[6..9]);
        assert!(close(&dst[12..15], [255, 0, 0]), "{:?}", &dst[12..15]);
        assert!(close(&dst[18..21], [128, 128, 128]), "{:?}", &dst[18..21]);
        assert_eq!(dst[0..3], dst[3..6], "both pixels of a pair share chroma");
    }

    #[test]
    fn padded_rows_are_skipped() {
        // 2x2 RGB with 8 bytes per row (2 bytes of padding each).
        let src = [1, 2, 3, 4, 5, 6, 99, 99, 7, 8, 9, 10, 11, 12];
        let mut dst = [0; 12];
        convert(CameraFormat::Rgb24, &src, 2, 2, 8, &mut dst).unwrap();
        assert_eq!(dst, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
        let mut grey = [0; 4];
        convert(CameraFormat::Grey, &[1, 2, 0, 3, 4], 2, 2, 3, &mut grey).unwrap();
        assert_eq!(grey, [1, 2, 3, 4]);
    }

    #[test]
    fn short_frames_are_errors() {
        let mut dst = [0; 2 * 2 * 2];
        let e = convert(CameraFormat::Yuyv, &[0; 7], 2, 2, 4, &mut dst).unwrap_err();
        assert_eq!(e, ConvertError::Short { need: 8, got: 7 });
    }

    #[test]
    fn mjpeg_decodes_and_rejects_garbage_and_wrong_size() {
        let img = image::RgbImage::from_fn(32, 16, |x, y| image::Rgb([(x * 8) as u8, (y * 16) as u8, 128]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95).encode_image(&img).unwrap();
        let mut dst = vec![0; 32 * 16 * 3];
        convert(CameraFormat::Mjpeg, &jpeg, 32, 16, 0, &mut dst).unwrap();
        let err: u32 = dst.iter().zip(img.as_raw()).map(|(&a, &b)| u32::from(a.abs_diff(b))).max().unwrap();
        assert!(err <= 12, "JPEG round trip off by {err}");

        let mut small = vec![0; 16 * 16 * 3];
        assert!(matches!(
            convert(CameraFormat::Mjpeg, &jpeg, 16, 16, 0, &mut small),
            Err(ConvertError::Jpeg(_) | ConvertError::JpegSize { .. })
        ));
        for garbage in [&[][..], &[0xff, 0xd8, 0xff][..], &jpeg[..jpeg.len() / 3], &[7u8; 500][..]] {
            assert!(convert(CameraFormat::Mjpeg, garbage, 32, 16, 0, &mut dst).is_err());
        }
    }

    #[test]
    fn fourcc_round_trip() {
        for f in CameraFormat::ALL {
            assert_eq!(CameraFormat::from_fourcc(f.fourcc()), Some(f));
        }
        assert_eq!(CameraFormat::from_fourcc(*b"NV12"), None);
    }
}
