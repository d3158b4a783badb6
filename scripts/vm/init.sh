#!/bin/sh
# /init of the VM built by scripts/vm-test.sh: loads the real drivers, runs the real `anovit`
# binary against them and asserts what it must do. Lines starting `vm-check:` are the report;
# `VM-PASS` / `VM-FAIL` and the isa-debug-exit port carry the verdict out.
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
fails=0
say() { echo "vm-check: $*"; }
ok() { say "ok   $*"; }
bad() { say "FAIL $*"; fails=$((fails + 1)); }
finish() {
    if [ "$fails" = 0 ]; then echo "VM-PASS"; v=0; else echo "VM-FAIL ($fails failed)"; v=1; fi
    # qemu's isa-debug-exit at port 0xf4 (244): qemu exits with (v << 1) | 1.
    printf "\\$(printf %o $v)" | dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
    poweroff -f
}
# Loads a module and its dependencies in the order modprobe resolved on the host; extra
# arguments go to the module itself (the last one).
load() {
    last=$(tail -n 1 "/lib/modules/$1.order")
    while read -r ko; do
        if [ "$ko" = "$last" ]; then insmod "$ko" $2; else insmod "$ko" 2>/dev/null; fi
    done < "/lib/modules/$1.order"
}
# Records every change of the reject, health and alarm lines (as gpio-sim sees them while
# anovit holds them) into $1, until /tmp/stop exists. Shell built-ins only: fast enough for pulses.
watch_lines() {
    prev=""
    while [ ! -e /tmp/stop ]; do
        read -r r < "$REJECT"
        read -r h < "$HEALTH"
        read -r x < "$ALARM"
        if [ "$r$h$x" != "$prev" ]; then echo "$r$h$x" >> "$1"; prev="$r$h$x"; fi
    done
}
VIVID_ARGS="n_devs=1 node_types=0x1 num_inputs=1 input_types=0x0"
# `vmcheck=1,3` on the kernel command line (ANOVIT_VM_ONLY=1,3 scripts/vm-test.sh) runs only
# those sections, for work on one of them.
only=$(sed -n 's/.*vmcheck=\([0-9,]*\).*/\1/p' /proc/cmdline)
run_section() { [ -z "$only" ] || echo ",$only," | grep -q ",$1,"; }

say "kernel $(uname -r), $(nproc) CPUs"
load configfs
load vivid "$VIVID_ARGS"
load gpio-sim
mount -t configfs none /sys/kernel/config
[ -e /dev/video0 ] && ok "vivid loaded: /dev/video0" || bad "vivid did not create /dev/video0"

# A gpio-sim chip "anovit-sim" with named lines, like a board's device tree would give.
g=/sys/kernel/config/gpio-sim/anovit
mkdir -p $g/bank0
echo 5 > $g/bank0/num_lines
echo anovit-sim > $g/bank0/label
i=0
for name in reject health trigger encoder alarm; do
    mkdir $g/bank0/line$i && echo $name > $g/bank0/line$i/name
    i=$((i + 1))
done
echo 1 > $g/live
sim=/sys/devices/platform/$(cat $g/dev_name)/$(cat $g/bank0/chip_name)
REJECT=$sim/sim_gpio0/value
HEALTH=$sim/sim_gpio1/value
ALARM=$sim/sim_gpio4/value
[ -e "$REJECT" ] && ok "gpio-sim chip $(cat $g/bank0/chip_name) live" || bad "gpio-sim chip did not come up"

# 1. Capture: YUYV, RGB24 and GREY at 640x480, at the rate set (vivid defaults to 5 fps here),
#    sequence numbers continuous.
run_section 1 && for fmt in yuyv rgb24 grey; do
    out=$(timeout 120 anovit camera --device vivid --format $fmt --size 640x480 --fps 10 --frames 40 2>&1)
    echo "$out" | sed 's/^/    /'
    line=$(echo "$out" | grep '^captured ')
    set -- $(echo "$line" | sed 's/[^0-9. ]/ /g; s/\.\./ /g')
    # captured N frames: FPS fps ..., sequence A..B, D dropped, O out of order, C corrupt, T timeouts, L lost
    if echo "$out" | grep -qi "$fmt 640x480 at 10.00 fps" && [ "$1" = 40 ] && [ $(($4 - $3)) = 39 ] &&
        [ "$5" = 0 ] && [ "$6" = 0 ] && [ "$7" = 0 ] && [ "$8" = 0 ] && [ "$9" = 0 ] &&
        awk -v f="$2" 'BEGIN { exit !(f > 9.5 && f < 10.5) }'; then
        ok "capture $fmt 640x480: 40 frames, $2 fps by driver timestamps (10 set), sequence $3..$4 continuous"
    else
        bad "capture $fmt 640x480: $line"
    fi
