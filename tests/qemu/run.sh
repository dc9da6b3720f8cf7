#!/usr/bin/env bash
# The engine on a real kernel: boots Debian's Linux under QEMU (TCG) with QEMU's VT-d
# or AMD-Vi model and two `edu` DMA devices, runs `iommu-live` (the `vtd` or `amdvi`
# driver and handover) in the guest, starts a DMA and kexecs into the same kernel,
# adopts in the new one.
#
#   tests/qemu/run.sh vtd [legacy|scalable-ss|scalable-fs|all]    (default: all)
#   tests/qemu/run.sh amdvi [v1|v2|all]                           (default: all)
#
# AMD-Vi runs on `-device amd-iommu,pt=off`. QEMU 10.0 never writes the AMD-Vi event
# log: the checks that need an event print `NOT-CHECKABLE ON QEMU:` and are listed in
# the summary, never counted as passed. v2 (guest tables) runs only when the unit's
# EFR has GTSup; otherwise the mode is reported as not run.
#
# Installs what it needs from Debian packages (root, apt). Work files go to
# target/qemu/ (override with QEMU_WORK). Each boot runs under `timeout`
# (QEMU_TIMEOUT seconds, default 420). Exits 0 only when every mode's serial log holds
# every expected PASS line and no FAIL line.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
arch=${1:-}
modes=${2:-all}
case $arch:$modes in
    vtd:all) modes="legacy scalable-ss scalable-fs" ;;
    vtd:legacy | vtd:scalable-ss | vtd:scalable-fs) ;;
    amdvi:all) modes="v1 v2" ;;
    amdvi:v1 | amdvi:v2) ;;
    vtd:* | amdvi:*) echo "unknown $arch mode $modes" >&2; exit 2 ;;
    *)
        echo "usage: $0 vtd [legacy|scalable-ss|scalable-fs|all]" >&2
        echo "       $0 amdvi [v1|v2|all]" >&2
        exit 2
        ;;
esac
work=${QEMU_WORK:-$root/target/qemu}
boot_timeout=${QEMU_TIMEOUT:-420}
mkdir -p "$work"
export DEBIAN_FRONTEND=noninteractive

# Reserved range (the same in both kernels): 64 MiB at 768 MiB of a 1 GiB guest.
mem_base=0x30000000
mem_size=64M
# The preserved and the unpreserved edu device.
dev_a=0000:00:04.0
dev_b=0000:00:05.0

apt_updated=
apt_install() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq >/dev/null
        apt_updated=1
    fi
    apt-get install -y -qq "$@" >/dev/null
}

echo "== tools"
# x-flts (first-stage tables in scalable mode) needs QEMU 10; Debian 12 has 7.2, its
# backports 10.0.
qemu_major() {
    qemu-system-x86_64 --version 2>/dev/null | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p'
}
if [ "$(qemu_major || true)" = "" ] || [ "$(qemu_major)" -lt 10 ]; then
    if . /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ]; then
        echo "deb http://deb.debian.org/debian bookworm-backports main" \
            >/etc/apt/sources.list.d/iommu-live-backports.list
        apt_updated=
        apt_install -t bookworm-backports qemu-system-x86
    else
        apt_install qemu-system-x86
    fi
fi
qemu-system-x86_64 --version | head -1
[ "$(qemu_major)" -ge 10 ] || { echo "FAIL: QEMU $(qemu_major) is older than 10 (x-flts)"; exit 1; }
dpkg -s busybox-static >/dev/null 2>&1 || apt_install busybox-static
command -v kexec >/dev/null 2>&1 || apt_install kexec-tools
command -v cpio >/dev/null 2>&1 || apt_install cpio

# Debian's kernel, unpacked from its package (linux-image-amd64 names the current one).
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$kpkg" ] || { [ -n "$apt_updated" ] || { apt-get update -qq >/dev/null; apt_updated=1; }
    kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'); }
kdir=$work/kernel/$kpkg
if ! ls "$kdir"/boot/vmlinuz-* >/dev/null 2>&1; then
    mkdir -p "$work/kernel"
    (cd "$work/kernel" && rm -f "${kpkg}"_*.deb && apt-get download -o APT::Sandbox::User=root "$kpkg" >/dev/null)
    dpkg -x "$work/kernel/${kpkg}"_*.deb "$kdir"
fi
vmlinuz=$(ls "$kdir"/boot/vmlinuz-* | head -1)
echo "kernel: $vmlinuz"

echo "== iommu-live (static, x86_64-unknown-linux-musl)"
target=x86_64-unknown-linux-musl
rustup target list --installed 2>/dev/null | grep -qx $target || rustup target add $target >/dev/null
(cd "$root" && cargo build --locked --release -q -p iommu-live --target $target)
live_bin=$root/target/$target/release/iommu-live

