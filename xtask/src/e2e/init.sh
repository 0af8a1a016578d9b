#!/bin/sh
# Stand-in for Talos's init in edgeimage's end-to-end boot test (`cargo xtask e2e` packs it
# into the initramfs as /init). It reads what Talos's init would read from the disk image and
# prints one "EDGEIMAGE-E2E ..." line per fact on the console, then powers the VM off.

/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Keep kernel messages (except panics) from splitting our lines.
dmesg -n 1

m() { echo "EDGEIMAGE-E2E $*"; }
hexof() { od -An -tx1 -v | tr -d ' \n'; }

m "start: $(uname -r)"
m "cmdline: $(cat /proc/cmdline)"

while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod.ko" || m "insmod-failed: $mod"
done </etc/e2e-modules

# find_part NAME: the block device whose GPT partition name is NAME.
find_part() {
  for u in /sys/class/block/*/uevent; do
    if grep -qx "PARTNAME=$1" "$u"; then
      sed -n 's/^DEVNAME=//p' "$u"
      return 0
    fi
  done
  return 1
}

# Disks appear asynchronously: poll up to 20 s.
i=0
esp=
meta=
while [ $i -lt 100 ]; do
  esp=$(find_part EFI)
  meta=$(find_part META)
  [ -n "$esp" ] && [ -n "$meta" ] && break
  usleep 200000
  i=$((i + 1))
done
m "block: $(ls /sys/class/block | tr '\n' ' ')"

# rd_u32 DEV OFFSET: big-endian u32 as decimal.
rd_u32() {
  v=$(dd if="$1" bs=1 skip="$2" count=4 2>/dev/null | hexof)
  echo $((0x${v:-0}))
}

if [ -z "$esp" ]; then
  m "esp: none (no partition named EFI)"
else
  # FAT volume label: at 0x47 in a FAT32 boot sector, 0x2b in FAT12/16.
  if [ "$(dd if=/dev/$esp bs=1 skip=82 count=5 2>/dev/null)" = "FAT32" ]; then
    lab=$(dd if=/dev/$esp bs=1 skip=71 count=11 2>/dev/null | tr -d ' ')
  else
    lab=$(dd if=/dev/$esp bs=1 skip=43 count=11 2>/dev/null | tr -d ' ')
  fi
  mkdir -p /mnt/esp
  if mount -t vfat -o ro "/dev/$esp" /mnt/esp; then
    m "esp: $esp label=EFI fslabel=$lab files=$(ls /mnt/esp/EFI/Linux | tr '\n' ',' | sed 's/,$//')"
    m "esp-boot: files=$(ls /mnt/esp/EFI/boot | tr '\n' ',' | sed 's/,$//')"
    if [ -f /mnt/esp/loader/loader.conf ]; then
      m "esp-loader.conf: $(tr '\n' '|' </mnt/esp/loader/loader.conf)"
    fi
    umount /mnt/esp
  else
    m "esp: $esp label=EFI fslabel=$lab mount-failed"
  fi
fi

if [ -z "$meta" ]; then
  m "meta: none (no partition named META)"
else
  dev=/dev/$meta
  m "meta: $meta size=$(($(cat /sys/class/block/$meta/size) * 512))"
  magic=$(rd_u32 "$dev" 0)
  if [ "$magic" != "$((0x5a4b3c2d))" ]; then
    m "meta: bad magic $(printf %08x "$magic")"
  else
    off=4
    n=0
    lim=$((262144 - 36))
    while [ $((off + 8)) -le $lim ]; do
      tag=$(rd_u32 "$dev" $off)
      [ "$tag" -eq 0 ] && break
      len=$(rd_u32 "$dev" $((off + 4)))
      if [ $((off + 8 + len)) -gt $lim ]; then
        m "meta: record $(printf '0x%02x' "$tag") overruns the block"
        break
      fi
      key=$(printf '0x%02x' "$tag")
      m "meta $key=$(dd if="$dev" bs=1 skip=$((off + 8)) count="$len" 2>/dev/null)"
      m "meta-hex $key=$(dd if="$dev" bs=1 skip=$((off + 8)) count="$len" 2>/dev/null | hexof)"
      off=$((off + 8 + len))
      n=$((n + 1))
    done
    m "meta-count: $n"
  fi
fi

# What systemd-boot and the stub told the kernel (optional: needs efivarfs).
ev=/sys/firmware/efi/efivars
if [ -d /sys/firmware/efi ] && mount -t efivarfs efivarfs $ev 2>/dev/null; then
  for v in LoaderInfo StubInfo LoaderDevicePartUUID; do
    f=$(ls $ev/$v-* 2>/dev/null | head -n 1)
    [ -n "$f" ] && m "efivar $v=$(dd if="$f" bs=1 skip=4 2>/dev/null | tr -d '\000')"
  done
fi

m "done"
sync
poweroff -f
# Not reached unless poweroff failed.
echo o >/proc/sysrq-trigger
sleep 5