done

# 2. The inspection loop on vivid frames, with the lines read back through gpio-sim's sysfs while
#    anovit holds them. Health: up while frames arrive, down when the camera stalls (vivid drops
#    every buffer) or vanishes (vivid's disconnect: the node goes away like an unplugged USB
#    camera, and comes back once its last user closes it), up again after recovery (anovit
#    reopens it by name); judged on the recorded changes, so that short drops are not missed.
#    Reject: one pulse per reject verdict in the event log (NG, and FAULT while the camera is
#    stalled or gone), no pulse without one.
section2() {
    rm -f /tmp/stop
    watch_lines /tmp/lines2 &
    w=$!
    anovit run --board /etc/vivid.toml --model /models/demo-f32 --events /tmp/ev2.jsonl -q > /tmp/run2.log 2>&1 &
    a=$!
    mark() { echo "#$1" >> /tmp/lines2; }
    # Waits up to $3 s for the health line to read $2 in a change recorded after marker $1.
    seen() {
        n=0
        until awk -v m="#$1" -v v="$2" '$0 == m { f = 1; next } f && substr($0, 2, 1) == v { hit = 1 } END { exit !hit }' /tmp/lines2; do
            n=$((n + 1)); [ $n -gt $(($3 * 5)) ] && return 1; sleep 0.2
        done
    }
    step() { if seen "$1" "$2" "$3"; then ok "health $2 after $1"; else bad "health not $2 within $3 s after $1"; fi; }
    mark start
    step start 1 180
    mark stall
    v4l2-ctl -d /dev/video0 --set-ctrl percentage_of_dropped_buffers=100
    step stall 0 60
    sleep 4 # two more camera timeouts: faults in a row, for the alarm
    mark resume
    v4l2-ctl -d /dev/video0 --set-ctrl percentage_of_dropped_buffers=0
    step resume 1 60
    mark disconnect
    v4l2-ctl -d /dev/video0 --set-ctrl disconnect=1
    step disconnect 0 60
    mark reconnect
    step reconnect 1 60
    # Alarm: the stall's faults in a row raise it, the first judged part after clears it.
    if awk '$0 == "#stall" { f = 1; next } $0 == "#resume" { f = 0 } f && substr($0, 3, 1) == "1" { hit = 1 } END { exit !hit }' /tmp/lines2 &&
        grep -q "ALARM" /tmp/run2.log && grep -q "alarm cleared" /tmp/run2.log; then
        ok "alarm raised by the stall's repeated faults, cleared when parts were judged again"
    else
        bad "alarm: not raised during the stall or not cleared (changes: $(tr '\n' ' ' < /tmp/lines2))"
    fi
    # SIGTERM (how systemd stops the service): the part in hand is finished, then the lines go idle.
    mark stop
    kill -TERM $a
    wait $a
    rc=$?
    touch /tmp/stop; wait $w
    grep -E "health line|back|closing" /tmp/run2.log | sed 's/^/    /' | tail -n 8
    echo "    health/reject changes: $(tr '\n' ' ' < /tmp/lines2)"
    rejects=$(grep -c '"verdict":"\(NG\|FAULT\)"' /tmp/ev2.jsonl)
    parts=$(grep -c '"verdict"' /tmp/ev2.jsonl)
    pulses=$(awk '/^#/ { next } substr($0, 1, 1) == "1" && p != "1" { n++ } { p = substr($0, 1, 1) } END { print n + 0 }' /tmp/lines2)
    # A reject decided while the previous pulse (100 ms) is still on extends it: one visible pulse.
    want=$(sed -n 's/.*"decided_us":\([0-9]*\),.*"verdict":"\(NG\|FAULT\)".*/\1/p' /tmp/ev2.jsonl |
        awk 'NR == 1 || $1 - last > 100000 { n++ } { last = $1 } END { print n + 0 }')
    echo "    reject decisions (ms): $(sed -n 's/.*"decided_us":\([0-9]*\),.*"verdict":"\([A-Z]*\)".*/\1 \2/p' /tmp/ev2.jsonl | awk '{ printf "%s%.0f %s", (NR > 1 ? ", " : ""), $1 / 1000, $2 }')"
    if [ "$parts" -gt 0 ] && [ "$want" = "$pulses" ]; then
        ok "reject line: $parts parts, $rejects reject verdicts, $pulses pulses seen on gpio-sim ($want expected from the decision times)"
    else
        bad "reject line: $parts parts, $rejects reject verdicts, $pulses pulses seen on gpio-sim, $want expected from the decision times"
    fi
    final=$(grep 'camera dropped' /tmp/run2.log | tail -n 1)
    echo "    $final"
    if [ $rc = 0 ] && echo "$final" | grep -q 'reopened 1 ' && [ "$(tail -n 1 /tmp/lines2)" = 000 ]; then
        ok "SIGTERM: clean exit, final summary counts the reopen, reject idle, health and alarm down"
    else
        bad "SIGTERM: exit $rc, last lines $(tail -n 1 /tmp/lines2), summary: $final"
    fi
}
run_section 2 && section2

