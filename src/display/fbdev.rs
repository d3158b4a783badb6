//! The Linux framebuffer (`/dev/fbN`): HDMI and DSI screens on a Pi or Jetson console, SPI TFTs
//! and OLEDs with a kernel driver (fbtft, ssd130x), and the kernel's virtual framebuffer (`vfb`)
//! in the VM check. The status view is drawn in memory and converted into the mapped screen
//! memory in the device's own pixel format (any RGB bitfields of 16, 24 or 32 bits, or 1 bit
//! monochrome), at the top left of the visible area.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{MemoryFramebuffer, Panel};

/// `struct fb_bitfield` of `<linux/fb.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Bitfield {
    offset: u32,
    length: u32,
    msb_right: u32,
}

/// `struct fb_var_screeninfo` of `<linux/fb.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct VarInfo {
    xres: u32,
    yres: u32,
    xres_virtual: u32,
    yres_virtual: u32,
    xoffset: u32,
    yoffset: u32,
    bits_per_pixel: u32,
    grayscale: u32,
    red: Bitfield,
    green: Bitfield,
    blue: Bitfield,
    transp: Bitfield,
    nonstd: u32,
    activate: u32,
    height: u32,
    width: u32,
    accel_flags: u32,
    timing: [u32; 11],
    reserved: [u32; 4],
}

/// `struct fb_fix_screeninfo` of `<linux/fb.h>`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
struct FixInfo {
    id: [u8; 16],
    smem_start: libc::c_ulong,
    smem_len: u32,
    kind: u32,
    type_aux: u32,
    visual: u32,
    xpanstep: u16,
    ypanstep: u16,
    ywrapstep: u16,
    line_length: u32,
    mmio_start: libc::c_ulong,
    mmio_len: u32,
    accel: u32,
    capabilities: u16,
    reserved: [u16; 2],
}

const FBIOGET_VSCREENINFO: libc::c_ulong = 0x4600;
const FBIOGET_FSCREENINFO: libc::c_ulong = 0x4602;
const FB_TYPE_PACKED_PIXELS: u32 = 0;
const FB_VISUAL_MONO01: u32 = 0;
const FB_VISUAL_MONO10: u32 = 1;

/// How the status view's RGB pixels become the device's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    /// Packed RGB of 2, 3 or 4 bytes per pixel (little-endian words) with these fields.
    Rgb { bytes: usize, r: (u32, u32), g: (u32, u32), b: (u32, u32) },
    /// One bit per pixel, least significant bit first; `lit` is the bit value of a lit pixel.
    Mono { lit: bool },
}

/// An open, mapped framebuffer device.
pub struct Fbdev {
    path: PathBuf,
    _file: File,
    mem: *mut u8,
    len: usize,
    stride: usize,
    /// First visible row and column in the mapped memory (panning).
    origin: (usize, usize),
    size: (u32, u32),
    format: Format,
}

// SAFETY: the mapping is owned by this value alone and only written through `&mut self`.
unsafe impl Send for Fbdev {}