echo "== initramfs"
rd=$work/initrd
rm -rf "$rd"
mkdir -p "$rd"/{bin,sbin,dev,proc,sys,tmp}
cp /bin/busybox "$rd/bin/busybox"
cp "$live_bin" "$rd/bin/iommu-live"
kexec_bin=$(command -v kexec)
cp "$kexec_bin" "$rd/sbin/kexec"
# kexec's shared libraries and loader, at the paths it was linked against.
for lib in $(ldd "$kexec_bin" | grep -o '/[^ ]*'); do
    mkdir -p "$rd$(dirname "$lib")"
    cp -L "$lib" "$rd$lib"
done
cat >"$rd/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mode= mem= blob= arch=
for w in \$(cat /proc/cmdline); do
    case \$w in
        ilive_arch=*) arch=\${w#*=} ;;
        ilive_mode=*) mode=\${w#*=} ;;
        ilive_mem=*) mem=\${w#*=} ;;
        ilive_blob=*) blob=\${w#*=} ;;
    esac
done
args="--mode \$mode --mem \$mem --preserved $dev_a --other $dev_b"
# VT-d: run-old, run-new, status, dump; AMD-Vi: the same with the prefix amdvi-.
pre=
[ "\$arch" = amdvi ] && pre=amdvi-
dump="iommu-live \${pre}dump --mem \$mem"
if [ -z "\$blob" ]; then
    echo "== old kernel (\$mode)"
    iommu-live \${pre}status
    iommu-live \${pre}run-old \$args >/tmp/old.log
    rc=\$?
    cat /tmp/old.log
    blob=\$(sed -n 's/^BLOB=//p' /tmp/old.log)
    if [ \$rc -ne 0 ] || [ -z "\$blob" ]; then
        echo "FAIL: run-old exited \$rc"
        reboot -f
    fi
    \$dump || reboot -f
    if ! kexec -s -l /vmlinuz --initrd=/inner.cpio.gz --command-line="\$(cat /proc/cmdline) ilive_blob=\$blob"; then
        echo "FAIL: kexec -s -l"
        reboot -f
    fi
    echo "PASS: kexec loaded, blob \$blob on the new command line"
    iommu-live start-dma --preserved $dev_a || reboot -f
    kexec -e
    echo "FAIL: kexec -e returned"
    reboot -f
fi
echo "== new kernel (\$mode), blob \$blob"
iommu-live \${pre}run-new \$args --blob \$blob
echo "ILIVE-DONE rc=\$?"
iommu-live \${pre}status
\$dump
reboot -f
INIT
chmod +x "$rd/init"
# The new kernel's initramfs: the same files without the kernel and itself.
(cd "$rd" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/inner.cpio.gz")
cp "$work/inner.cpio.gz" "$rd/inner.cpio.gz"
cp "$vmlinuz" "$rd/vmlinuz"
(cd "$rd" && find . | cpio -o -H newc --quiet | gzip -1 >"$work/outer.cpio.gz")

# PASS lines each kernel must print (both arches), then the fault checks: PASS for
# VT-d; for AMD-Vi, whose faults are events QEMU never logs, PASS or NOT-CHECKABLE.
expected_old=(
    "bring-up"
    "attach $dev_a"
    "attach $dev_b"
    "DMA read then write through 4K pages"
    "DMA write through the 2M page"
    "DMA write through the high IOVA"
    "DMA read through the read-only page"
    "DMA write to the read-only page changed nothing"
    "other device: DMA through the 1G page"
    "prepare:"
    "KHO blob written"
    "freeze:"
    "dump: iommu-inspect/dump/v2"
    "kexec loaded"
    "DMA in flight:"
)
expected_new=(
    "KHO blob at"
    "adopt"
    "translation stayed on"
    "verify:"
    "DMA in flight across the kexec landed through the handed-over tables"
    "DMA read then write through the adopted tables"
    "DMA write through the adopted high IOVA"
    "unpreserved device: its DMA write changed nothing"
    "finish:"
    "after finish: DMA through a new mapping of the adopted domain"
    "after finish: the other device's DMA read and write through its new domain"
    "dump: iommu-inspect/dump/v2"
)
faults_old=(
    "no fault so far"
    "DMA write to the read-only page faulted"
    "no other fault"
)
faults_new=(
    "no fault recorded across the kexec"
    "no fault from the preserved device"
    "unpreserved device: its DMA faulted"
    "no fault after finish"
)
fault_kind=pass
if [ "$arch" = amdvi ]; then
    expected_old+=("AMD-Vi unit")
    fault_kind=events
fi

# Prints what of `$2...` is missing from the text `$1` ("PASS: x", or for event
# checks "NOT-CHECKABLE ON QEMU: x"); returns 1 if anything is.
check_lines() {
    local text=$1 where=$2 kind=$3 e bad=0
    shift 3
    for e in "$@"; do
        if grep -qF "PASS: $e" <<<"$text"; then
            continue
        fi
        if [ "$kind" = events ] && grep -qF "NOT-CHECKABLE ON QEMU: $e" <<<"$text"; then
            continue
        fi
        echo "missing in the $where kernel: PASS: $e"
        bad=1
    done
    return $bad
}

failed=0
for mode in $modes; do
    case $arch:$mode in
        vtd:legacy) iommu="intel-iommu,aw-bits=48" ;;
        vtd:scalable-ss) iommu="intel-iommu,aw-bits=48,x-scalable-mode=on" ;;
        vtd:scalable-fs) iommu="intel-iommu,aw-bits=48,x-scalable-mode=on,x-flts=on" ;;
        # pt=off: with QEMU's default (pt=on) edu DMA never reaches the model.
        amdvi:*) iommu="amd-iommu,pt=off" ;;
    esac
    log=$work/serial-$arch-$mode.log
    rm -f "$log"
    echo "== $arch $mode: $iommu (serial: $log)"
    start=$(date +%s)
    rc=0
    timeout "$boot_timeout" qemu-system-x86_64 -M q35 -accel tcg -m 1G -smp 1 \
        -nographic -nic none -monitor none -serial "file:$log" -no-reboot \
        -device "$iommu" \
        -device edu,addr=04.0,dma_mask=0xffffffffffffffff \
        -device edu,addr=05.0,dma_mask=0xffffffffffffffff \
        -kernel "$vmlinuz" -initrd "$work/outer.cpio.gz" \
        -append "console=ttyS0 loglevel=4 acpi=off nokaslr memmap=${mem_size}\$${mem_base} iomem=relaxed panic=-1 ilive_arch=$arch ilive_mode=$mode ilive_mem=${mem_base}:${mem_size}" \
        </dev/null >"$work/qemu-$arch-$mode.out" 2>&1 || rc=$?
    echo "qemu exited $rc after $(($(date +%s) - start)) s"
    if unsupported=$(grep -m1 "^UNSUPPORTED:" "$log"); then
        # Reported, not passed: the unit lacks what the mode needs.
        echo "$arch $mode: NOT RUN: the unit does not support it: ${unsupported#UNSUPPORTED: }"
        continue
    fi
    missing=0
    old_part=$(sed -n '/== old kernel/,/== new kernel/p' "$log")
    new_part=$(sed -n '/== new kernel/,$p' "$log")
    check_lines "$old_part" old pass "${expected_old[@]}" || missing=1
    check_lines "$new_part" new pass "${expected_new[@]}" || missing=1
    check_lines "$old_part" old $fault_kind "${faults_old[@]}" || missing=1
    check_lines "$new_part" new $fault_kind "${faults_new[@]}" || missing=1
    grep -q "ILIVE-DONE rc=0" "$log" || { echo "missing: ILIVE-DONE rc=0"; missing=1; }
    if [ "$arch" = amdvi ]; then
        # The base read from the unit's PCI capability block is QEMU's AMDVI_BASE_ADDR.
        grep -qF "capability block gives the register base 0xfed80000" <<<"$old_part" \
            || { echo "missing: the base 0xfed80000 from the amd-iommu capability block"; missing=1; }
        # The live dumps show the preserved device's DTE translating in this mode.
        for part in "$old_part" "$new_part"; do
            grep -A4 -F "\"bdf\": \"$dev_a\"" <<<"$part" | grep -qF "\"translation\": \"$mode\"" \
                || { echo "missing: $dev_a translating ($mode) in a live dump"; missing=1; }
        done
    else
        # The live dumps name the preserved device in both kernels.
        for part in "$old_part" "$new_part"; do
            grep -qF "\"bdf\": \"$dev_a\"" <<<"$part" || { echo "missing: $dev_a in a live dump"; missing=1; }
        done
    fi
    if grep -q "FAIL:" "$log"; then
        grep "FAIL:" "$log"
        missing=1
    fi
    if [ $missing -eq 0 ]; then
        echo "$arch $mode: PASS ($(grep -c 'PASS:' "$log") checks)"
        if grep -q "NOT-CHECKABLE ON QEMU:" "$log"; then
            echo "$arch $mode: not checkable on QEMU ($(grep -c 'NOT-CHECKABLE ON QEMU:' "$log"), not counted as passed):"
            grep "NOT-CHECKABLE ON QEMU:" "$log" | sed 's/^/    /'
        fi
    else
        echo "$arch $mode: FAIL (serial log: $log; last lines below)"
        tail -n 30 "$log"
        failed=1
    fi
done
exit $failed