# 3. Chosen images through the real V4L2 path: `anovit feed` plays each into a v4l2loopback
#    device, `anovit run` inspects one frame of it; verdict and score must equal those of the
#    image-folder source for the same file (computed on the host by the same binary), and the
#    gpio-sim reject line must pulse once for NG and stay still for OK. Then as MJPEG (quality
#    95, decoded by the loop): the same verdicts, scores within 20 % (JPEG changes the pixels).
section3() {
    load v4l2loopback "devices=1 video_nr=9 card_label=anovit-feed"
    sed 's/^format = "rgb24"/format = "mjpeg"/' /etc/loopback.toml > /etc/loopback-mjpeg.toml
    verdict() { echo "$1" | sed -n 's/.*"verdict":"\([A-Z]*\)".*/\1/p'; }
    score() { echo "$1" | sed -n 's/.*"decided_us":[0-9]*,"score":\([^,]*\),.*/\1/p'; }
    # feed_check NAME PROFILE TOLERANCE [FEED ARGS]: every image of /data/feed.list (NAME "mjpeg":
    # the first and last only, one good and one defective part).
    feed_check() {
        name=$1; profile=$2; tol=$3; shift 3
        i=0; k=0
        rm -f /tmp/stop /tmp/lines3
        watch_lines /tmp/lines3 &
        w=$!
        while read -r img; do
            i=$((i + 1))
            if [ "$name" = mjpeg ] && [ $i != 1 ] && [ $i != 4 ]; then continue; fi
            k=$((k + 1))
            echo "#$i" >> /tmp/lines3
            rm -f /tmp/fed$i.jsonl
            anovit feed --device /dev/video9 --fps 5 "$@" "$img" < /dev/null > /tmp/feed$i.log 2>&1 &
            f=$!
            # The loopback reports the writer's format once it streams.
            n=0
            until grep -q feeding /tmp/feed$i.log; do n=$((n + 1)); [ $n -gt 300 ] && break; sleep 0.1; done
            sleep 1
            timeout 120 anovit run --board "$profile" --model /models/demo-f32 --parts 1 --events /tmp/fed$i.jsonl -q < /dev/null > /tmp/fedrun$i.log 2>&1
            kill -TERM $f; wait $f
            want=$(sed -n "${i}p" /data/feed-folder.jsonl)
            got=$(cat /tmp/fed$i.jsonl)
            wv=$(verdict "$want"); gv=$(verdict "$got"); ws=$(score "$want"); gs=$(score "$got")
            sleep 0.3 # the watcher catches up
            pulses=$(awk -v m="#$i" '$0 == m { f = 1; next } /^#/ { f = 0 } f && substr($0, 1, 1) == "1" && p != "1" { n++ } { p = substr($0, 1, 1) } END { print n + 0 }' /tmp/lines3)
            case $gv in NG) wp=1 ;; *) wp=0 ;; esac
            part="$(basename "$(dirname "$img")")/$(basename "$img")"
            if [ -n "$gv" ] && [ "$wv" = "$gv" ] && [ "$pulses" = "$wp" ] &&
                awk -v a="$ws" -v b="$gs" -v t="$tol" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= t * (a < 0 ? -a : a) + 1e-9) }'; then
                ok "fed $name $part: $gv, score $gs (folder source: $wv, $ws), $pulses reject pulse(s) on gpio-sim"
            else
                bad "fed $name $part: got $gv score $gs, folder source $wv score $ws, $pulses reject pulse(s) on gpio-sim"
                sed 's/^/    /' /tmp/fedrun$i.log /tmp/feed$i.log | tail -n 6
            fi
        done < /data/feed.list
        touch /tmp/stop; wait $w
        [ $k -gt 0 ] || bad "fed no $name images"
    }
    feed_check rgb24 /etc/loopback.toml 1e-4
    feed_check mjpeg /etc/loopback-mjpeg.toml 0.2 --mjpeg 95
}
run_section 3 && section3

