//! A 128x64 SSD1306 OLED over I2C (the common 0.96" module), driven by the `ssd1306` crate
//! through linux-embedded-hal's `/dev/i2c-N`. It shows the `mono` view; a whole frame takes about
//! 25 ms on a 400 kHz bus, so the loop hands it over on a thread of its own ([`super::Threaded`]).

use std::path::Path;

use embedded_hal::i2c::I2c;
use ssd1306::mode::BufferedGraphicsMode;
use ssd1306::prelude::*;
use ssd1306::{I2CDisplayInterface, Ssd1306};

use super::{MemoryFramebuffer, Panel};

/// The panel on an I2C bus.
pub struct Oled<I: I2c> {
    dev: Ssd1306<I2CInterface<I>, DisplaySize128x64, BufferedGraphicsMode<DisplaySize128x64>>,
}

impl<I: I2c + Send> Oled<I> {
    /// Initialises the panel at `address` on `i2c` and clears it.
    pub fn new(i2c: I, address: u8) -> Result<Self, String> {
        let interface = I2CDisplayInterface::new_custom_address(i2c, address);
        let mut dev =
            Ssd1306::new(interface, DisplaySize128x64, DisplayRotation::Rotate0).into_buffered_graphics_mode();
        dev.init().map_err(|e| format!("the SSD1306 at I2C address {address:#04x} does not answer: {e:?}"))?;
        Ok(Self { dev })
    }
}

/// Opens `/dev/i2c-N` and the panel at `address` on it.
pub fn open(bus: &Path, address: u8) -> Result<Oled<linux_embedded_hal::I2cdev>, String> {
    let i2c = linux_embedded_hal::I2cdev::new(bus).map_err(|e| {
        format!("cannot open I2C bus {}: {e} (enable I2C: `dtparam=i2c_arm=on` on a Pi; group `i2c`)", bus.display())
    })?;
    Oled::new(i2c, address)
}

impl<I: I2c + Send> Panel for Oled<I> {
    fn show(&mut self, fb: &MemoryFramebuffer) -> Result<(), String> {
        let (w, h) = (fb.width.min(128), fb.height.min(64));
        for y in 0..h {
            for x in 0..w {
                let o = ((y * fb.width + x) * 3) as usize;
                let p = &fb.pixels[o..o + 3];
                self.dev.set_pixel(x, y, super::lit(p));
            }
        }
        self.dev.flush().map_err(|e| format!("SSD1306: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_hal::i2c::{ErrorType, Operation};

    /// An I2C bus that records what is written to each address.
    #[derive(Default)]
    struct Bus(Vec<(u8, Vec<u8>)>);

    impl ErrorType for Bus {
        type Error = core::convert::Infallible;
    }

    impl I2c for Bus {
        fn transaction(&mut self, address: u8, ops: &mut [Operation<'_>]) -> Result<(), Self::Error> {
            for op in ops {
                if let Operation::Write(bytes) = op {
                    self.0.push((address, bytes.to_vec()));
                }
            }
            Ok(())
        }
    }

    #[test]
    fn a_lit_pixel_reaches_the_panel_in_its_page_layout() {
        let mut oled = Oled::new(Bus::default(), 0x3d).unwrap();
        let mut fb = MemoryFramebuffer::new(128, 64);
        // Pixel (5, 10): page 1 (rows 8..16), column 5, bit 2.
        let o = (10 * 128 + 5) * 3;
        fb.pixels[o..o + 3].copy_from_slice(&[255, 255, 255]);
        oled.show(&fb).unwrap();
        let bus = oled.dev.release().release();
        assert!(bus.0.iter().all(|(a, _)| *a == 0x3d), "everything to the panel's address");
        // Data transfers start with the 0x40 control byte; the frame is 8 pages of 128 bytes.
        let data: Vec<u8> = bus.0.iter().filter(|(_, b)| b[0] == 0x40).flat_map(|(_, b)| b[1..].to_vec()).collect();
        assert_eq!(data.len(), 1024);
        assert_eq!(data[128 + 5], 1 << 2);
        assert_eq!(data.iter().filter(|&&b| b != 0).count(), 1, "nothing else lit");
    }
}
