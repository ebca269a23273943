#!/usr/bin/env bash
# Flash a Jetson developer kit with NVIDIA's L4T BSP tools (run on the x86-64 Ubuntu host).
#
#   scripts/jetson/flash.sh --board BOARD --bsp DIR [--storage STORAGE] [--super] [--dry-run]
#
# A thin wrapper: it reads the L4T release from the BSP folder itself, picks the command that
# NVIDIA's Quick Start for that release gives for the board and storage, refuses what NVIDIA
# does not support, checks what usually goes wrong first (not root, wrong folder, board not
# in recovery mode), then runs that one command from Linux_for_Tegra. See docs/flashing.md.
set -euo pipefail

readonly PROG="flash.sh"
readonly BOARDS="orin-nano orin-nx agx-orin xavier-nx agx-xavier agx-thor"
readonly NVIDIA_VID="0955"
readonly COVERED="R35.2.1 to R35.6.x (JetPack 5.1.x), R36.3 (JetPack 6.0), R36.4.x (JetPack 6.1/6.2.x), R38.x (JetPack 7)"
readonly SUPER_CONFIG="jetson-orin-nano-devkit-super"

# NVIDIA's pages the recipes below come from. Every page's flashing steps are in its section
# "To Flash the Jetson Developer Kit Operating Software"; the configuration names are in its
# table "Jetson Modules and Configurations".
readonly QS_SECTION="To Flash the Jetson Developer Kit Operating Software"
readonly QS_R35="https://docs.nvidia.com/jetson/archives/r35.6.1/DeveloperGuide/IN/QuickStart.html"
readonly QS_R36_3="https://docs.nvidia.com/jetson/archives/r36.3/DeveloperGuide/IN/QuickStart.html"
readonly QS_R36_4="https://docs.nvidia.com/jetson/archives/r36.4/DeveloperGuide/IN/QuickStart.html"
readonly QS_R36_4_3="https://docs.nvidia.com/jetson/archives/r36.4.3/DeveloperGuide/IN/QuickStart.html"
readonly QS_R38="https://docs.nvidia.com/jetson/archives/r38.2/DeveloperGuide/IN/QuickStart.html"

die() {
    printf '%s: error: %s\n' "$PROG" "$1" >&2
    exit "${2:-1}"
}

usage() {
    cat <<'EOF'
usage: flash.sh --board BOARD --bsp DIR [--storage STORAGE] [--super] [--dry-run]

Flash a Jetson developer kit from an x86-64 Ubuntu host with NVIDIA's L4T BSP
(Linux_for_Tegra with the sample rootfs applied: apply_binaries.sh already run).
The L4T release is read from Linux_for_Tegra/nv_tegra/nv_tegra_release, and the
command is the one NVIDIA's Quick Start for that release gives.

  --board BOARD      orin-nano   Jetson Orin Nano devkit         (nvme [default], sd)
                     orin-nx     Orin NX module on the Orin Nano devkit carrier (nvme)
                     agx-orin    Jetson AGX Orin devkit          (emmc [default], nvme)
                     xavier-nx   Jetson Xavier NX devkit         (sd [default], emmc)
                     agx-xavier  Jetson AGX Xavier devkit        (emmc)
                     agx-thor    Jetson AGX Thor devkit          (nvme)
  --bsp DIR          the folder holding Linux_for_Tegra/, or Linux_for_Tegra itself
  --storage STORAGE  nvme, emmc or sd: where the root file system goes
  --super            Orin Nano / Orin NX only: flash the jetson-orin-nano-devkit-super
                     configuration (JetPack 6.2 "Super" power modes); needs R36.4.3+
  --dry-run          print the release, the recipe and the command; run nothing
  -h, --help         this text

Releases: R35.2.1-R35.6.x (JetPack 5.1.x): orin-nano and orin-nx from R35.4.1,
agx-orin on emmc, xavier-nx, agx-xavier. R36.3 and R36.4.x (JetPack 6.0-6.2.x):
orin-nano, orin-nx, agx-orin. R38.x (JetPack 7): agx-thor. Anything else is
refused. Put the board in force-recovery mode first; lsusb must list it as
0955:xxxx.
EOF
}

# Configuration name, allowed storages (first = default) and recovery-mode USB product ids.
board_config() {
    case "$1" in
        orin-nano) CONFIG="jetson-orin-nano-devkit"; STORAGES="nvme sd"; USB_IDS="7523 7623" ;;
        orin-nx) CONFIG="jetson-orin-nano-devkit"; STORAGES="nvme"; USB_IDS="7323 7423" ;;
        agx-orin) CONFIG="jetson-agx-orin-devkit"; STORAGES="emmc nvme"; USB_IDS="7023 7223" ;;
        xavier-nx) CONFIG="jetson-xavier-nx-devkit"; STORAGES="sd emmc"; USB_IDS="7e19" ;;
        agx-xavier) CONFIG="jetson-agx-xavier-devkit"; STORAGES="emmc"; USB_IDS="7019" ;;
        agx-thor) CONFIG="jetson-agx-thor-devkit"; STORAGES="nvme"; USB_IDS="7026" ;;
        *) return 1 ;;
    esac
}