# 4. Inputs with edge events, driven through gpio-sim's pulls as a sensor would: one part per
#    trigger edge (nothing inspected without one), every encoder edge counted.
section4() {
    TRIG=$sim/sim_gpio2/pull
    ENC=$sim/sim_gpio3/pull
    echo pull-down > $TRIG
    echo pull-down > $ENC
    anovit run --board /etc/trigger.toml --model /models/demo-f32 --parts 2 -q < /dev/null > /tmp/run4.log 2>&1 &
    a=$!
    n=0
    until grep -q "one part per" /tmp/run4.log; do n=$((n + 1)); [ $n -gt 600 ] && break; sleep 0.2; done
    sleep 3
    kill -0 $a 2>/dev/null && waiting=yes || waiting=no
    # 50 ms apart: gpio-sim's simulated interrupts coalesce when the pull flips faster than they run.
    for k in 1 2 3 4 5 6 7 8 9 10 11 12; do echo pull-up > $ENC; sleep 0.05; echo pull-down > $ENC; sleep 0.05; done
    for k in 1 2; do echo pull-up > $TRIG; sleep 0.3; echo pull-down > $TRIG; sleep 0.3; done
    n=0
    while kill -0 $a 2>/dev/null; do n=$((n + 1)); [ $n -gt 600 ] && kill -TERM $a; sleep 0.2; done
    wait $a
    rc=$?
    final=$(grep 'camera dropped' /tmp/run4.log | tail -n 1)
    echo "    $final"
    if [ "$waiting" = yes ] && [ $rc = 0 ] && echo "$final" | grep -q '^.*parts 2 .*triggers 2 skipped [0-9]* encoder 12$'; then
        ok "trigger: no part before the first edge, 2 edges -> 2 parts; encoder: 12 edges counted"
    else
        bad "trigger/encoder: waited without a trigger: $waiting, exit $rc, summary: $final"
    fi
}
run_section 4 && section4

# 5. The ejector, clocked by the encoder: two triggered parts are judged while the belt stands
#    still, so no pulse may come yet; then the belt moves, and each rejected part gets its pulse on
#    the real reject line once 5 encoder edges have passed.
section5() {
    TRIG=$sim/sim_gpio2/pull
    ENC=$sim/sim_gpio3/pull
    echo pull-down > $TRIG
    echo pull-down > $ENC
    rm -f /tmp/stop /tmp/lines5
    watch_lines /tmp/lines5 &
    w=$!
    # Not quiet: the per-part lines (flushed line by line) show when both verdicts are in.
    anovit run --board /etc/ejector.toml --model /models/demo-f32 --parts 2 --events /tmp/ev5.jsonl < /dev/null > /tmp/run5.log 2>&1 &
    a=$!
    n=0
    until grep -q "one part per" /tmp/run5.log; do n=$((n + 1)); [ $n -gt 600 ] && break; sleep 0.2; done
    for k in 1 2; do echo pull-up > $TRIG; sleep 0.3; echo pull-down > $TRIG; sleep 0.3; done
    n=0
    until [ "$(grep -c '^part ' /tmp/run5.log)" = 2 ]; do n=$((n + 1)); [ $n -gt 600 ] && break; sleep 0.2; done
    sleep 1
    before=$(awk 'substr($0, 1, 1) == "1" { n++ } END { print n + 0 }' /tmp/lines5)
    for k in 1 2 3 4 5 6 7 8; do echo pull-up > $ENC; sleep 0.05; echo pull-down > $ENC; sleep 0.05; done
    n=0
    while kill -0 $a 2>/dev/null; do n=$((n + 1)); [ $n -gt 300 ] && kill -TERM $a; sleep 0.2; done
    wait $a
    rc=$?
    touch /tmp/stop; wait $w
    rejects=$(grep -c '"verdict":"\(NG\|FAULT\)"' /tmp/ev5.jsonl)
    pulses=$(awk 'substr($0, 1, 1) == "1" && p != "1" { n++ } { p = substr($0, 1, 1) } END { print n + 0 }' /tmp/lines5)
    final=$(grep 'camera dropped' /tmp/run5.log | tail -n 1)
    echo "    $final"
    echo "    reject changes: $(tr '\n' ' ' < /tmp/lines5)"
    # The run ends once both parts are served: at the 5th edge or a little after.
    enc=$(echo "$final" | sed -n 's/.*encoder \([0-9]*\)$/\1/p')
    if [ $rc = 0 ] && [ "$before" = 0 ] && [ "${enc:-0}" -ge 5 ] && echo "$final" | grep -q 'ejector late 0 overflow 0' && [ "$rejects" -gt 0 ] && [ "$pulses" -ge 1 ] && [ "$pulses" -le "$rejects" ] &&
        [ "$(tail -n 1 /tmp/lines5 | cut -c1)" = 0 ]; then
        ok "ejector: $rejects reject verdict(s) held while the belt stood still, pulsed on the reject line after the encoder moved ($pulses pulse(s), back-to-back rejects merge)"
    else
        bad "ejector: exit $rc, pulses before the belt moved: $before, after: $pulses, reject verdicts: $rejects, summary: $final"
    fi
}
run_section 5 && section5

