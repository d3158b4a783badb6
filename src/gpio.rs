//! GPIO character-device lines through linux-embedded-hal (feature `hw-gpio`): chips and lines
//! chosen by path, label, offset or name, so profiles survive chip renumbering.

use embedded_hal::digital::PinState;
use linux_embedded_hal::gpio_cdev::{chips, Chip, LineRequestFlags};
use linux_embedded_hal::CdevPin;

pub use crate::board::LineSpec;
use crate::error::Error;

/// Opens a chip by device path (`/dev/gpiochip0`), device name (`gpiochip0`) or label
/// (`pinctrl-bcm2711`, a gpio-sim chip's label).
fn find_chip(spec: &str) -> Result<Chip, String> {
    if spec.starts_with('/') {
        return Chip::new(spec).map_err(|e| format!("cannot open the chip: {e}"));
    }
    let mut seen = Vec::new();
    for chip in chips().map_err(|e| format!("cannot list GPIO chips: {e}"))?.flatten() {
        if chip.name() == spec || chip.label() == spec {
            return Ok(chip);
        }
        seen.push(format!("{} ({})", chip.name(), chip.label()));
    }
    Err(format!(
        "no chip with that name or label; found: {}",
        if seen.is_empty() { "none".into() } else { seen.join(", ") }
    ))
}

/// Requests a line as an output owned by `anovit` (shown as `consumer` in `gpioinfo`), starting
/// at `initial`.
pub fn open_output(chip: &str, line: &LineSpec, initial: PinState, consumer: &str) -> Result<CdevPin, Error> {
    let err = |why: String| Error::Gpio { chip: chip.to_string(), line: line.to_string(), why };
    let mut c = find_chip(chip).map_err(err)?;
    let offset = match line {
        LineSpec::Offset(n) => *n,
        LineSpec::Name(name) => c
            .lines()
            .find(|l| l.info().ok().and_then(|i| i.name().map(|n| n == name)).unwrap_or(false))
            .map(|l| l.offset())
            .ok_or_else(|| err(format!("the chip has no line named {name:?}")))?,
    };
    let l = c.get_line(offset).map_err(|e| err(format!("no such line: {e}")))?;
    let handle = l
        .request(LineRequestFlags::OUTPUT, u8::from(initial == PinState::High), consumer)
        .map_err(|e| err(format!("cannot request it as an output (is another program holding it?): {e}")))?;
    CdevPin::new(handle).map_err(|e| err(e.to_string()))
}