impl Fbdev {
    /// Opens `path` and maps its screen memory.
    pub fn open(path: &Path) -> Result<Self, String> {
        let what = path.display();
        let file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
            format!("cannot open framebuffer {what}: {e} (is the user in group `video`? is there a screen driver?)")
        })?;
        let fd = file.as_raw_fd();
        let mut var = VarInfo::default();
        // SAFETY: the ioctl writes one fb_var_screeninfo into the valid struct it is given.
        if unsafe { libc::ioctl(fd, FBIOGET_VSCREENINFO as _, &mut var as *mut VarInfo) } < 0 {
            return Err(format!("{what} is not a framebuffer device: {}", std::io::Error::last_os_error()));
        }
        // SAFETY: an all-zero fb_fix_screeninfo is a valid value of this plain C struct.
        let mut fix: FixInfo = unsafe { std::mem::zeroed() };
        // SAFETY: the ioctl writes one fb_fix_screeninfo into the valid struct it is given.
        if unsafe { libc::ioctl(fd, FBIOGET_FSCREENINFO as _, &mut fix as *mut FixInfo) } < 0 {
            return Err(format!("{what}: cannot read its fixed screen info: {}", std::io::Error::last_os_error()));
        }
        let format = format_of(&var, &fix).map_err(|why| format!("{what}: {why}"))?;
        let len = fix.smem_len as usize;
        let stride = fix.line_length as usize;
        let rows_needed = (var.yoffset + var.yres) as usize;
        if stride == 0 || rows_needed * stride > len {
            return Err(format!(
                "{what}: {} bytes of screen memory cannot hold {rows_needed} rows of {stride} bytes",
                len
            ));
        }
        // SAFETY: maps the device's screen memory, shared, of the length the driver reports.
        let mem = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        if mem == libc::MAP_FAILED {
            return Err(format!("cannot map the screen memory of {what}: {}", std::io::Error::last_os_error()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            _file: file,
            mem: mem.cast(),
            len,
            stride,
            origin: (var.xoffset as usize, var.yoffset as usize),
            size: (var.xres, var.yres),
            format,
        })
    }

    /// Visible width and height in pixels.
    pub fn size(&self) -> (u32, u32) {
        self.size
    }

    /// Whether the device shows one bit per pixel.
    pub fn is_mono(&self) -> bool {
        matches!(self.format, Format::Mono { .. })
    }
}

impl Drop for Fbdev {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `open`.
        unsafe { libc::munmap(self.mem.cast(), self.len) };
    }
}

impl Panel for Fbdev {
    fn show(&mut self, fb: &MemoryFramebuffer) -> Result<(), String> {
        let (w, h) = (fb.width.min(self.size.0) as usize, fb.height.min(self.size.1) as usize);
        if h == 0 {
            return Err(format!("{}: nothing to show", self.path.display()));
        }
        // SAFETY: `mem` maps `len` bytes for as long as `self` lives; checked in `open` to hold
        // every visible row.
        let mem = unsafe { std::slice::from_raw_parts_mut(self.mem, self.len) };
        let (x0, y0) = self.origin;
        for y in 0..h {
            let src = &fb.pixels[y * fb.width as usize * 3..][..w * 3];
            let row = &mut mem[(y0 + y) * self.stride..][..self.stride];
            write_row(self.format, src, row, x0);
        }
        Ok(())
    }
}

/// The device's pixel format, or why it is not supported.
fn format_of(var: &VarInfo, fix: &FixInfo) -> Result<Format, String> {
    if fix.kind != FB_TYPE_PACKED_PIXELS {
        return Err(format!("screen memory of type {} is not packed pixels", fix.kind));
    }
    match var.bits_per_pixel {
        1 if fix.visual == FB_VISUAL_MONO01 || fix.visual == FB_VISUAL_MONO10 => {
            Ok(Format::Mono { lit: fix.visual == FB_VISUAL_MONO10 })
        }
        16 | 24 | 32 if var.grayscale == 0 => {
            let field = |f: Bitfield| -> Result<(u32, u32), String> {
                if f.length == 0 || f.length > 8 || f.offset + f.length > var.bits_per_pixel || f.msb_right != 0 {
                    return Err(format!("colour field at bit {} of {} bits is not supported", f.offset, f.length));
                }
                Ok((f.offset, f.length))
            };
            Ok(Format::Rgb {
                bytes: var.bits_per_pixel as usize / 8,
                r: field(var.red)?,
                g: field(var.green)?,
                b: field(var.blue)?,
            })
        }
        bpp => Err(format!(
            "{bpp} bits per pixel{} is not supported: set a 16, 24 or 32 bit RGB mode (`fbset -depth 16`)",
            if var.grayscale != 0 { " (greyscale)" } else { "" }
        )),
    }
}