# 6. The status screen on a real framebuffer device: the kernel's virtual framebuffer (vfb) at
#    640x480, 32 bits RGBA. After the run, the screen memory read back through /dev/fb0 must hold
#    the last part's verdict colour in the view's panel (exactly, in the device's byte order),
#    black in the view's lower half, and nothing outside the view. An 8-bit palette mode is
#    refused at start with a message that says what to do.
section6() {
    load vfb "vfb_enable=1 videomemorysize=1228800 mode_option=640x480-32"
    fb=""
    for g in /sys/class/graphics/fb*; do
        [ "$(cat "$g/name" 2>/dev/null)" = "Virtual FB" ] && fb=/dev/${g##*/}
    done
    [ -n "$fb" ] || { bad "fbdev: vfb did not register a framebuffer"; return; }
    # The text console must not draw on it meanwhile.
    for v in /sys/class/vtconsole/vtcon*/bind; do echo 0 > "$v" 2>/dev/null; done
    sed "s|^device = .*|device = \"$fb\"|" /etc/fbdev.toml > /tmp/fbdev.toml
    px() { dd if="$fb" bs=4 skip=$(($2 * 640 + $1)) count=1 2>/dev/null | od -An -tu1 | tr -s ' ' | sed 's/^ //;s/ $//'; }
    before=$(px 400 300)
    anovit run --board /tmp/fbdev.toml --model /models/demo-f32 --parts 3 --events /tmp/ev6.jsonl -q > /tmp/run6.log 2>&1
    rc=$?
    last=$(tail -n 1 /tmp/ev6.jsonl | sed -n 's/.*"verdict":"\([A-Z]*\)".*/\1/p')
    case "$last" in OK) want="20 140 60 0" ;; NG) want="200 30 30 0" ;; *) want="220 140 0 0" ;; esac
    panel=$(px 2 60)
    below=$(px 300 230)
    outside=$(px 400 300)
    echo "    last verdict $last; panel pixel [$panel], view's lower half [$below], outside the view [$outside] (before [$before])"
    if [ $rc = 0 ] && [ "$panel" = "$want" ] && [ "$below" = "0 0 0 0" ] && [ "$outside" = "$before" ] && grep -q "display: $fb (640x480)" /tmp/run6.log; then
        ok "fbdev: the status view of the last part ($last) is on $fb in its RGBA byte order"
    else
        bad "fbdev: exit $rc, last verdict '$last', panel [$panel] (want [$want]), below [$below], outside [$outside]; $(tail -n 3 /tmp/run6.log)"
    fi
    rmmod vfb
    load vfb "vfb_enable=1 videomemorysize=1228800 mode_option=640x480-8"
    anovit run --board /tmp/fbdev.toml --model /models/demo-f32 --parts 1 -q > /tmp/run6b.log 2>&1
    rc=$?
    if [ $rc != 0 ] && grep -q "8 bits per pixel" /tmp/run6b.log && grep -q "fbset" /tmp/run6b.log; then
        ok "fbdev: an 8-bit palette mode is refused at start, saying what to set"
    else
        bad "fbdev: 8-bit mode: exit $rc, $(tail -n 2 /tmp/run6b.log)"
    fi
}
run_section 6 && section6

finish
