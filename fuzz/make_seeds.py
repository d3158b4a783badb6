#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs into fuzz/seeds/<target>/ (committed; rerun after
changing a target's input layout). Needs Pillow: `.venv/bin/python fuzz/make_seeds.py`.
Inputs that once crashed a target (`crash-*`, copied from fuzz/artifacts/) are kept as they are."""

import io
import pathlib
import struct

from PIL import Image

FUZZ = pathlib.Path(__file__).resolve().parent
REPO = FUZZ.parent
SEEDS = FUZZ / "seeds"


def gradient(w, h, mode):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 255) // max(w - 1, 1), (y * 255) // max(h - 1, 1), (x * y * 7) % 256) for y in range(h) for x in range(w)])
    return img.convert(mode)


def encode(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def frame_convert():
    # [format, width, height, stride lo, stride hi, frame...]; format 0 YUYV, 1 RGB24, 2 GREY,
    # 3 MJPEG; width byte w gives 1 + w % 64 pixels (YUYV: 2 * (1 + w % 32)), height 1 + h % 64.
    def head(fmt, wbyte, hbyte, stride):
        return bytes([fmt, wbyte, hbyte]) + struct.pack("<H", stride)

    yuyv = bytes((i * 37) % 256 for i in range(16 * 4))  # 8x4, stride 16
    write("frame_convert", "yuyv-8x4", head(0, 3, 3, 16) + yuyv)
    rgb = bytes((i * 11) % 256 for i in range(16 * 3))  # 4x4 RGB, 16 bytes per row (4 padding)
    write("frame_convert", "rgb24-4x4-padded", head(1, 3, 3, 16) + rgb)
    write("frame_convert", "grey-8x8", head(2, 7, 7, 8) + bytes(range(0, 256, 4)))
    write("frame_convert", "mjpeg-16x8", head(3, 15, 7, 0) + encode(gradient(16, 8, "RGB"), "JPEG", quality=80))
    write("frame_convert", "mjpeg-8x8-grey", head(3, 7, 7, 0) + encode(gradient(8, 8, "L"), "JPEG", quality=80))
    write(
        "frame_convert",
        "mjpeg-16x16-420-progressive",
        head(3, 15, 15, 0) + encode(gradient(16, 16, "RGB"), "JPEG", quality=60, subsampling=2, progressive=True),
    )


def manifest():
    for m in sorted((REPO / "models").glob("*/manifest.json")):
        write("manifest", m.parent.name, m.read_bytes())


def board_profile():
    for b in sorted((REPO / "board").glob("*.toml")):
        write("board_profile", b.stem, b.read_bytes())
    host = (REPO / "board" / "host-demo.toml").read_text()
    write("board_profile", "ejector-clock", host + "\n[ejector]\ntravel_mm = 800.0\nlead_ms = 30\nbelt_mm_per_s = 500.0\n")
    write(
        "board_profile",
        "ejector-encoder",
        host + '\n[encoder]\nchip = "gpiochip0"\nline = 5\nedge = "both"\n'
        "[ejector]\ntravel_mm = 800.0\nlead_ms = 30\ncounts_per_mm = 2.5\n",
    )
    pi = (REPO / "board" / "raspberry-pi-5.toml").read_text()
    write("board_profile", "v4l2-trigger", pi + '\n[trigger]\nchip = "pinctrl-rp1"\nline = 4\nedge = "falling"\ndelay_ms = 15\n')


def replay_image():
    # [flags, file...]: bit 0 names the file .jpg (else .png), bit 1 replaces it before the decode
    # ([flags, len lo, len hi, first file (len bytes), second file]).
    png_rgb = encode(gradient(8, 8, "RGB"), "PNG")
    write("replay_image", "png-rgb", b"\x00" + png_rgb)
    write("replay_image", "png-grey", b"\x00" + encode(gradient(6, 4, "L"), "PNG"))
    write("replay_image", "png-rgba", b"\x00" + encode(gradient(4, 4, "RGBA"), "PNG"))
    write("replay_image", "png-palette", b"\x00" + encode(gradient(4, 4, "P"), "PNG"))
    write("replay_image", "png-16bit", b"\x00" + encode(gradient(4, 4, "I;16"), "PNG"))
    write("replay_image", "jpeg-rgb", b"\x01" + encode(gradient(8, 8, "RGB"), "JPEG", quality=75))
    write("replay_image", "jpeg-grey", b"\x01" + encode(gradient(8, 8, "L"), "JPEG", quality=75))
    second = encode(gradient(4, 16, "RGB"), "PNG")
    write("replay_image", "png-replaced", b"\x02" + struct.pack("<H", len(png_rgb)) + png_rgb + second)


def preprocess():
    # [model w, model h, flags, roi x y w h, mean rgb, std rgb, frames, (format w h)*, pixels...]
    pixels = bytes((i * 29) % 256 for i in range(256))
    common = bytes([128, 128, 128, 46, 46, 46])
    write("preprocess", "rgb-full", bytes([0, 0, 0, 0, 0, 0, 0]) + common + bytes([0, 0, 31, 31]) + pixels)
    write("preprocess", "grey-roi", bytes([1, 0, 3, 2, 2, 20, 12]) + common + bytes([0, 1, 23, 15]) + pixels)
    write(
        "preprocess",
        "mixed-sizes",
        bytes([0, 1, 0, 0, 0, 0, 0]) + common + bytes([2, 0, 7, 7, 2, 15, 9, 1, 63, 40]) + pixels,
    )


if __name__ == "__main__":
    frame_convert()
    manifest()
    board_profile()
    replay_image()
    preprocess()
    total = sum(f.stat().st_size for f in SEEDS.rglob("*") if f.is_file())
    print(f"{sum(1 for f in SEEDS.rglob('*') if f.is_file())} seeds, {total} bytes in {SEEDS}")
