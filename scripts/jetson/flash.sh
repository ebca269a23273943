#!/usr/bin/env bash
# Flash a Jetson developer kit with NVIDIA's L4T BSP tools (run on the x86-64 Ubuntu host).
#
#   scripts/jetson/flash.sh --board {orin-nano,orin-nx,agx-orin,xavier-nx} --bsp DIR
#                           [--storage {nvme,emmc,sd}] [--dry-run]
#
# A thin wrapper: it picks NVIDIA's board configuration and flashing tool for the board and
# storage, checks what usually goes wrong first (not root, wrong folder, board not in
# recovery mode), then runs the one command from Linux_for_Tegra. See docs/jetson.md.
set -euo pipefail

readonly PROG="flash.sh"
readonly BOARDS="orin-nano orin-nx agx-orin xavier-nx"
readonly NVIDIA_VID="0955"

die() {
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    exit "${2:-1}"
}

usage() {
    cat <<'EOF'
usage: flash.sh --board BOARD --bsp DIR [--storage STORAGE] [--dry-run]

Flash a Jetson developer kit from an x86-64 Ubuntu host with NVIDIA's L4T BSP
(Linux_for_Tegra with the sample rootfs applied: apply_binaries.sh already run).

  --board BOARD      orin-nano  Jetson Orin Nano devkit        (default storage nvme; also sd)
                     orin-nx    Orin NX module on the Orin Nano devkit carrier (nvme)
                     agx-orin   Jetson AGX Orin devkit         (default storage emmc; also nvme)
                     xavier-nx  Jetson Xavier NX devkit, JetPack 5 only (default sd; also emmc)
  --bsp DIR          the folder holding Linux_for_Tegra/, or Linux_for_Tegra itself
  --storage STORAGE  nvme, emmc or sd (what the root file system goes on)
  --dry-run          print the commands and the checks, run nothing (no root needed)
  -h, --help         this text

Tools: NVMe and SD roots go through tools/kernel_flash/l4t_initrd_flash.sh (QSPI
bootloader plus the external device over USB); eMMC and the Xavier NX go through
flash.sh. Put the board in force-recovery mode first; lsusb must list it as 0955:xxxx.
EOF
}

# Configuration name, allowed storages (first = default) and recovery-mode USB product ids.
board_config() {
    case "$1" in
        orin-nano) CONFIG="jetson-orin-nano-devkit"; STORAGES="nvme sd"; USB_IDS="7523 7623" ;;
        orin-nx) CONFIG="jetson-orin-nano-devkit"; STORAGES="nvme"; USB_IDS="7323 7423" ;;
        agx-orin) CONFIG="jetson-agx-orin-devkit"; STORAGES="emmc nvme"; USB_IDS="7023 7223" ;;
        xavier-nx) CONFIG="jetson-xavier-nx-devkit"; STORAGES="sd emmc"; USB_IDS="7e19" ;;
        *) return 1 ;;
    esac
}

# Quote one argument the way a user would type it (plain words stay bare).
quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_./:+=,@%-]+$ ]]; then
        printf '%s' "$1"
    else
        printf "'%s'" "${1//\'/\'\\\'\'}"
    fi
}

join_quoted() {
    local out="" arg
    for arg in "$@"; do
        out+="${out:+ }$(quote "$arg")"
    done
    printf '%s' "$out"
}

# The Linux_for_Tegra folder of --bsp, or empty when there is none.
find_l4t() {
    local dir="$1"
    if [[ -f "$dir/Linux_for_Tegra/flash.sh" ]]; then
        (cd "$dir/Linux_for_Tegra" && pwd -P)
    elif [[ "$(basename "$dir")" == "Linux_for_Tegra" && -f "$dir/flash.sh" ]]; then
        (cd "$dir" && pwd -P)
    fi
}

# Partition layouts of the initrd flow: R36+ BSPs ship flash_l4t_t234_nvme.xml and a
# bootloader/generic tree; R35 BSPs use flash_l4t_external.xml and bootloader/t186ref.
initrd_layout() {
    local l4t="$1"
    if [[ -f "$l4t/tools/kernel_flash/flash_l4t_t234_nvme.xml" && -d "$l4t/bootloader/generic" ]]; then
        EXT_XML="tools/kernel_flash/flash_l4t_t234_nvme.xml"
        QSPI_XML="bootloader/generic/cfg/flash_t234_qspi.xml"
    else
        EXT_XML="tools/kernel_flash/flash_l4t_external.xml"
        QSPI_XML="bootloader/t186ref/cfg/flash_t234_qspi.xml"
    fi
}