/// Converts one row of RGB8 pixels into `row` from pixel `x0` on.
fn write_row(format: Format, src: &[u8], row: &mut [u8], x0: usize) {
    match format {
        Format::Rgb { bytes, r, g, b } => {
            let put = |v: u8, (off, len): (u32, u32)| (u32::from(v) >> (8 - len)) << off;
            for (i, px) in src.chunks_exact(3).enumerate() {
                let word = put(px[0], r) | put(px[1], g) | put(px[2], b);
                let at = (x0 + i) * bytes;
                if let Some(dst) = row.get_mut(at..at + bytes) {
                    dst.copy_from_slice(&word.to_le_bytes()[..bytes]);
                }
            }
        }
        Format::Mono { lit } => {
            for (i, px) in src.chunks_exact(3).enumerate() {
                let x = x0 + i;
                let on = super::lit(px);
                if let Some(byte) = row.get_mut(x / 8) {
                    let bit = 1u8 << (x % 8);
                    if on == lit {
                        *byte |= bit;
                    } else {
                        *byte &= !bit;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(bpp: u32, r: (u32, u32), g: (u32, u32), b: (u32, u32)) -> VarInfo {
        let f = |(offset, length)| Bitfield { offset, length, msb_right: 0 };
        VarInfo { bits_per_pixel: bpp, red: f(r), green: f(g), blue: f(b), ..VarInfo::default() }
    }

    fn fix(visual: u32) -> FixInfo {
        // SAFETY: an all-zero fb_fix_screeninfo is a valid value of this plain C struct.
        let mut f: FixInfo = unsafe { std::mem::zeroed() };
        f.visual = visual;
        f
    }

    #[test]
    fn kernel_struct_sizes_match_linux_fb_h() {
        assert_eq!(std::mem::size_of::<VarInfo>(), 160);
        assert_eq!(std::mem::size_of::<FixInfo>(), if cfg!(target_pointer_width = "64") { 80 } else { 68 });
    }

    #[test]
    fn common_pixel_formats_convert_exactly() {
        let px = [0xff, 0x80, 0x10, 0x00, 0x00, 0xff];
        // RGB565 (SPI TFTs, many HDMI consoles at 16 bpp).
        let rgb565 = format_of(&var(16, (11, 5), (5, 6), (0, 5)), &fix(2)).unwrap();
        let mut row = [0u8; 6];
        write_row(rgb565, &px, &mut row, 1);
        let want = (0x1fu16 << 11 | 0x20 << 5 | 0x02).to_le_bytes();
        assert_eq!(&row[2..4], &want);
        assert_eq!(&row[4..6], &0x001fu16.to_le_bytes());
        // XRGB8888 (the Pi's and Jetson's 32 bpp consoles, vfb).
        let xrgb = format_of(&var(32, (16, 8), (8, 8), (0, 8)), &fix(2)).unwrap();
        let mut row = [0u8; 8];
        write_row(xrgb, &px, &mut row, 0);
        assert_eq!(row, [0x10, 0x80, 0xff, 0, 0xff, 0, 0, 0]);
        // BGR888, 24 bpp.
        let bgr = format_of(&var(24, (0, 8), (8, 8), (16, 8)), &fix(2)).unwrap();
        let mut row = [0u8; 6];
        write_row(bgr, &px, &mut row, 0);
        assert_eq!(row, [0xff, 0x80, 0x10, 0x00, 0x00, 0xff]);
        // 1 bpp OLEDs (ssd130x): lit pixels are 1s in MONO10.
        let mono = format_of(&var(1, (0, 1), (0, 1), (0, 1)), &fix(FB_VISUAL_MONO10)).unwrap();
        let mut row = [0u8; 1];
        write_row(mono, &[255, 255, 255, 0, 0, 0, 200, 200, 200], &mut row, 0);
        assert_eq!(row[0], 0b101);
    }

    #[test]
    fn unsupported_modes_are_refused_with_what_to_do() {
        let e = format_of(&var(8, (0, 8), (0, 8), (0, 8)), &fix(2)).unwrap_err();
        assert!(e.contains("8 bits per pixel") && e.contains("fbset"), "{e}");
        let mut planar = fix(2);
        planar.kind = 1;
        assert!(format_of(&var(16, (11, 5), (5, 6), (0, 5)), &planar).is_err());
        let err = |p: &str| Fbdev::open(Path::new(p)).err().unwrap_or_default();
        assert!(err("/dev/null").contains("not a framebuffer"), "{}", err("/dev/null"));
        assert!(err("/nonexistent/fb9").contains("cannot open"));
    }
}