# Quote one argument the way a user would type it: plain words bare, words with spaces in
# double quotes (as NVIDIA's pages write -p "-c ..."), anything else in single quotes.
quote() {
    if [[ "$1" =~ ^[A-Za-z0-9_./:+=,@%-]+$ ]]; then
        printf '%s' "$1"
    elif [[ "$1" =~ ^[A-Za-z0-9_./:+=,@%\ -]+$ ]]; then
        printf '"%s"' "$1"
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

# Release from nv_tegra/nv_tegra_release ("# R36 (release), REVISION: 4.3, GCID: ...") or,
# when that file is absent, from nv_tegra/bsp_version (BSP_BRANCH=36 / BSP_MAJOR=4 /
# BSP_MINOR=3, the file NVIDIA's own flash.sh reads). Sets REL_MAJOR, REL_A, REL_B, REL_FROM.
read_release() {
    local rel="$1/nv_tegra/nv_tegra_release" ver="$1/nv_tegra/bsp_version"
    local line="" from_rel="" from_ver=""
    if [[ -e "$rel" ]]; then
        [[ -f "$rel" && -r "$rel" ]] || die "cannot read the L4T release file $rel" 1
        IFS= read -r line <"$rel" || true
        if [[ "$line" =~ ^#[[:space:]]*R([0-9]+)[[:space:]]*\(release\),[[:space:]]*REVISION:[[:space:]]*([0-9]+)\.([0-9]+) ]]; then
            from_rel="${BASH_REMATCH[1]} ${BASH_REMATCH[2]} ${BASH_REMATCH[3]}"
        else
            die "$rel does not name an L4T release (first line: '${line:0:60}'; expected '# R36 (release), REVISION: 4.3, ...')" 1
        fi
    fi
    if [[ -f "$ver" && -r "$ver" ]]; then
        local branch="" major="" minor="" key value
        while IFS='=' read -r key value; do
            value="${value//[[:space:]\"]/}"
            case "$key" in
                BSP_BRANCH) branch="$value" ;;
                BSP_MAJOR) major="$value" ;;
                BSP_MINOR) minor="$value" ;;
            esac
        done <"$ver"
        if [[ "$branch" =~ ^[0-9]+$ && "$major" =~ ^[0-9]+$ && "$minor" =~ ^[0-9]+$ ]]; then
            from_ver="$branch $major $minor"
        fi
    fi
    if [[ -n "$from_rel" && -n "$from_ver" && "$from_rel" != "$from_ver" ]]; then
        die "the BSP names two releases: nv_tegra/nv_tegra_release says R${from_rel// /.} but nv_tegra/bsp_version says R${from_ver// /.} (mixed BSP folders?)" 1
    fi
    if [[ -n "$from_rel" ]]; then
        REL_FROM="nv_tegra/nv_tegra_release"
        read -r REL_MAJOR REL_A REL_B <<<"$from_rel"
    elif [[ -n "$from_ver" ]]; then
        REL_FROM="nv_tegra/bsp_version"
        read -r REL_MAJOR REL_A REL_B <<<"$from_ver"
    else
        die "cannot tell the L4T release: $rel is missing (extract the whole Jetson_Linux BSP archive)" 1
    fi
    # Strip leading zeros so the arithmetic below reads them as decimal.
    REL_MAJOR=$((10#$REL_MAJOR)); REL_A=$((10#$REL_A)); REL_B=$((10#$REL_B))
}

release_name() { printf 'R%s.%s.%s' "$REL_MAJOR" "$REL_A" "$REL_B"; }

# A number that orders releases: R36.4.3 -> 360403.
release_key() { printf '%d' $((REL_MAJOR * 10000 + REL_A * 100 + REL_B)); }

jetpack_name() {
    local key
    key="$(release_key)"
    case "$REL_MAJOR" in
        35) if ((key >= 350201)); then printf 'JetPack 5.1.x'; else printf 'JetPack 5.0.x'; fi ;;
        36)
            if ((key >= 360403)); then printf 'JetPack 6.2.x'
            elif ((key >= 360400)); then printf 'JetPack 6.1'
            elif ((key >= 360300)); then printf 'JetPack 6.0'
            else printf 'JetPack 6 developer preview'
            fi ;;
        38) printf 'JetPack 7' ;;
        *) printf 'JetPack ?' ;;
    esac
}