# Fills CMD (an array) with the flashing command for BOARD/STORAGE, run from Linux_for_Tegra.
build_command() {
    local board="$1" storage="$2" l4t="$3"
    case "$board:$storage" in
        orin-nano:nvme | orin-nx:nvme | agx-orin:nvme | orin-nano:sd)
            local device="nvme0n1p1"
            [[ "$storage" == "sd" ]] && device="mmcblk1p1"
            initrd_layout "$l4t"
            CMD=(./tools/kernel_flash/l4t_initrd_flash.sh --external-device "$device"
                 -c "$EXT_XML" -p "-c $QSPI_XML" --showlogs --network usb0 "$CONFIG" internal)
            ;;
        agx-orin:emmc)
            CMD=(./flash.sh "$CONFIG" internal)
            ;;
        xavier-nx:sd)
            CMD=(./flash.sh "$CONFIG" mmcblk0p1)
            ;;
        xavier-nx:emmc)
            CONFIG="${CONFIG}-emmc"
            CMD=(./flash.sh "$CONFIG" mmcblk0p1)
            ;;
        *)
            return 1
            ;;
    esac
}

# Prints the matching "0955:xxxx" recovery id, or nothing; returns 2 when lsusb is missing.
recovery_device() {
    command -v lsusb >/dev/null 2>&1 || return 2
    local listing pid
    listing="$(lsusb 2>/dev/null || true)"
    for pid in $USB_IDS; do
        if grep -qi "ID ${NVIDIA_VID}:${pid}\b" <<<"$listing"; then
            printf '%s:%s' "$NVIDIA_VID" "$pid"
            return 0
        fi
    done
    return 0
}

main() {
    local board="" bsp="" storage="" dry_run=0
    while (($#)); do
        case "$1" in
            --board) (($# >= 2)) || die "--board needs a value: one of $BOARDS" 2; board="$2"; shift 2 ;;
            --board=*) board="${1#*=}"; shift ;;
            --bsp) (($# >= 2)) || die "--bsp needs a folder" 2; bsp="$2"; shift 2 ;;
            --bsp=*) bsp="${1#*=}"; shift ;;
            --storage) (($# >= 2)) || die "--storage needs a value: nvme, emmc or sd" 2; storage="$2"; shift 2 ;;
            --storage=*) storage="${1#*=}"; shift ;;
            --dry-run) dry_run=1; shift ;;
            -h | --help) usage; exit 0 ;;
            *) die "unknown argument '$1' (see --help)" 2 ;;
        esac
    done

    [[ -n "$board" ]] || die "--board is required: one of $BOARDS" 2
    board_config "$board" || die "unknown board '$board': choose one of $BOARDS" 2
    [[ -n "$storage" ]] || storage="${STORAGES%% *}"
    [[ " $STORAGES " == *" $storage "* ]] ||
        die "board $board cannot be flashed to '$storage' by this script: use one of ${STORAGES// /, }" 2
    [[ -n "$bsp" ]] || die "--bsp is required: the folder holding Linux_for_Tegra" 2
    [[ -d "$bsp" ]] || die "BSP folder not found: $bsp" 1

    local l4t
    l4t="$(find_l4t "$bsp")"
    [[ -n "$l4t" ]] || die "no Linux_for_Tegra/flash.sh under $bsp: extract the L4T BSP there first" 1

    build_command "$board" "$storage" "$l4t" || die "no flashing recipe for $board on $storage" 2
    if [[ "${CMD[0]}" == ./tools/* && ! -f "$l4t/${CMD[0]#./}" ]]; then
        die "$l4t has no ${CMD[0]#./}: this BSP is too old for initrd flashing" 1
    fi

    if ((dry_run)); then
        echo "dry run: nothing will be executed"
        echo "board: $board ($CONFIG), storage: $storage"
        echo "root check skipped (--dry-run)"
    elif ((EUID != 0)); then
        die "must run as root: sudo $0 --board $board --bsp $bsp --storage $storage" 1
    fi

    local found status=0
    found="$(recovery_device)" || status=$?
    local ids="${USB_IDS// /, }"
    if ((status == 2)); then
        ((dry_run)) || die "lsusb not found: sudo apt install usbutils" 1
        echo "recovery mode: not checked (lsusb not found)"
    elif [[ -z "$found" ]]; then
        ((dry_run)) || die "no $board in recovery mode (lsusb shows none of ${NVIDIA_VID}:{$ids}): hold REC while powering on" 1
        echo "recovery mode: not found (expected ${NVIDIA_VID}:{$ids}); the real run would stop here"
    else
        echo "recovery mode: found $found"
    fi

    if ((dry_run)); then
        echo "would run:"
        echo "  cd $(quote "$l4t")"
        echo "  sudo $(join_quoted "${CMD[@]}")"
        exit 0
    fi

    echo "+ cd $(quote "$l4t")"
    cd "$l4t"
    echo "+ $(join_quoted "${CMD[@]}")"
    exec "${CMD[@]}"
}

main "$@"
