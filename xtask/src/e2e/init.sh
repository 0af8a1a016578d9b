#!/bin/sh
# Stand-in for Talos's init in edgeimage's end-to-end boot test (`cargo xtask e2e` packs it
# into the initramfs as /init). It reads what Talos's init would read from the disk image and
# prints one "EDGEIMAGE-E2E ..." line per fact on the console, then powers the VM off:
# the command line, the ESP, META; the system extensions listed in /extensions.yaml, mounted
# as Talos's machined mounts them (loop + squashfs, one overlay over a stand-in for
# rootfs.sqsh, the last listed on top); the machine configuration from each offline source
# (embedded extension, a filesystem labelled metal-iso, talos.config.inline=); and finally
# the edgehostlet extension service's entrypoint, if an extension put it there.
# Anything that goes wrong prints "EDGEIMAGE-E2E error: ...", which fails the test.

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
# The command line as `edgeimage inspect` shows it: each talos.config.inline= value (a machine
# configuration) replaced by its SHA-256, so the log never holds the configuration.
shown=
set -f
for a in $(cat /proc/cmdline); do
  case "$a" in
    talos.config.inline=*)
      a="talos.config.inline=<redacted:sha256=$(printf %s "${a#talos.config.inline=}" | sha256sum | cut -d ' ' -f 1)>"
      ;;
  esac
  shown="$shown${shown:+ }$a"
done
set +f
m "cmdline: $shown"

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
if [ -n "$esp" ]; then
  disk=$(basename "$(readlink -f "/sys/class/block/$esp/..")")
  m "logical-block-size: $disk=$(cat "/sys/class/block/$disk/queue/logical_block_size")"
fi

# rd_u32 DEV OFFSET: big-endian u32 as decimal.
rd_u32() {
  v=$(dd if="$1" bs=1 skip="$2" count=4 2>/dev/null | hexof)
  echo $((0x${v:-0}))
}

# fat_label DEV: the volume label in a FAT boot sector (0x47 in FAT32, 0x2b in FAT12/16).
fat_label() {
  if [ "$(dd if="$1" bs=1 skip=82 count=5 2>/dev/null)" = "FAT32" ]; then
    dd if="$1" bs=1 skip=71 count=11 2>/dev/null | tr -d ' '
  else
    dd if="$1" bs=1 skip=43 count=11 2>/dev/null | tr -d ' '
  fi
}

if [ -z "$esp" ]; then
  m "esp: none (no partition named EFI)"
else
  lab=$(fat_label /dev/$esp)
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

# What the stub and the loader say about the boot profile (systemd >= 257).
if [ -d $ev ]; then
  for v in StubProfile LoaderEntrySelected; do
    f=$(ls $ev/$v-* 2>/dev/null | head -n 1)
    [ -n "$f" ] && m "efivar $v=$(dd if="$f" bs=1 skip=4 2>/dev/null | tr -d '\000')"
  done
fi
m "cmdline-length: $(tr -d '\n' </proc/cmdline | wc -c)"

# --- The base root filesystem: rootfs.sqsh, as Talos's init mounts it ----------------------
mkdir -p /base
mount -t squashfs -o ro,loop /rootfs.sqsh /base 2>/tmp/err ||
  m "error: mount-failed: squashfs /rootfs.sqsh: $(cat /tmp/err)"

# --- System extensions, mounted as machined's mountRootFS does ---------------------------
# /extensions.yaml (yaml.v3 layout: "    - image: N.sqsh", metadata keys at 8 spaces) lists
# the layers; each is loop-mounted read-only, and one overlay stacks them over the base
# (rootfs.sqsh), the last listed on top: overlayfs takes the leftmost lowerdir as the top
# layer.
if [ -f /extensions.yaml ]; then
  awk '
    function flush() { if (img != "") print img "|" name "|" ver }
    /^    - image: / { flush(); img = $0; sub(/^    - image: /, "", img); name = ""; ver = ""; next }
    /^        name: / { name = $0; sub(/^        name: /, "", name); next }
    /^        version: / { ver = $0; sub(/^        version: /, "", ver); next }
    END { flush() }
  ' /extensions.yaml | tr -d "\"'" >/tmp/layers
  lower=/base
  n=0
  while IFS='|' read -r img name ver; do
    m "extension: name=$name version=$ver"
    d=/layers/$n
    mkdir -p "$d"
    if [ ! -f "/$img" ]; then
      m "error: /extensions.yaml lists $img, which the initramfs does not hold"
    elif mount -t squashfs -o ro,loop "/$img" "$d" 2>/tmp/err; then
      m "layer: $n image=$img files=$(find "$d" -type f | wc -l)"
      lower="$d:$lower"
    else
      m "error: mount-failed: squashfs /$img ($name): $(cat /tmp/err)"
    fi
    n=$((n + 1))
  done </tmp/layers
  m "extensions: layers=$n"
  mkdir -p /sysroot /usr/local
  if mount -t overlay overlay -o "ro,nosuid,nodev,lowerdir=$lower" /sysroot 2>/tmp/err; then
    svc=$(sed -n 's/^name: *//p' /sysroot/usr/local/etc/containers/edgehostlet.yaml 2>/dev/null)
    m "overlay: lowerdir=$lower service-definition=${svc:-none} base=$(cat /sysroot/usr/local/etc/e2e-base 2>/dev/null)"
    mount -o bind /sysroot/usr/local /usr/local 2>/tmp/err ||
      m "error: mount-failed: bind /sysroot/usr/local: $(cat /tmp/err)"
    # A module only an extension carries, loaded by name through the combined modules.dep
    # (busybox modprobe reads /lib/modules/$(uname -r)/modules.dep): its dependencies come
    # from the base root filesystem.
    kv=$(uname -r)
    if [ -d "/sysroot/usr/lib/modules/$kv/extras" ]; then
      mount -o bind /sysroot/usr/lib/modules /lib/modules 2>/tmp/err ||
        m "error: mount-failed: bind /sysroot/usr/lib/modules: $(cat /tmp/err)"
      m "modules-dep: $(grep '^extras/8021q.ko:' "/lib/modules/$kv/modules.dep")"
      if modprobe 8021q 2>/tmp/err; then
        m "modprobe: 8021q loaded=$(grep -c '^8021q ' /proc/modules) with=$(for x in mrp garp stp llc; do grep -q "^$x " /proc/modules && printf '%s,' $x; done)"
      else
        m "error: modprobe 8021q: $(cat /tmp/err)"
      fi
    fi
  else
    m "error: mount-failed: overlay lowerdir=$lower: $(cat /tmp/err)"
  fi
fi

# --- Machine configuration from each offline source ----------------------------------------
# set_hostname FILE: what Talos does with machine.network.hostname: /etc/hostname, which the
# edgehostlet service definition bind-mounts into its container.
set_hostname() {
  h=$(sed -n 's/^ *hostname: *//p' "$1" | head -n 1 | tr -d "\"' ")
  [ -n "$h" ] && echo "$h" >/etc/hostname
}

cfg=/usr/local/etc/talos/config.yaml
if [ -f "$cfg" ]; then
  m "config sha256=$(sha256sum "$cfg" | cut -d ' ' -f 1)"
  set_hostname "$cfg"
fi

iso=$(find_part metal-iso)
if [ -n "$iso" ]; then
  lab=$(fat_label /dev/$iso)
  mkdir -p /mnt/metal-iso
  if mount -t vfat -o ro "/dev/$iso" /mnt/metal-iso 2>/tmp/err; then
    if [ -f /mnt/metal-iso/config.yaml ]; then
      m "metal-iso config sha256=$(sha256sum /mnt/metal-iso/config.yaml | cut -d ' ' -f 1) fslabel=$lab partition=$iso bylabel=$(findfs LABEL=metal-iso 2>/dev/null)"
      set_hostname /mnt/metal-iso/config.yaml
    else
      m "error: metal-iso: no config.yaml at the root of $iso (files: $(ls /mnt/metal-iso | tr '\n' ' '))"
    fi
  else
    m "error: mount-failed: vfat /dev/$iso (metal-iso): $(cat /tmp/err)"
  fi
elif grep -q 'talos.config=metal-iso' /proc/cmdline; then
  m "error: talos.config=metal-iso on the command line, but no partition named metal-iso"
fi

# talos.config.inline: every occurrence, concatenated (busybox has no zstd: report the digest
# of the base64 text and the first bytes it decodes to).
set -f
inl=
for a in $(cat /proc/cmdline); do
  case "$a" in
    talos.config.inline=*) inl="$inl${a#talos.config.inline=}" ;;
  esac
