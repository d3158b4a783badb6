//! GPIO character-device lines through linux-embedded-hal (feature `hw-gpio`).

use std::path::Path;

use embedded_hal::digital::PinState;
use linux_embedded_hal::gpio_cdev::{Chip, LineRequestFlags};
use linux_embedded_hal::CdevPin;

use crate::error::Error;

/// Requests `line` of `chip` as an output owned by `anovit`, starting at `initial`.
pub fn open_output(chip: &Path, line: u32, initial: PinState) -> Result<CdevPin, Error> {
    let err = |why: String| Error::Gpio { chip: chip.to_path_buf(), line, why };
    let mut c = Chip::new(chip).map_err(|e| err(format!("cannot open the chip: {e}")))?;
    let l = c.get_line(line).map_err(|e| err(format!("no such line: {e}")))?;
    let handle = l
        .request(LineRequestFlags::OUTPUT, u8::from(initial == PinState::High), "anovit-reject")
        .map_err(|e| err(format!("cannot request it as an output (is another program holding it?): {e}")))?;
    CdevPin::new(handle).map_err(|e| err(e.to_string()))
}