# Refuses (exit 2) a board/storage/release/--super combination NVIDIA's recipes do not cover.
check_supported() {
    local board="$1" storage="$2" super="$3" key rel
    key="$(release_key)"
    rel="L4T $(release_name) ($(jetpack_name))"
    case "$REL_MAJOR" in
        35 | 36 | 38) ;;
        *) die "$rel is not covered by this script: it carries NVIDIA's recipes for $COVERED" 2 ;;
    esac
    case "$board:$REL_MAJOR" in
        xavier-nx:36 | agx-xavier:36 | xavier-nx:38 | agx-xavier:38)
            die "$board cannot be flashed with $rel: NVIDIA supports Jetson Xavier only up to R35 (JetPack 5.1.x); use an R35 BSP" 2 ;;
        orin-nano:38 | orin-nx:38 | agx-orin:38)
            die "$board cannot be flashed with $rel: R38 supports only Jetson Thor, and NVIDIA points Orin users to R36.4.x (JetPack 6.2.x)" 2 ;;
        agx-thor:35 | agx-thor:36)
            die "$board cannot be flashed with $rel: Jetson AGX Thor needs L4T R38 (JetPack 7)" 2 ;;
    esac
    if ((REL_MAJOR == 35 && key < 350201)) || ((REL_MAJOR == 36 && (key < 360300 || key >= 360500))); then
        die "$rel is not covered by this script: it carries NVIDIA's recipes for $COVERED" 2
    fi
    if [[ "$board" == orin-nano || "$board" == orin-nx ]] && ((REL_MAJOR == 35 && key < 350401)); then
        die "$board is flashed by this script from R35.4.1 (JetPack 5.1.2) on within R35; this BSP is $(release_name): use R35.4.1 or newer" 2
    fi
    if [[ "$board:$storage" == agx-orin:nvme ]] && ((REL_MAJOR == 35)); then
        die "agx-orin on nvme is offered only with R36.3 or newer (no NVIDIA Quick Start recipe for it with R35 was confirmed); with $rel flash the eMMC (--storage emmc)" 2
    fi
    if ((super)) && ((key < 360403)); then
        die "--super needs L4T R36.4.3 (JetPack 6.2) or newer: this BSP is $rel, which has no $SUPER_CONFIG configuration" 2
    fi
}

# The l4t_initrd_flash.sh line of NVIDIA's Orin Nano / Orin NX recipes.
orin_nano_initrd() {
    local device="$1" ext_xml="$2" qspi_xml="$3"
    CMD=(./tools/kernel_flash/l4t_initrd_flash.sh --external-device "$device"
         -c "$ext_xml" -p "-c $qspi_xml" --showlogs --network usb0 "$CONFIG" internal)
}

