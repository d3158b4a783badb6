#!/usr/bin/env bash
# The hardware stage: runs the real `anovit` binary in a small qemu VM against real kernel
# drivers behind the real uAPIs: `vivid` (V4L2 virtual camera), `gpio-sim` (simulated GPIO chip,
# built here out of tree) and `v4l2loopback` (chosen images fed through V4L2). The checks themselves
# are in scripts/vm/init.sh (the VM's /init); this script builds what they need from Debian
# packages, boots the VM under TCG and turns its verdict into the exit status.
#
#   scripts/vm-test.sh [--keep]     (root, or the packages below already installed)
#
# Everything it builds lives in target/vm (rebuilt when missing). Timeouts on every step.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=${ANOVIT_VM_DIR:-$root/target/vm}
start=$(date +%s)
mkdir -p "$work"
say() { echo "== vm: $*"; }

# 1. Debian packages: qemu, busybox, v4l-utils (v4l2-ctl), kernel headers and build tools,
#    libclang (bindgen generates the V4L2 bindings).
. scripts/debs.sh
need_debs vm qemu-system-x86 busybox-static v4l-utils cpio kmod linux-headers-amd64 make gcc xz-utils libclang-dev

# 2. The kernel that matches the installed headers: image and modules from its .deb (not
#    installed, so no initramfs generation on the host), source of the same version for gpio-sim.
headers=$(dpkg-query -W -f='${Depends}' linux-headers-amd64 | grep -o 'linux-headers-[0-9][^ ,]*-amd64 (= [^)]*)' | head -1)
kpkg=${headers%% *}; kver=${kpkg#linux-headers-}
debver=$(echo "$headers" | sed 's/.*(= \(.*\))/\1/')
kroot=$work/kernel-$kver
if [ ! -f "$kroot/boot/vmlinuz-$kver" ]; then
    say "fetching linux-image-$kver $debver"
    rm -rf "$kroot" && mkdir -p "$kroot/debs"
    (cd "$kroot/debs" && timeout 300 apt-get download -q "linux-image-$kver=$debver" "linux-source-${kver%%.0-*}=$debver" v4l2loopback-dkms 2>&1 | grep -v "^W: Download is performed unsandboxed" || true)
    dpkg-deb -x "$kroot"/debs/linux-image-*.deb "$kroot"
fi
[ -f "$kroot/boot/vmlinuz-$kver" ] || { echo "vm stage: no kernel image for $kver" >&2; exit 1; }

# 3. Out-of-tree modules against the headers: gpio-sim (no Debian kernel builds it) and
#    v4l2loopback (Debian ships it as DKMS source).
mods=$work/modules-$kver
if [ ! -f "$mods/gpio-sim.ko" ] || [ ! -f "$mods/v4l2loopback.ko" ]; then
    say "building gpio-sim and v4l2loopback for $kver"
    rm -rf "$mods" && mkdir -p "$mods/src" "$mods/gpio-sim" "$mods/loop"
    srcdeb=$(ls "$kroot"/debs/linux-source-*.deb)
    dpkg-deb --fsys-tarfile "$srcdeb" | tar -x -C "$mods/src" --wildcards '*.tar.xz'
    tarball=$(ls "$mods"/src/usr/src/linux-source-*.tar.xz)
    top=$(basename "$tarball" .tar.xz)
    tar -xJf "$tarball" -C "$mods/src" "$top/drivers/gpio/gpio-sim.c" "$top/drivers/gpio/gpiolib.h" "$top/kernel/irq/irq_sim.c"
    cp "$mods/src/$top"/drivers/gpio/{gpio-sim.c,gpiolib.h} "$mods/src/$top/kernel/irq/irq_sim.c" "$mods/gpio-sim/"
    # irq_to_desc() is not exported to modules; generic_handle_irq() does the same here.
    sed -i 's/handle_simple_irq(irq_to_desc(irqnum))/generic_handle_irq(irqnum)/' "$mods/gpio-sim/irq_sim.c"
    grep -q 'generic_handle_irq(irqnum)' "$mods/gpio-sim/irq_sim.c" || { echo "vm stage: irq_sim.c patch did not apply" >&2; exit 1; }
    printf 'obj-m := gpio-sim.o\ngpio-sim-y := gpio-sim-core.o irq_sim.o\n' > "$mods/gpio-sim/Kbuild"
    mv "$mods/gpio-sim/gpio-sim.c" "$mods/gpio-sim/gpio-sim-core.c"
    dpkg-deb -x "$kroot"/debs/v4l2loopback-dkms_*.deb "$mods/src"
    cp "$mods"/src/usr/src/v4l2loopback-*/*.[ch] "$mods/loop/"
    echo 'obj-m := v4l2loopback.o' > "$mods/loop/Kbuild"
    for d in gpio-sim loop; do
        timeout 300 make -s -C "/usr/src/linux-headers-$kver" M="$mods/$d" modules >"$mods/$d.log" 2>&1 ||
            { cat "$mods/$d.log"; echo "vm stage: building $d failed" >&2; exit 1; }
    done
    cp "$mods/gpio-sim/gpio-sim.ko" "$mods/loop/v4l2loopback.ko" "$mods/"
    rm -rf "$mods/src"
fi

# 4. The binary under test: the tests' build plus the V4L2 camera (`--features hw-v4l`; tract
#    is not rebuilt), without debug info, with the shared libraries it links.
say "building anovit --features hw-v4l"
timeout 1200 cargo build --release --quiet --features hw-v4l
bin=$root/target/release/anovit

# 5. The VM's root file system.
say "assembling the initramfs"
rootfs=$work/rootfs
rm -rf "$rootfs" && mkdir -p "$rootfs"/{bin,etc,proc,sys,dev,tmp,models,data,lib/modules}
cp /bin/busybox "$rootfs/bin/busybox"
for t in $("$rootfs/bin/busybox" --list); do [ "$t" = busybox ] || ln -sf busybox "$rootfs/bin/$t"; done
objcopy --strip-debug "$bin" "$rootfs/bin/anovit"
cp "$(command -v v4l2-ctl)" "$rootfs/bin/v4l2-ctl"
for b in "$bin" "$(command -v v4l2-ctl)"; do
    for lib in $(ldd "$b" | grep -o '/[^ ]*'); do
        mkdir -p "$rootfs$(dirname "$lib")" && cp -L "$lib" "$rootfs$lib"
    done
done
# Modules: the kernel's own tree plus ours, resolved with their dependencies in load order.
mkdir -p "$kroot/lib/modules/$kver/extra" && cp "$mods/gpio-sim.ko" "$mods/v4l2loopback.ko" "$kroot/lib/modules/$kver/extra/"
depmod -b "$kroot" "$kver"
for m in configfs vivid gpio-sim v4l2loopback vfb; do
    modprobe -d "$kroot" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}' > "$rootfs/lib/modules/$m.order"
    while read -r ko; do
        dest="$rootfs/lib/modules/${ko#"$kroot"/lib/modules/}"
        mkdir -p "$(dirname "$dest")" && cp "$ko" "$dest"
        sed -i "s|$ko|/lib/modules/${ko#"$kroot"/lib/modules/}|" "$rootfs/lib/modules/$m.order"
    done < "$rootfs/lib/modules/$m.order"
done
cp -r models/demo-f32 "$rootfs/models/"
cp scripts/vm/*.toml "$rootfs/etc/"
install -m 755 scripts/vm/init.sh "$rootfs/init"
# Known parts for the feeding check: good and defective synthetic parts the model never saw, and
# the verdicts and scores the image-folder source gives them (same binary, same model).
timeout 120 "$bin" synth --out "$work/synth" --seed 99 --train 0 --test-good 2 --test-per-defect 1 --size 256 >/dev/null
mkdir -p "$rootfs/data/feed"
for d in good scratch hole; do cp -r "$work/synth/test/$d" "$rootfs/data/feed/"; done
(cd "$rootfs" && find data/feed -name '*.png' | sort | sed 's|^|/|') > "$rootfs/data/feed.list"
timeout 120 "$bin" run --folder "$rootfs/data/feed" --model models/demo-f32 --events "$rootfs/data/feed-folder.jsonl" -q >/dev/null
(cd "$rootfs" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initramfs.gz"
say "initramfs $(du -h "$work/initramfs.gz" | cut -f1), prepared in $(( $(date +%s) - start )) s"

# 6. Boot. KVM here is often a paravirtual flavour that stock kernels do not run on: TCG.
log=$work/console.log
say "booting (TCG); console log: $log"
set +e
timeout "${ANOVIT_VM_TIMEOUT:-420}" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 \
    -kernel "$kroot/boot/vmlinuz-$kver" -initrd "$work/initramfs.gz" \
    -append "console=ttyS0 panic=-1 quiet loglevel=4${ANOVIT_VM_ONLY:+ vmcheck=$ANOVIT_VM_ONLY}" \
    -nographic -no-reboot -monitor none -serial "file:$log" \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 </dev/null
code=$?
set -e
grep -E '^(vm-check|VM-)' "$log" || true
# init writes 0 for pass, 1 for fail: qemu exits with (value << 1) | 1.
if [ $code -eq 1 ] && grep -q '^VM-PASS' "$log"; then
    say "PASS in $(( $(date +%s) - start )) s"
    exit 0
fi
echo "== vm: FAIL (qemu exit $code$([ $code = 124 ] && echo ': timed out')); last console lines:"
tail -40 "$log"
exit 1