done
set +f
if [ -n "$inl" ]; then
  m "inline sha256=$(printf %s "$inl" | sha256sum | cut -d ' ' -f 1) chars=${#inl} magic=$(printf %s "$inl" | base64 -d 2>/dev/null | head -c 4 | hexof)"
fi

[ -f /etc/hostname ] && m "hostname: $(cat /etc/hostname)"

# --- The image cache --------------------------------------------------------------------------
# The IMAGECACHE partition (ext4, read-only, as Talos mounts it), each tag resolved the way
# Talos's registry resolves it: the tag file's SHA-256 names digest/sha256-<hex>, which must
# hold the same bytes; an index names manifests by digest, one of which must be there; the
# manifest's config and layers must be in blob/, each blob's SHA-256 equal to its name.
cache=$(find_part IMAGECACHE)
if [ -n "$cache" ]; then
  mkdir -p /mnt/cache
  if mount -t ext4 -o ro "/dev/$cache" /mnt/cache; then
    ok=0
    bad=0
    for tagf in $(find /mnt/cache/manifests -type f -path '*/reference/*' | sort); do
      dir=${tagf%/reference/*}
      ref="${dir#/mnt/cache/manifests/}:${tagf##*/}"
      d=$(sha256sum "$tagf" | cut -d ' ' -f 1)
      if ! cmp -s "$tagf" "$dir/digest/sha256-$d"; then
        m "cache-bad: $ref: no digest/sha256-$d with the tag's bytes"
        bad=$((bad + 1))
        continue
      fi
      man=$tagf
      if grep -q '"manifests"' "$tagf"; then
        man=
        for md in $(grep -o 'sha256:[0-9a-f]\{64\}' "$tagf"); do
          f="$dir/digest/sha256-${md#sha256:}"
          if [ -f "$f" ] && [ "$(sha256sum "$f" | cut -d ' ' -f 1)" = "${md#sha256:}" ]; then
            man=$f
            break
          fi
        done
      fi
      if [ -z "$man" ]; then
        m "cache-bad: $ref: no manifest of its index is there"
        bad=$((bad + 1))
        continue
      fi
      blobs=0
      missing=
      for bd in $(grep -o 'sha256:[0-9a-f]\{64\}' "$man"); do
        f="/mnt/cache/blob/sha256-${bd#sha256:}"
        if [ "$(sha256sum "$f" 2>/dev/null | cut -d ' ' -f 1)" = "${bd#sha256:}" ]; then
          blobs=$((blobs + 1))
        else
          missing="$missing ${bd#sha256:}"
        fi
      done
      if [ -n "$missing" ]; then
        m "cache-bad: $ref: blobs missing or damaged:$missing"
        bad=$((bad + 1))
      else
        m "cache-image: $ref blobs=$blobs"
        ok=$((ok + 1))
      fi
    done
    m "image-cache: images=$ok incomplete=$bad"
    umount /mnt/cache
  else
    m "image-cache: mount-failed"
    dmesg | grep -i -e ext4 -e jbd2 -e "$cache" | tail -n 8 | while read -r l; do m "cache-dmesg: $l"; done
  fi
fi

# --- The extension service ------------------------------------------------------------------
# Its entrypoint is relative to the container root; busybox sh stands in for the container's.
svc=/usr/local/lib/containers/edgehostlet
if [ -f "$svc/edgehostlet" ]; then
  (cd "$svc" && sh ./edgehostlet) || m "error: edgehostlet exited with $?"
fi

m "done"
sync
poweroff -f
# Not reached unless poweroff failed.
echo o >/proc/sysrq-trigger
sleep 5