# Fills CMD (an array, run from Linux_for_Tegra), RECIPE_URL and NEEDS (files the BSP must hold).
build_command() {
    local board="$1" storage="$2"
    CMD=()
    case "$REL_MAJOR:$board:$storage" in
        # R35, JetPack 5.1.x: QS_R35, section QS_SECTION (same steps in the r35.4.1, r35.5.0
        # and r35.6.x Quick Starts). Orin Nano devkit SD card: the card is mmcblk1 on R35.
        35:agx-orin:emmc)
            RECIPE_URL="$QS_R35"
            CMD=(./flash.sh "$CONFIG" internal) ;;
        35:orin-nano:nvme | 35:orin-nx:nvme)
            RECIPE_URL="$QS_R35"
            orin_nano_initrd nvme0n1p1 tools/kernel_flash/flash_l4t_external.xml bootloader/t186ref/cfg/flash_t234_qspi.xml ;;
        35:orin-nano:sd)
            RECIPE_URL="$QS_R35"
            orin_nano_initrd mmcblk1p1 tools/kernel_flash/flash_l4t_external.xml bootloader/t186ref/cfg/flash_t234_qspi.xml ;;
        # R35 Xavier NX devkit (SD module P3668-0000, or eMMC module P3668-0001) and AGX Xavier
        # devkit: QS_R35, section QS_SECTION and table "Jetson Modules and Configurations".
        35:xavier-nx:sd)
            RECIPE_URL="$QS_R35"
            CMD=(./flash.sh "$CONFIG" mmcblk0p1) ;;
        35:xavier-nx:emmc)
            RECIPE_URL="$QS_R35"
            CONFIG="${CONFIG}-emmc"
            CMD=(./flash.sh "$CONFIG" mmcblk0p1) ;;
        35:agx-xavier:emmc)
            RECIPE_URL="$QS_R35"
            CMD=(./flash.sh "$CONFIG" mmcblk0p1) ;;
        # R36.3 / R36.4.x, JetPack 6.0-6.2.x: QS_R36_3, QS_R36_4 or (Super, R36.4.3+)
        # QS_R36_4_3, section QS_SECTION. The Orin Nano devkit SD card is mmcblk0 on R36.
        36:agx-orin:emmc)
            CMD=(./flash.sh "$CONFIG" internal) ;;
        36:agx-orin:nvme)
            CMD=(./tools/kernel_flash/l4t_initrd_flash.sh --external-device nvme0n1p1
                 -c tools/kernel_flash/flash_l4t_t234_nvme.xml --showlogs --network usb0 "$CONFIG" external) ;;
        36:orin-nano:nvme | 36:orin-nx:nvme)
            orin_nano_initrd nvme0n1p1 tools/kernel_flash/flash_l4t_t234_nvme.xml bootloader/generic/cfg/flash_t234_qspi.xml ;;
        36:orin-nano:sd)
            orin_nano_initrd mmcblk0p1 tools/kernel_flash/flash_l4t_t234_nvme.xml bootloader/generic/cfg/flash_t234_qspi.xml ;;
        # R38, JetPack 7, Jetson AGX Thor devkit (root file system on its NVMe): QS_R38,
        # section QS_SECTION; the BSP's tools/kernel_flash/README_initrd_flash.txt
        # (Workflow 1) gives the same form.
        38:agx-thor:nvme)
            RECIPE_URL="$QS_R38"
            CMD=(./l4t_initrd_flash.sh "$CONFIG" internal) ;;
        *)
            return 1 ;;
    esac
    if ((REL_MAJOR == 36)); then
        local key
        key="$(release_key)"
        if ((key >= 360403)); then RECIPE_URL="$QS_R36_4_3"
        elif ((key >= 360400)); then RECIPE_URL="$QS_R36_4"
        else RECIPE_URL="$QS_R36_3"
        fi
    fi
    # The tool, the board configuration and every layout file the command names.
    NEEDS=("${CMD[0]#./}" "$CONFIG.conf")
    local i
    for ((i = 1; i < ${#CMD[@]}; i++)); do
        case "${CMD[i]}" in
            -c) NEEDS+=("${CMD[i + 1]}") ;;
            -c\ *) NEEDS+=("${CMD[i]#-c }") ;;
        esac
    done
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
    local board="" bsp="" storage="" dry_run=0 super=0
    while (($#)); do
        case "$1" in
            --board) (($# >= 2)) || die "--board needs a value: one of $BOARDS" 2; board="$2"; shift 2 ;;
            --board=*) board="${1#*=}"; shift ;;
            --bsp) (($# >= 2)) || die "--bsp needs a folder" 2; bsp="$2"; shift 2 ;;
            --bsp=*) bsp="${1#*=}"; shift ;;
            --storage) (($# >= 2)) || die "--storage needs a value: nvme, emmc or sd" 2; storage="$2"; shift 2 ;;
            --storage=*) storage="${1#*=}"; shift ;;
            --super) super=1; shift ;;
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
    if ((super)); then
        [[ "$board" == orin-nano || "$board" == orin-nx ]] ||
            die "--super applies only to orin-nano and orin-nx (configuration $SUPER_CONFIG), not to $board" 2
        CONFIG="$SUPER_CONFIG"
    fi
    [[ -n "$bsp" ]] || die "--bsp is required: the folder holding Linux_for_Tegra" 2
    [[ -d "$bsp" ]] || die "BSP folder not found: $bsp" 1

    local l4t
    l4t="$(find_l4t "$bsp")"
    [[ -n "$l4t" ]] || die "no Linux_for_Tegra/flash.sh under $bsp: extract the L4T BSP there first" 1

    read_release "$l4t"
    check_supported "$board" "$storage" "$super"
    build_command "$board" "$storage" ||
        die "no flashing recipe for $board on $storage with L4T $(release_name)" 2
    local need
    for need in "${NEEDS[@]}"; do
        [[ -e "$l4t/$need" ]] ||
            die "$l4t has no $need, which the $(release_name) recipe needs: is the BSP complete, and is its nv_tegra/nv_tegra_release right?" 1
    done

    if ((dry_run)); then
        echo "dry run: nothing will be executed"
    fi
    echo "board: $board ($CONFIG), storage: $storage"
    echo "release: L4T $(release_name) ($(jetpack_name)), from $REL_FROM"
    echo "recipe: $RECIPE_URL, section \"$QS_SECTION\""
    if [[ "$board" == agx-thor ]]; then
        echo "note: NVIDIA's Thor steps run 'sudo ./apply_binaries.sh --openrm' before flashing; without it the GPU is missing"
    fi
    if ((dry_run)); then
        echo "root check skipped (--dry-run)"
    elif ((EUID != 0)); then
        local again
        again="sudo $(join_quoted "$0" --board "$board" --bsp "$bsp" --storage "$storage")"
        ((super)) && again+=" --super"
        die "must run as root: $again" 1
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
